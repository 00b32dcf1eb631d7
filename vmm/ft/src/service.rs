//! Taking over the service address when a backup goes live, and giving it
//! back when a side loses or stops (ARCHITECTURE "The service address").
//!
//! Two deployments:
//! * **addresses clients know** (one host, or clients given both): the
//!   backup serves on its own `--service` address; clients try the next
//!   address on a timeout (`ftvm client --server A,B`), and request numbers
//!   keep retries exactly-once. The socket is bound when the backup starts
//!   (a busy address fails early; datagrams that arrive before go-live wait
//!   in its buffer) and attached to the NIC at go-live.
//! * **a floating IP** (a rack): `--service-ip IP/PREFIX --service-dev DEV`.
//!   The side that goes live adds the address to the device (`ip addr add`),
//!   binds the service socket on it and announces it with gratuitous ARP
//!   (`arping -U`, IPv4), so neighbours send to its MAC from now on; a side
//!   that loses or stops removes the address.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use ftvm_vmm::devices::net::NicAttach;

/// Taking over or giving back the service address failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A command (`ip`, `arping`) could not run or failed.
    #[error("{what}: `{command}` {outcome}")]
    Command {
        /// What was being done.
        what: String,
        /// The command line.
        command: String,
        /// How it failed (exit status and its stderr, or why it did not run).
        outcome: String,
    },
    /// The NIC could not take the socket.
    #[error("attaching the service socket")]
    Nic(#[from] ftvm_vmm::devices::net::NicSetupError),
    /// A bad `--service-ip`.
    #[error("--service-ip {value:?}: {problem} (expected IP/PREFIX, e.g. 10.0.0.100/24)")]
    BadAddress {
        /// The value given.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// A floating service address (`--service-ip IP/PREFIX --service-dev DEV`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The network device it lives on.
    pub dev: String,
}

fn run(what: &str, program: &str, args: &[&str]) -> Result<String, ServiceError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ServiceError::Command {
            what: what.to_string(),
            command: command.clone(),
            outcome: format!("did not run: {e}"),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        return Ok(stderr);
    }
    Err(ServiceError::Command {
        what: what.to_string(),
        command,
        outcome: format!("failed ({}): {stderr}", out.status),
    })
}

impl FloatingIp {
    /// Parses `IP/PREFIX` for device `dev`.
    pub fn parse(ip_prefix: &str, dev: &str) -> Result<FloatingIp, ServiceError> {
        let bad = |problem: &str| ServiceError::BadAddress {
            value: ip_prefix.to_string(),
            problem: problem.to_string(),
        };
        let (ip, prefix) = ip_prefix.split_once('/').ok_or_else(|| bad("no /PREFIX"))?;
        let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(&format!("prefix {prefix} exceeds {max}")));
        }
        if dev.is_empty() {
            return Err(bad("--service-dev is empty"));
        }
        Ok(FloatingIp {
            ip,
            prefix,
            dev: dev.to_string(),
        })
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix)
    }

    /// Adds the address to the device (already there counts as done).
    pub fn add(&self) -> Result<(), ServiceError> {
        let cidr = self.cidr();
        match run(
            "adding the floating service address",
            "ip",
            &["addr", "add", &cidr, "dev", &self.dev],
        ) {
            Err(ServiceError::Command { outcome, .. }) if outcome.contains("File exists") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Tells the neighbours that the address lives here now: gratuitous
    /// ARP, five times 400 ms apart, over 1.6 s (IPv6 neighbours learn it
    /// from the next exchange). The spread matters: Linux ignores an ARP
    /// update of a neighbour entry within `locktime` (1 s) of its last one,
    /// so announcements that all fall within a second of the client's last
    /// exchange with the dead side can all be ignored, and the client then
    /// keeps sending to the dead MAC until its entry goes stale (tens of s). Returns once `arping` is started — the first announcement
    /// leaves at once, and the service is not held back while the rest go
    /// out; a thread reaps it and says if it failed.
    pub fn announce(&self) -> Result<(), ServiceError> {
        if self.ip.is_ipv6() {
            return Ok(());
        }
        let ip = self.ip.to_string();
        let what = "announcing the floating service address (gratuitous ARP)";
        let args = [
            "-U", "-c", "5", "-i", "0.4", "-w", "3", "-I", &self.dev, &ip,
        ];
        let command = format!("arping {}", args.join(" "));
        let child = Command::new("arping")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| ServiceError::Command {
                what: what.to_string(),
                command: command.clone(),
                outcome: format!("did not run: {e}"),
            })?;
        let reap = move || match child.wait_with_output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ftvm: {what}: `{command}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("ftvm: {what}: `{command}`: {e}"),
        };
        std::thread::Builder::new()
            .name("ftvm-arping".into())
            .spawn(reap)
            .map(|_| ())
            .map_err(|e| ServiceError::Command {
                what: what.to_string(),
                command: "a thread to reap arping".into(),
                outcome: format!("did not start: {e}"),
            })
    }

    /// Removes the address from the device (absent counts as done).
    pub fn remove(&self) -> Result<(), ServiceError> {
        let cidr = self.cidr();
        match run(
            "removing the floating service address",
            "ip",
            &["addr", "del", &cidr, "dev", &self.dev],
        ) {
            Err(ServiceError::Command { outcome, .. })
                if outcome.contains("Cannot assign") || outcome.contains("not found") =>
            {
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }
}

/// What a backup takes over when it goes live.
#[derive(Debug, Default)]
pub struct ServiceTakeover {
    /// The standby NIC's attach handle (none: the guest has no NIC here).
    pub nic: Option<NicAttach>,
    /// The service address to bind at go-live when none was reserved.
    pub addr: Option<SocketAddr>,
    /// The floating address to add and announce first.
    pub floating: Option<FloatingIp>,
}

impl ServiceTakeover {
    /// Adds and announces the floating address (if any), then gives the
    /// NIC its socket; returns the address now served.
    pub fn take_over(&mut self) -> Result<Option<SocketAddr>, ServiceError> {
        if let Some(f) = &self.floating {
            f.add()?;
        }
        let served = match self.nic.as_mut() {
            Some(nic) => Some(nic.attach(self.addr)?),
            None => None,
        };
        if let Some(f) = &self.floating {
            f.announce()?;
        }
        Ok(served)
    }

    /// Gives the floating address back (a side that lost or stops).
    pub fn give_back(&self) -> Result<(), ServiceError> {
        match &self.floating {
            Some(f) => f.remove(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_addresses_are_parsed_with_named_errors() {
        let f = FloatingIp::parse("10.0.0.100/24", "br0").unwrap();
        assert_eq!((f.ip.to_string(), f.prefix), ("10.0.0.100".to_string(), 24));
        let e = FloatingIp::parse("10.0.0.100", "br0")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--service-ip \"10.0.0.100\": no /PREFIX (expected IP/PREFIX, e.g. 10.0.0.100/24)"
        );
        let e = FloatingIp::parse("10.0.0.1/33", "br0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prefix 33 exceeds 32"), "{e}");
        assert!(FloatingIp::parse("x/8", "br0").is_err());
        assert!(FloatingIp::parse("10.0.0.1/8", "").is_err());
    }
}

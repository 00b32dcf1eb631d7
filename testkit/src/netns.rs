//! A rack in network namespaces that a test makes itself: a "switch"
//! namespace holding a bridge, and one namespace per host, each joined to the
//! bridge by a veth pair with an address on one /24. Deleted on drop (with its
//! veths and bridge), so a test leaves nothing behind and reaches nothing but
//! what it made.
//!
//! ```no_run
//! use ftvm_testkit::netns::Rack;
//! let rack = Rack::make("10.77.0", &[("c", 10), ("a", 1), ("b", 2)]).unwrap();
//! let out = rack.exec("c", &["ping", "-c1", "10.77.0.1"]).output().unwrap();
//! assert!(out.status.success());
//! ```
//!
//! Inside host `h` the veth is named `h0` (`a0`, `b0`, ...).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

fn run(args: &[&str]) -> Result<Output, String> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))
}

fn ok(args: &[&str]) -> Result<String, String> {
    let out = run(args)?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Ok` if `ip` is installed and this process may make network namespaces
/// (it makes and drops one); the reason otherwise.
pub fn probe() -> Result<(), String> {
    crate::command_on_path("ip")?;
    let name = format!("ftvmprobe{}", std::process::id() % 100_000);
    let out = run(&["ip", "netns", "add", &name])?;
    if !out.status.success() {
        return Err(format!(
            "network namespaces cannot be made here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let _ = run(&["ip", "netns", "del", &name]);
    Ok(())
}

/// Namespaces of one test (see the module doc).
#[derive(Debug)]
pub struct Rack {
    tag: String,
    hosts: Vec<String>,
}

impl Rack {
    /// Makes the switch and `hosts` (name, last octet of its address on
    /// `net`.0/24, e.g. `("a", 1)` → `10.77.0.1` with `net` = `"10.77.0"`).
    pub fn make(net: &str, hosts: &[(&str, u8)]) -> Result<Rack, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut rack = Rack {
            tag,
            hosts: Vec::new(),
        };
        let s = rack.ns("s");
        ok(&["ip", "netns", "add", &s])
            .map_err(|e| format!("cannot make network namespaces: {e}"))?;
        rack.hosts.push("s".into());
        ok(&["ip", "-n", &s, "link", "add", "br0", "type", "bridge"])?;
        ok(&["ip", "-n", &s, "link", "set", "br0", "up"])?;
        for &(h, ip) in hosts {
            let ns = rack.ns(h);
            ok(&["ip", "netns", "add", &ns])?;
            rack.hosts.push(h.into());
            let (inner, outer) = (format!("{h}0"), format!("{h}s"));
            ok(&[
                "ip", "-n", &s, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                "netns", &ns,
            ])?;
            ok(&["ip", "-n", &s, "link", "set", &outer, "master", "br0", "up"])?;
            let cidr = format!("{net}.{ip}/24");
            ok(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &inner])?;
            ok(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
            ok(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(rack)
    }

    /// The namespace name of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("ftvm{host}{}", self.tag)
    }

    /// `args` to run inside `host` (`ip netns exec`).
    pub fn exec(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).args(args);
        c
    }

    /// True when `host` has the IPv4 address `ip` on some interface.
    pub fn has_addr(&self, host: &str, ip: &str) -> bool {
        ok(&["ip", "-n", &self.ns(host), "-4", "addr", "show"])
            .map(|out| out.contains(&format!("inet {ip}/")))
            .unwrap_or(false)
    }

    /// Takes `host`'s link to the switch down (the host is cut off).
    pub fn cut(&self, host: &str) -> Result<(), String> {
        ok(&[
            "ip",
            "-n",
            &self.ns(host),
            "link",
            "set",
            &format!("{host}0"),
            "down",
        ])
        .map(|_| ())
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        for h in self.hosts.iter().rev() {
            let _ = run(&["ip", "netns", "del", &self.ns(h)]);
        }
    }
}

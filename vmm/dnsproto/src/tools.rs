//! Running the real `dig` and `nsupdate` (Debian `bind9-dnsutils`) against a
//! server, for tests and demonstrations: the clients people already use,
//! unchanged, pointed at `server` with `@ip -p port` and `server ip port`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::string::{String, ToString};
use std::vec::Vec;

/// What `nsupdate` ended with.
#[derive(Clone, Debug)]
pub struct Nsupdate {
    /// Its exit code (0 success, 2 an update failed, 1 no server reached).
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (`update failed: YXDOMAIN`, ...).
    pub stderr: String,
}

/// `program` run through `launcher` (e.g. `["ip", "netns", "exec", "ns1"]`
/// to run it in a network namespace), or directly when `launcher` is empty.
pub fn command(launcher: &[&str], program: &str) -> Command {
    match launcher.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
    }
}

/// `dig @ip -p port +tries=1 +time=T ARGS`; its standard output.
pub fn dig(server: SocketAddr, timeout_s: u32, args: &[&str]) -> std::io::Result<String> {
    dig_via(&[], server, timeout_s, args)
}

/// [`dig`] through `launcher` (see [`command`]).
pub fn dig_via(
    launcher: &[&str],
    server: SocketAddr,
    timeout_s: u32,
    args: &[&str],
) -> std::io::Result<String> {
    let out = command(launcher, "dig")
        .arg(std::format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1"])
        .arg(std::format!("+time={timeout_s}"))
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `nsupdate` on `script`, after a first line `server ip port`.
pub fn nsupdate(server: SocketAddr, script: &str) -> std::io::Result<Nsupdate> {
    nsupdate_via(&[], &[], server, script)
}

/// [`nsupdate`] through `launcher` (see [`command`]) with `options` (e.g.
/// `-u 1 -r 10`: retry every second, ten times — each retry is the same
/// message, same id, same source port).
pub fn nsupdate_via(
    launcher: &[&str],
    options: &[&str],
    server: SocketAddr,
    script: &str,
) -> std::io::Result<Nsupdate> {
    let mut child = command(launcher, "nsupdate")
        .args(options)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    writeln!(stdin, "server {} {}\n{script}", server.ip(), server.port())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok(Nsupdate {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The serial in the output of `dig ... SOA +short`.
pub fn soa_serial(short: &str) -> Option<u32> {
    let fields: Vec<&str> = short.split_whitespace().collect();
    fields.get(2)?.parse().ok()
}

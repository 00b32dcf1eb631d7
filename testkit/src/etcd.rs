//! A real, single-member etcd for tests (std only): its own loopback client
//! and peer ports and a temporary data directory, killed and removed on drop.
//!
//! ```no_run
//! use ftvm_testkit::{command_on_path, etcd::Etcd, require_or_skip};
//!
//! if !require_or_skip("my_test", "etcd", || command_on_path("etcd")) {
//!     return;
//! }
//! let mut etcd = Etcd::start().expect("etcd starts");
//! let url = etcd.url(); // "etcd:http://127.0.0.1:<port>"
//! etcd.stop(); // as a crash: SIGKILL
//! etcd.restart().expect("etcd restarts on the same data dir and port");
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::find_command;

/// How long `start` and `restart` wait for `GET /health` to say true
/// (a loaded 2-core machine can take seconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) etcd; see the module doc.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    root: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts `etcd` from `PATH` on free loopback ports with a fresh data
    /// directory and waits until it is healthy. `Err` says why, with the end
    /// of etcd's log.
    pub fn start() -> Result<Etcd, String> {
        let binary = find_command("etcd").ok_or("etcd not installed (not on PATH)")?;
        let mut etcd = Etcd {
            binary,
            root: temp_root()?,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        // A port found free can be taken by another process before etcd
        // binds it: then try fresh ports, a few times.
        let mut tries = 0;
        loop {
            (etcd.client_port, etcd.peer_port) = free_ports()?;
            tries += 1;
            match etcd.spawn_and_wait() {
                Ok(()) => return Ok(etcd),
                Err(e) if tries < 3 && e.contains("address already in use") => {
                    let _ = fs::remove_dir_all(etcd.data_dir());
                }
                // Drop removes the directory.
                Err(e) => return Err(e),
            }
        }
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The arbiter URL: `etcd:http://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("etcd:{}", self.endpoint())
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The data directory (kept across `stop`/`restart`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Where etcd's output goes (appended to by every start).
    pub fn log_path(&self) -> PathBuf {
        self.root.join("etcd.log")
    }

    /// The last `lines` lines of etcd's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills etcd (SIGKILL, as a crash would) and reaps it; the data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data directory and ports, and waits
    /// until it is healthy.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn_and_wait()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open etcd log {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("dup etcd log {}: {e}", log_path.display()))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.binary)
            .arg("--name=ftvm-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=ftvm-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited with {status} before it was healthy; log {}:\n{}",
                    log_path.display(),
                    self.log_tail(20)
                ));
            }
            if healthy(self.client_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "etcd not healthy on {client} after {READY_TIMEOUT:?}; log {}:\n{}",
                    log_path.display(),
                    self.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    /// Kills etcd and removes its directory; when the test is failing
    /// (panicking), prints the end of etcd's log first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "etcd log {} (last 30 lines):\n{}",
                self.log_path().display(),
                self.log_tail(30)
            );
        }
        self.stop();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// True when `GET /health` on the client port answers `"health":"true"`.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("\"health\":\"true\"")
}

/// Two distinct loopback ports that were free a moment ago.
fn free_ports() -> Result<(u16, u16), String> {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| format!("find a free loopback port: {e}"))
    };
    // Both listeners live until both ports are known, so the ports differ.
    let (a, _la) = bind()?;
    let (b, _lb) = bind()?;
    Ok((a, b))
}

/// A new, private directory under the system temporary directory.
fn temp_root() -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let root = std::env::temp_dir().join(format!(
        "ftvm-etcd-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    Ok(root)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{command_on_path, require_or_skip};

    #[test]
    fn etcd_starts_stops_and_restarts_on_its_port() {
        let test = "etcd_starts_stops_and_restarts_on_its_port";
        if !require_or_skip(test, "etcd", || command_on_path("etcd")) {
            return;
        }
        let mut etcd = Etcd::start().unwrap();
        let (port, root) = (etcd.client_port(), etcd.root.clone());
        assert!(healthy(port) && etcd.is_running());
        etcd.stop();
        assert!(!healthy(port) && !etcd.is_running());
        etcd.restart().unwrap();
        assert!(healthy(port), "{}", etcd.log_tail(20));
        assert!(etcd.data_dir().join("member").is_dir());
        drop(etcd);
        assert!(!root.exists() && !healthy(port));
    }
}

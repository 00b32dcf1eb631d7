//! The two `ftvm` processes of a trial, their status endpoints and signals.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A free loopback port (bound and released; a race with another binder is
/// possible but harmless in tests: the trial then fails at start).
pub fn free_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

/// One `ftvm` process with its stderr kept in a file.
#[derive(Debug)]
pub struct Proc {
    /// "primary" or "backup".
    pub role: &'static str,
    child: Child,
    stderr: PathBuf,
    /// Its `--status` address.
    pub status: String,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `ftvm ARGS`, stderr to `dir/<role>.err`, stdout to `dir/<role>.out`.
    /// A `status` of port 0 (`127.0.0.1:0`, passed as `--status` in `args`)
    /// is learnt from the process's `status on ADDR` line before this
    /// returns: no free-port race with other processes.
    pub fn spawn(
        ftvm: &Path,
        role: &'static str,
        args: &[String],
        dir: &Path,
        status: String,
    ) -> Result<Proc> {
        let stderr = dir.join(format!("{role}.err"));
        let child = Command::new(ftvm)
            .args(args)
            .stdout(File::create(dir.join(format!("{role}.out")))?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {} {role}", ftvm.display()))?;
        let mut p = Proc {
            role,
            child,
            stderr,
            status,
            exit: None,
        };
        if p.status.ends_with(":0") {
            p.status = p.learn_status()?;
        }
        Ok(p)
    }

    /// The address in the process's `status on ADDR` line (human or JSON logs).
    fn learn_status(&mut self) -> Result<String> {
        let t = Instant::now();
        loop {
            let err = self.stderr();
            if let Some(at) = err.find("status on ") {
                let rest = &err[at + "status on ".len()..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                if end > 0 && rest[end..].starts_with(['\n', '"']) {
                    return Ok(rest[..end].to_string());
                }
            }
            if let Some(s) = self.exited() {
                bail!(
                    "the {} exited ({s}) before serving status: {err}",
                    self.role
                );
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!("the {} did not serve status within 20 s: {err}", self.role);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its stdout so far (`state digest …` once it stopped).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.stderr.with_extension("out")).unwrap_or_default()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), sig)
            .with_context(|| format!("sending {sig} to the {}", self.role))
    }

    /// SIGKILL, like a crash. Returns how long the kernel took to reap it.
    pub fn kill9(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.child.kill().context("SIGKILL")?;
        self.exit = Some(self.child.wait()?);
        Ok(t.elapsed())
    }

    /// Its exit status once it ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `limit` for it to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Its status JSON (`None` while it does not answer).
    pub fn query(&self) -> Option<serde_json::Value> {
        ftvm_ft::status::query(&self.status, Duration::from_millis(500)).ok()
    }

    /// Waits up to `limit` until its status satisfies `ok`.
    pub fn wait_status(
        &mut self,
        limit: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let t = Instant::now();
        loop {
            if let Some(v) = self.query()
                && ok(&v)
            {
                return Ok(v);
            }
            if let Some(s) = self.exited() {
                bail!(
                    "the {} exited ({s}) before {what}: {}",
                    self.role,
                    self.stderr()
                );
            }
            if t.elapsed() > limit {
                bail!(
                    "the {} did not reach {what} within {limit:?}: {}",
                    self.role,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // A stopped process must be continued to die promptly.
            let _ = self.signal(Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

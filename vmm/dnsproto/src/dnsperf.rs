//! Running the real `dnsperf` (DNS-OARC, Debian package `dnsperf`) against a
//! server and reading its report: queries sent, completed and lost,
//! queries/s, and — from the per-query lines of `-v` — a latency histogram
//! with percentiles (dnsperf itself prints only the average, min and max).
//!
//! ```no_run
//! use ftvm_dnsproto::dnsperf::{DnsperfConfig, query_file, run};
//! let dir = std::env::temp_dir();
//! let data = dir.join("queries.txt");
//! std::fs::write(&data, query_file("example.test.", 100)).unwrap();
//! let mut cfg = DnsperfConfig::new("127.0.0.1:5353".parse().unwrap(), data);
//! cfg.seconds = Some(2.0);
//! let r = run(&cfg).unwrap();
//! println!("{:.0} q/s, p50 {:.1} us, {} lost", r.qps, r.latency_us(0.5), r.lost);
//! ```

use std::format;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::string::{String, ToString};
use std::vec::Vec;

use hdrhistogram::Histogram;

/// How to run dnsperf.
#[derive(Clone, Debug)]
pub struct DnsperfConfig {
    /// The server (`-s`, `-p`).
    pub server: SocketAddr,
    /// The input file (`-d`): `name type` lines, or update blocks with `updates`.
    pub data: PathBuf,
    /// Run for at most this many seconds (`-l`).
    pub seconds: Option<f64>,
    /// Run through the input at most this many times (`-n`).
    pub max_runs: Option<u32>,
    /// Simulated clients (`-c`, one socket each).
    pub clients: u32,
    /// Queries outstanding at most (`-q`).
    pub outstanding: u32,
    /// Seconds until a query counts as lost (`-t`).
    pub timeout_s: u32,
    /// Queries per second at most (`-Q`).
    pub max_qps: Option<u32>,
    /// Send dynamic updates instead of queries (`-u`).
    pub updates: bool,
    /// Per-query lines (`-v`), the source of the latency histogram.
    pub per_query: bool,
}

impl DnsperfConfig {
    /// One client, 100 outstanding, 5 s timeout, one pass over `data`, `-v`.
    pub fn new(server: SocketAddr, data: PathBuf) -> DnsperfConfig {
        DnsperfConfig {
            server,
            data,
            seconds: None,
            max_runs: None,
            clients: 1,
            outstanding: 100,
            timeout_s: 5,
            max_qps: None,
            updates: false,
            per_query: true,
        }
    }

    /// The argument list.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-s",
            &self.server.ip().to_string(),
            "-p",
            &self.server.port().to_string(),
            "-d",
            &self.data.display().to_string(),
            "-c",
            &self.clients.to_string(),
            "-q",
            &self.outstanding.to_string(),
            "-t",
            &self.timeout_s.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(l) = self.seconds {
            a.extend(["-l".into(), format!("{l}")]);
        }
        if let Some(n) = self.max_runs {
            a.extend(["-n".into(), n.to_string()]);
        }
        if let Some(q) = self.max_qps {
            a.extend(["-Q".into(), q.to_string()]);
        }
        if self.updates {
            a.push("-u".into());
        }
        if self.per_query {
            a.push("-v".into());
        }
        a
    }
}

/// What dnsperf reported.
#[derive(Clone, Debug)]
pub struct DnsperfReport {
    /// Queries sent.
    pub sent: u64,
    /// Queries answered.
    pub completed: u64,
    /// Queries unanswered within the timeout.
    pub lost: u64,
    /// Queries per second (dnsperf's figure: completed over the run time).
    pub qps: f64,
    /// Run time in seconds.
    pub run_time_s: f64,
    /// Average latency (dnsperf's figure), seconds.
    pub avg_latency_s: f64,
    /// Response codes and their counts.
    pub rcodes: Vec<(String, u64)>,
    /// Per-query latencies in ns (empty without `-v`).
    pub latency_ns: Histogram<u64>,
    /// Responses whose id matched no outstanding query (dnsperf's "unexpected
    /// id" warnings): late replies to queries already counted lost, or
    /// replies that came twice.
    pub unexpected: u64,
}

impl DnsperfReport {
    /// Latency quantile `q` in µs from the per-query lines, or the average
    /// when there are none.
    pub fn latency_us(&self, q: f64) -> f64 {
        if self.latency_ns.is_empty() {
            return self.avg_latency_s * 1e6;
        }
        self.latency_ns.value_at_quantile(q) as f64 / 1e3
    }

    /// The count of replies with `rcode` (`"NOERROR"`, `"NXDOMAIN"`, ...).
    pub fn rcode(&self, rcode: &str) -> u64 {
        self.rcodes
            .iter()
            .find(|(r, _)| r == rcode)
            .map_or(0, |(_, n)| *n)
    }
}

/// dnsperf could not run or its output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DnsperfError {
    /// The program could not be started.
    #[error("starting `dnsperf {args}`")]
    Spawn {
        /// The arguments.
        args: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("`dnsperf {args}` exited with {status}: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// Its report lacks a figure.
    #[error("dnsperf's report has no {what:?} line:\n{output}")]
    Parse {
        /// The line looked for.
        what: &'static str,
        /// The output.
        output: String,
    },
}

/// `Ok` if `dnsperf` can be started; `Err` says `dnsperf not installed (not on PATH)`.
pub fn probe() -> Result<(), String> {
    match Command::new("dnsperf").arg("-h").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("dnsperf not installed (not on PATH)".to_string())
        }
        Err(e) => Err(format!("dnsperf cannot be started: {e}")),
    }
}

/// Runs dnsperf with `cfg` and reads its report.
pub fn run(cfg: &DnsperfConfig) -> Result<DnsperfReport, DnsperfError> {
    run_via(&[], cfg)
}

/// [`run`] through `launcher` (see [`crate::tools::command`]), e.g. in a
/// network namespace.
pub fn run_via(launcher: &[&str], cfg: &DnsperfConfig) -> Result<DnsperfReport, DnsperfError> {
    let args = cfg.args();
    let joined = args.join(" ");
    let out = crate::tools::command(launcher, "dnsperf")
        .args(&args)
        .output()
        .map_err(|source| DnsperfError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(DnsperfError::Failed {
            args: joined,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut report = parse(&String::from_utf8_lossy(&out.stdout))?;
    // dnsperf warns on standard error.
    report.unexpected += unexpected_ids(&String::from_utf8_lossy(&out.stderr));
    Ok(report)
}

fn unexpected_ids(out: &str) -> u64 {
    out.lines().filter(|l| l.contains("unexpected")).count() as u64
}

/// The rest of the first line starting with one of `names` (queries and
/// updates have their own labels), and the first number in it.
fn figure<T: std::str::FromStr>(out: &str, names: &[&'static str]) -> Result<T, DnsperfError> {
    out.lines()
        .find_map(|l| names.iter().find_map(|n| l.trim().strip_prefix(n)))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| DnsperfError::Parse {
            what: names[0],
            output: out.to_string(),
        })
}

/// Reads dnsperf's standard output (see the module doc).
pub fn parse(out: &str) -> Result<DnsperfReport, DnsperfError> {
    let sent = figure(out, &["Queries sent:", "Updates sent:"])?;
    let completed = figure(out, &["Queries completed:", "Updates completed:"])?;
    let lost = figure(out, &["Queries lost:", "Updates lost:"])?;
    let qps = figure(out, &["Queries per second:", "Updates per second:"])?;
    let run_time_s = figure(out, &["Run time (s):"])?;
    let avg_latency_s = figure(out, &["Average Latency (s):"]).unwrap_or(0.0);
    let mut rcodes = Vec::new();
    if let Some(codes) = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Response codes:"))
    {
        for part in codes.split(',') {
            let mut w = part.split_whitespace();
            if let (Some(code), Some(n)) = (w.next(), w.next().and_then(|n| n.parse().ok())) {
                rcodes.push((code.to_string(), n));
            }
        }
    }
    // 1 µs .. 60 s, 3 significant digits.
    let mut latency_ns =
        Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds");
    for l in out.lines().filter_map(|l| l.strip_prefix("> ")) {
        let Some(secs) = l
            .split_whitespace()
            .last()
            .and_then(|s| s.parse::<f64>().ok())
        else {
            continue;
        };
        latency_ns.saturating_record(((secs * 1e9) as u64).max(1_000));
    }
    Ok(DnsperfReport {
        sent,
        completed,
        lost,
        qps,
        run_time_s,
        avg_latency_s,
        rcodes,
        latency_ns,
        unexpected: unexpected_ids(out),
    })
}

/// A dnsperf query file for the zone `origin` with `hosts` synthetic hosts
/// (see [`Server::add_hosts`](crate::Server::add_hosts)): each host's A
/// record, and after every eight hosts one query of each other kind (an
/// AAAA, a CNAME chain, an MX with additional data, an NXDOMAIN, a NODATA).
pub fn query_file(origin: &str, hosts: u32) -> String {
    let o = origin.trim_end_matches('.');
    let mut s = String::new();
    let others = |s: &mut String, i: u32| {
        s.push_str(&format!(
            "www.{o} AAAA\nalias.{o} A\n{o} MX\nnx{i}.{o} A\nwww.{o} TXT\n"
        ));
    };
    for i in 0..hosts {
        s.push_str(&format!("h{i}.{o} A\n"));
        if i % 8 == 7 {
            others(&mut s, i);
        }
    }
    if hosts < 8 {
        others(&mut s, 0);
    }
    s
}

/// A dnsperf update file (`-u`): `count` updates of the zone `origin`, each
/// adding `u<i>` with an A record and deleting `u<i-1>`, so the zone stays
/// small and every update changes it.
pub fn update_file(origin: &str, count: u32) -> String {
    let origin = origin.trim_end_matches('.');
    let mut s = String::new();
    for i in 0..count {
        s.push_str(&format!("{origin}\n"));
        s.push_str(&format!(
            "add u{i}.{origin} 60 A 198.51.100.{}\n",
            i % 250 + 1
        ));
        if i > 0 {
            s.push_str(&format!("delete u{}.{origin}\n", i - 1));
        }
        s.push_str("send\n");
    }
    s
}

//! `ftvm bench failover`: faults injected into a real pair of `ftvm`
//! processes under a self-checking APPEND load, and what each cost.
//!
//! One trial:
//! 1. a backup (`ftvm backup --service B`) and a primary (`ftvm primary
//!    --service A --backup ...`) start on loopback with a fresh `file:`
//!    arbiter directory (or the `--arbiter` given);
//! 2. closed-loop clients append unique tokens, trying A then B on a
//!    timeout (`--retry-ms`), and check every reply against their model;
//! 3. at a random moment one fault is injected ([`FaultKind`]);
//! 4. the trial waits until exactly one side serves, lets the load run on,
//!    then every client reads back every key: an acknowledged append that
//!    is missing is a *lost write*, one found twice was *applied twice*;
//! 5. replies are attributed to the address that sent them: a reply from
//!    the side that lost, after the winner went live, counts as *both live*.
//!
//! The gap is the longest time the clients got no reply (client-visible),
//! split into detection, drain, arbitration and go-live from the winner's
//! own timeline (`ftvm status`).

pub mod chain;
mod procs;
mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ftvm_kvproto::load::{LoadConfig, LoadReport, OpMix, run_load};
use nix::sys::signal::Signal;
use serde::Serialize;

pub use procs::{Proc, free_port};
pub use proxy::PartitionProxy;

/// A fault a trial injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL of the primary (the backup sees EOF at once).
    KillPrimary,
    /// SIGKILL of the backup (the primary sees EOF at once).
    KillBackup,
    /// SIGSTOP of the primary past `peer_timeout_ms` (a silent host), then
    /// SIGCONT: the old primary must release nothing and stop.
    StopPrimary,
    /// SIGSTOP of the backup past the timeout, then SIGCONT.
    StopBackup,
    /// The channel cut both ways (a userspace proxy stops forwarding).
    Partition,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::KillPrimary,
        FaultKind::KillBackup,
        FaultKind::StopPrimary,
        FaultKind::StopBackup,
        FaultKind::Partition,
    ];

    /// The kind's name (`--kinds`).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillPrimary => "kill-primary",
            FaultKind::KillBackup => "kill-backup",
            FaultKind::StopPrimary => "stop-primary",
            FaultKind::StopBackup => "stop-backup",
            FaultKind::Partition => "partition",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .with_context(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault kind {s:?} (choose from {})",
                    names.join(", ")
                )
            })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// The `ftvm` binary to start.
    pub ftvm: PathBuf,
    /// Trials per kind.
    pub trials: Vec<(FaultKind, u32)>,
    /// Transport of the channel (tcp, shm, uring).
    pub transport: String,
    /// `channel.peer_timeout_ms` of both sides.
    pub peer_timeout_ms: u64,
    /// Client retry interval.
    pub retry: Duration,
    /// Closed-loop clients.
    pub clients: u32,
    /// The arbiter URL; `None`: a fresh `file:` directory per trial.
    pub arbiter: Option<String>,
    /// Where trial directories go.
    pub work_dir: PathBuf,
    /// Seed of the fault moments.
    pub seed: u64,
    /// A settings file (`--profile`) for both sides.
    pub profile: Option<PathBuf>,
    /// Print one line per trial.
    pub verbose: bool,
}

/// One trial's result.
#[derive(Clone, Debug, Serialize)]
pub struct TrialResult {
    /// The fault.
    pub kind: FaultKind,
    /// Trial number within its kind.
    pub index: u32,
    /// Which side serves afterwards ("primary" / "backup").
    pub winner: String,
    /// Ops completed.
    pub ops: u64,
    /// Acknowledged writes missing afterwards.
    pub lost: u64,
    /// Acknowledged writes applied twice.
    pub applied_twice: u64,
    /// Replies from the losing side after the winner took over.
    pub loser_replies_after: u64,
    /// Client-visible gap (the time without any reply around the fault), ms.
    pub gap_ms: f64,
    /// When the gap ended, ms after the fault.
    pub gap_end_ms: f64,
    /// Kill trials: SIGKILL → the killed process reaped by the kernel, ms
    /// (its connection closes, EOF at the survivor, only then). stop-primary:
    /// SIGCONT → the old primary exited as the loser, ms.
    pub reaped_ms: Option<f64>,
    /// Fault → detection, ms (the winner's view).
    pub detect_ms: Option<f64>,
    /// Detection → log drained (backup), ms.
    pub drain_ms: Option<f64>,
    /// Arbitration, ms.
    pub arbitration_ms: Option<f64>,
    /// Decision → serving, ms.
    pub go_live_ms: Option<f64>,
    /// Client retries.
    pub retries: u64,
    /// Replies re-sent by a backup at go-live.
    pub resent_replies: u64,
    /// What went wrong, if the trial failed to run.
    pub error: Option<String>,
}

impl TrialResult {
    /// True when the trial ran and met every invariant.
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.lost == 0
            && self.applied_twice == 0
            && self.loser_replies_after == 0
    }
}

/// Slack between the winner's takeover and a loser reply's arrival (µs).
pub const LATE_SLACK_US: u64 = 20_000;

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn span(v: &serde_json::Value, a: &str, b: &str) -> Option<f64> {
    let a = v.get(a)?.as_u64()?;
    let b = v.get(b)?.as_u64()?;
    (a > 0 && b >= a).then(|| ms(b - a))
}

/// splitmix64, for the fault moments.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Trial<'a> {
    opts: &'a FailoverOptions,
    dir: PathBuf,
    service_a: String,
    service_b: String,
}

impl Trial<'_> {
    fn common(&self) -> Vec<String> {
        let mut v = vec![
            "--set".to_string(),
            format!("channel.peer_timeout_ms={}", self.opts.peer_timeout_ms),
        ];
        if let Some(p) = &self.opts.profile {
            v.push("--profile".into());
            v.push(p.display().to_string());
        }
        v
    }

    fn arbiter(&self) -> String {
        self.opts
            .arbiter
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.dir.join("arbiter").display()))
    }

    fn start(&self, kind: FaultKind) -> Result<(Proc, Proc, Option<PartitionProxy>)> {
        let listen = match self.opts.transport.as_str() {
            "shm" => format!("failover-{}-{}", std::process::id(), free_port(false)?),
            _ => format!("127.0.0.1:{}", free_port(false)?),
        };
        // Status on port 0: `Proc::spawn` learns the bound address.
        let (bs, ps) = ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string());
        let vm = format!("bench-{}", free_port(false)?);
        let mut b_args = self.common();
        b_args.extend(
            [
                "backup",
                "--guest",
                "kv",
                "--listen",
                &listen,
                "--service",
                &self.service_b,
                "--transport",
                &self.opts.transport,
                "--status",
                &bs,
                "--wait-secs",
                "20",
                "--arbiter",
                &self.arbiter(),
                "--vm",
                &vm,
            ]
            .map(String::from),
        );
        let mut backup = Proc::spawn(&self.opts.ftvm, "backup", &b_args, &self.dir, bs)?;
        backup.wait_status(Duration::from_secs(10), "waiting for a primary", |_| true)?;
        let proxy = if kind == FaultKind::Partition {
            Some(PartitionProxy::start(&listen)?)
        } else {
            None
        };
        let dial = proxy.as_ref().map_or(listen.clone(), |p| p.addr.clone());
        let mut p_args = self.common();
        p_args.extend(
            [
                "primary",
                "--guest",
                "kv",
                "--service",
                &self.service_a,
                "--backup",
                &dial,
                "--transport",
                &self.opts.transport,
                "--status",
                &ps,
                "--arbiter",
                &self.arbiter(),
                "--vm",
                &vm,
            ]
            .map(String::from),
        );
        let mut primary = Proc::spawn(&self.opts.ftvm, "primary", &p_args, &self.dir, ps)?;
        primary.wait_status(Duration::from_secs(10), "protection", |v| {
            v["protection"] == "protected"
        })?;
        backup.wait_status(Duration::from_secs(10), "replaying", |v| {
            v["phase"] == "replaying"
        })?;
        Ok((primary, backup, proxy))
    }
}

/// Runs one trial of `kind` (see the module doc).
pub fn run_trial(
    opts: &FailoverOptions,
    kind: FaultKind,
    index: u32,
    seed: &mut u64,
) -> TrialResult {
    let mut r = TrialResult {
        kind,
        index,
        winner: String::new(),
        ops: 0,
        lost: 0,
        applied_twice: 0,
        loser_replies_after: 0,
        gap_ms: 0.0,
        gap_end_ms: 0.0,
        reaped_ms: None,
        detect_ms: None,
        drain_ms: None,
        arbitration_ms: None,
        go_live_ms: None,
        retries: 0,
        resent_replies: 0,
        error: None,
    };
    if let Err(e) = trial(opts, kind, index, seed, &mut r) {
        r.error = Some(format!("{e:#}"));
    }
    r
}

fn trial(
    opts: &FailoverOptions,
    kind: FaultKind,
    index: u32,
    seed: &mut u64,
    r: &mut TrialResult,
) -> Result<()> {
    let dir = opts.work_dir.join(format!("{}-{index}", kind.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let t = Trial {
        opts,
        service_a: format!("127.0.0.1:{}", free_port(true)?),
        service_b: format!("127.0.0.1:{}", free_port(true)?),
        dir: dir.clone(),
    };
    let (mut primary, mut backup, proxy) = t.start(kind)?;
    // The load: unique appends, A then B, checked at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = LoadConfig::new(t.service_a.parse()?);
    cfg.fallbacks = vec![t.service_b.parse()?];
    cfg.clients = opts.clients;
    cfg.ops = u64::MAX / 4;
    cfg.timeout = opts.retry;
    cfg.max_attempts = 200;
    cfg.spin = false;
    cfg.mix = OpMix::AppendOnly;
    cfg.final_check = true;
    cfg.stop = Some(stop.clone());
    let load = std::thread::spawn(move || run_load(&cfg));
    // The fault, at a random moment of a running load.
    std::thread::sleep(Duration::from_millis(150 + next(seed) % 500));
    let fault_us = ftvm_ft::golive::unix_us();
    let settle = Duration::from_millis(opts.peer_timeout_ms * 4 + 5_000);
    let mut reaped = None;
    let outcome = inject(
        kind,
        &mut primary,
        &mut backup,
        proxy.as_ref(),
        settle,
        &mut reaped,
    );
    r.reaped_ms = reaped.map(|d| d.as_secs_f64() * 1e3);
    let resolved_us = ftvm_ft::golive::unix_us();
    // Let the winner serve for a while, then end the load and check.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let report: LoadReport = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))?
        .context("the load")?;
    let (winner, win_status) = outcome?;
    r.winner = winner.to_string();
    r.ops = report.ops;
    r.lost = report.lost_writes;
    r.applied_twice = report.applied_twice;
    r.retries = report.retries;
    // The gap: the longest time without any reply between the fault and
    // the moment the winner was seen serving (the last reply before the
    // fault may land a moment after it, or a stall may outlast the check).
    if let Some((start, end)) = report.stall_within(fault_us, resolved_us) {
        r.gap_ms = ms(end - start);
        r.gap_end_ms = ms(end - fault_us);
    }
    // Replies from the losing side after the winner took over.
    let (loser_addr, took_over_us) = if winner == "backup" {
        let live = win_status["failover"]["live_us"].as_u64().unwrap_or(0);
        (t.service_a.clone(), live)
    } else {
        (
            t.service_b.clone(),
            win_status["decided_unix_us"].as_u64().unwrap_or(0),
        )
    };
    // A reply the loser sent just before it died or lost may be read by a
    // descheduled client a little later: only arrivals later than
    // LATE_SLACK after the takeover count as both sides serving.
    r.loser_replies_after = report
        .by_source
        .iter()
        .filter(|s| s.addr.to_string() == loser_addr)
        .map(|s| s.after(took_over_us + LATE_SLACK_US))
        .sum();
    if winner == "backup" {
        let f = &win_status["failover"];
        r.detect_ms = f["detected_us"]
            .as_u64()
            .map(|d| ms(d.saturating_sub(fault_us)));
        r.drain_ms = span(f, "detected_us", "drained_us");
        r.arbitration_ms = span(f, "drained_us", "decided_us");
        r.go_live_ms = span(f, "decided_us", "live_us");
        r.resent_replies = f["resent_replies"].as_u64().unwrap_or(0);
    } else {
        let lost = win_status["backup_lost_unix_us"].as_u64().unwrap_or(0);
        r.detect_ms = (lost > 0).then(|| ms(lost.saturating_sub(fault_us)));
        r.drain_ms = Some(0.0);
        r.arbitration_ms = win_status["arbitration_us"].as_u64().map(ms);
        r.go_live_ms = Some(0.0);
    }
    if report.errors > 0 {
        bail!(
            "{} replies disagreed with the model: {:?}",
            report.errors,
            report.first_errors
        );
    }
    if !r.ok() || r.gap_ms > 2.0 * opts.retry.as_secs_f64() * 1e3 {
        // Keep the directory (stderr of both sides) for a look.
        return Ok(());
    }
    drop((primary, backup, proxy));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Injects `kind` and waits until it is resolved: returns the side that
/// serves and its status.
fn inject(
    kind: FaultKind,
    primary: &mut Proc,
    backup: &mut Proc,
    proxy: Option<&PartitionProxy>,
    settle: Duration,
    reaped: &mut Option<Duration>,
) -> Result<(&'static str, serde_json::Value)> {
    let live = |v: &serde_json::Value| v["phase"] == "live";
    let unprotected = |v: &serde_json::Value| v["protection"] == "unprotected";
    match kind {
        FaultKind::KillPrimary => {
            *reaped = Some(primary.kill9()?);
            Ok(("backup", backup.wait_status(settle, "live", live)?))
        }
        FaultKind::KillBackup => {
            *reaped = Some(backup.kill9()?);
            Ok((
                "primary",
                primary.wait_status(settle, "unprotected", unprotected)?,
            ))
        }
        FaultKind::StopPrimary => {
            primary.signal(Signal::SIGSTOP)?;
            let v = backup.wait_status(settle, "live", live)?;
            primary.signal(Signal::SIGCONT)?;
            let woke = Instant::now();
            let status = primary
                .wait_exit(Duration::from_secs(5))
                .context("the old primary did not stop within 5 s of SIGCONT")?;
            *reaped = Some(woke.elapsed());
            let err = primary.stderr();
            if status.success() || !err.contains("lost generation") {
                bail!("the old primary did not stop as the loser ({status}): {err}");
            }
            Ok(("backup", v))
        }
        FaultKind::StopBackup => {
            backup.signal(Signal::SIGSTOP)?;
            let v = primary.wait_status(settle, "unprotected", unprotected)?;
            backup.signal(Signal::SIGCONT)?;
            let status = backup
                .wait_exit(Duration::from_secs(5))
                .context("the old backup did not stop within 5 s of SIGCONT")?;
            if status.success() {
                bail!("the old backup exited successfully: {}", backup.stderr());
            }
            Ok(("primary", v))
        }
        FaultKind::Partition => {
            proxy
                .context("a partition trial needs its proxy")?
                .partition();
            let t = Instant::now();
            loop {
                let p = primary.query();
                let b = backup.query();
                let p_won = p.as_ref().is_some_and(unprotected);
                let b_won = b.as_ref().is_some_and(live);
                if p_won && b_won {
                    bail!("both sides serve after the partition");
                }
                // Resolved once the loser has stopped.
                if p_won && backup.wait_exit(Duration::from_millis(1)).is_some() {
                    return Ok(("primary", p.unwrap_or_default()));
                }
                if b_won && primary.wait_exit(Duration::from_millis(1)).is_some() {
                    return Ok(("backup", b.unwrap_or_default()));
                }
                if t.elapsed() > settle {
                    bail!(
                        "the partition was not resolved within {settle:?}: primary {p:?}, backup {b:?}\n{}\n{}",
                        primary.stderr(),
                        backup.stderr()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Percentile of `v` (sorted copy), or `None` when empty.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    Some(s[i])
}

/// Per-kind summary.
#[derive(Clone, Debug, Serialize)]
pub struct KindSummary {
    /// The fault.
    pub kind: FaultKind,
    /// Trials run.
    pub trials: usize,
    /// Trials that failed to run (errors).
    pub failed: usize,
    /// Acknowledged writes lost, summed.
    pub lost: u64,
    /// Writes applied twice, summed.
    pub applied_twice: u64,
    /// Trials where the losing side replied after the winner took over.
    pub both_live: usize,
    /// Gap p50 / p99 / max, ms.
    pub gap_ms: [Option<f64>; 3],
    /// Medians of detection / drain / arbitration / go-live, ms.
    pub parts_p50_ms: [Option<f64>; 4],
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    /// The machine.
    pub machine: crate::report::Machine,
    /// Transport, timeouts and load shape.
    pub transport: String,
    /// `channel.peer_timeout_ms`.
    pub peer_timeout_ms: u64,
    /// Client retry interval, ms.
    pub retry_ms: u64,
    /// Clients.
    pub clients: u32,
    /// Per kind.
    pub summary: Vec<KindSummary>,
    /// Every trial.
    pub trials: Vec<TrialResult>,
}

impl FailoverReport {
    /// Everything held: no failed trial, nothing lost or applied twice, never both live.
    pub fn clean(&self) -> bool {
        self.summary
            .iter()
            .all(|s| s.failed == 0 && s.lost == 0 && s.applied_twice == 0 && s.both_live == 0)
    }

    /// A table for the terminal.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let mut out = format!(
            "failover: transport {}, peer_timeout_ms {}, client retry {} ms, {} clients\n{:<13} {:>6} {:>6} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}\n",
            self.transport,
            self.peer_timeout_ms,
            self.retry_ms,
            self.clients,
            "fault",
            "trials",
            "failed",
            "lost",
            "twice",
            "both",
            "gap p50",
            "gap p99",
            "gap max",
            "detect",
            "drain",
            "arbit",
            "go-live"
        );
        for s in &self.summary {
            out.push_str(&format!(
                "{:<13} {:>6} {:>6} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8}\n",
                s.kind.name(),
                s.trials,
                s.failed,
                s.lost,
                s.applied_twice,
                s.both_live,
                f(s.gap_ms[0]),
                f(s.gap_ms[1]),
                f(s.gap_ms[2]),
                f(s.parts_p50_ms[0]),
                f(s.parts_p50_ms[1]),
                f(s.parts_p50_ms[2]),
                f(s.parts_p50_ms[3]),
            ));
        }
        out.push_str(
            "(times in ms; detect/drain/arbit/go-live are medians, from the fault to the winner serving;\n \
             a gap of 0.0: no pause of 0.5 ms or more in the replies around the fault)\n",
        );
        for t in self.trials.iter().filter(|t| !t.ok()) {
            out.push_str(&format!(
                "FAILED {} #{}: lost {}, twice {}, loser replies {}: {}\n",
                t.kind.name(),
                t.index,
                t.lost,
                t.applied_twice,
                t.loser_replies_after,
                t.error.as_deref().unwrap_or("")
            ));
        }
        out
    }
}

/// Runs every trial of `opts` and summarizes.
pub fn run(opts: &FailoverOptions) -> Result<FailoverReport> {
    std::fs::create_dir_all(&opts.work_dir)?;
    let mut seed = opts.seed;
    let mut trials = Vec::new();
    let mut summary = Vec::new();
    let total = opts.trials.iter().map(|&(_, n)| u64::from(n)).sum();
    let progress = crate::progress::Progress::new("failover trials", total);
    for &(kind, n) in &opts.trials {
        let mut these = Vec::new();
        for i in 0..n {
            let r = run_trial(opts, kind, i, &mut seed);
            progress.inc(1);
            if opts.verbose {
                progress.println(&format!(
                    "{} #{i}: winner {} gap {:.1} ms (ended {:.1} ms after the fault; detect {:?} drain {:?} arbit {:?} live {:?}; retries {}, resent {}) lost {} twice {} loser-replies {}{}",
                    kind.name(),
                    r.winner,
                    r.gap_ms,
                    r.gap_end_ms,
                    r.detect_ms,
                    r.drain_ms,
                    r.arbitration_ms,
                    r.go_live_ms,
                    r.retries,
                    r.resent_replies,
                    r.lost,
                    r.applied_twice,
                    r.loser_replies_after,
                    r.error
                        .as_ref()
                        .map(|e| format!(" ERROR {e}"))
                        .unwrap_or_default()
                ));
            }
            these.push(r);
        }
        let ran: Vec<&TrialResult> = these.iter().filter(|t| t.error.is_none()).collect();
        let gaps: Vec<f64> = ran.iter().map(|t| t.gap_ms).collect();
        let part = |f: fn(&TrialResult) -> Option<f64>| {
            percentile(&ran.iter().filter_map(|t| f(t)).collect::<Vec<_>>(), 0.5)
        };
        summary.push(KindSummary {
            kind,
            trials: these.len(),
            failed: these.len() - ran.len(),
            lost: these.iter().map(|t| t.lost).sum(),
            applied_twice: these.iter().map(|t| t.applied_twice).sum(),
            both_live: these.iter().filter(|t| t.loser_replies_after > 0).count(),
            gap_ms: [
                percentile(&gaps, 0.5),
                percentile(&gaps, 0.99),
                percentile(&gaps, 1.0),
            ],
            parts_p50_ms: [
                part(|t| t.detect_ms),
                part(|t| t.drain_ms),
                part(|t| t.arbitration_ms),
                part(|t| t.go_live_ms),
            ],
        });
        trials.extend(these);
    }
    Ok(FailoverReport {
        machine: crate::report::Machine::detect(),
        transport: opts.transport.clone(),
        peer_timeout_ms: opts.peer_timeout_ms,
        retry_ms: opts.retry.as_millis() as u64,
        clients: opts.clients,
        summary,
        trials,
    })
}

/// Writes the report as JSON.
pub fn write_json(report: &FailoverReport, path: &Path) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

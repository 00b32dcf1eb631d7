//! Redundancy restored by itself (docs/reprotect.md): a chain of `ftvm`
//! processes where each failover is followed by a spare joining the side
//! that went live, under a self-checking APPEND load.
//!
//! 1. spare 0 waits (`ftvm backup --as-spare --find-spares`, registered at
//!    a fresh `file:` arbiter); an unprotected primary (`ftvm primary
//!    --find-spares`) transfers its state to it: the first pair;
//! 2. per cycle: the next spare registers; once ACKs flow, the live side is
//!    SIGKILLed; its backup drains, wins the next generation, goes live and
//!    takes the new spare (live pre-copy over tcp): a pair again;
//! 3. the load stops and reads every key back (lost / applied twice), and
//!    the last pair stops in order (both print their final state).
//!
//! Each join is checked: the digest the live side computed at the join exit
//! must be the one the spare restored.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ftvm_kvproto::load::{LoadConfig, OpMix, run_load};
use nix::sys::signal::Signal;
use serde::Serialize;

use super::{Proc, free_port};

/// How long each step may take.
const LIMIT: Duration = Duration::from_secs(30);

/// Role names of the chain's processes (their stderr files).
const SPARES: [&str; 9] = [
    "spare0", "spare1", "spare2", "spare3", "spare4", "spare5", "spare6", "spare7", "spare8",
];

/// What a chain runs.
#[derive(Clone, Debug)]
pub struct ChainOptions {
    /// The `ftvm` binary.
    pub ftvm: PathBuf,
    /// Stderr/stdout files and the arbiter directory.
    pub work_dir: PathBuf,
    /// Failovers, each followed by a join (1..=8).
    pub cycles: usize,
    /// Closed-loop load clients.
    pub clients: u32,
    /// `--profile FILE` for every process.
    pub profile: Option<PathBuf>,
    /// `channel.peer_timeout_ms`.
    pub peer_timeout_ms: u64,
}

/// One join of a spare to a live side.
#[derive(Clone, Debug, Serialize)]
pub struct Join {
    /// The generation the new pair runs at.
    pub generation: u64,
    /// From the SIGKILL to the backup live (none for the first pair).
    pub live_ms: Option<f64>,
    /// From the SIGKILL (or the start) to protected again.
    pub protected_ms: f64,
    /// From going live to the transfer's start, ms (a backup that went live).
    pub offer_after_live_ms: Option<f64>,
    /// The transfer: whole, ms.
    pub transfer_ms: f64,
    /// The vCPU's pause, ms.
    pub pause_ms: f64,
    /// Bytes sent.
    pub bytes: u64,
    /// The state digest at the join exit, equal on both sides.
    pub digest: String,
}

/// What a chain did.
#[derive(Clone, Debug, Serialize)]
pub struct ChainReport {
    /// The first pair, then one per cycle.
    pub joins: Vec<Join>,
    /// Operations acknowledged.
    pub ops: u64,
    /// Acknowledged appends missing at the end.
    pub lost: u64,
    /// Appends found twice.
    pub applied_twice: u64,
    /// Load errors.
    pub errors: u64,
    /// The last pair's final state, equal on both sides.
    pub final_state: String,
}

impl ChainReport {
    /// No write lost or doubled, no error.
    pub fn clean(&self) -> bool {
        (self.lost, self.applied_twice, self.errors) == (0, 0, 0) && self.ops > 0
    }
}

/// Flags before the subcommand: the profile and the peer timeout.
fn global(opts: &ChainOptions) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(p) = &opts.profile {
        v.extend(["--profile".to_string(), p.display().to_string()]);
    }
    v.extend([
        "--set".to_string(),
        format!("channel.peer_timeout_ms={}", opts.peer_timeout_ms),
    ]);
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A loopback address with a free port.
pub fn free_addr(udp: bool) -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port(udp)?))
}

/// Where a test or the chain starts its `ftvm` processes.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// The `ftvm` binary.
    pub ftvm: PathBuf,
    /// Their stderr/stdout files.
    pub dir: PathBuf,
    /// Flags before the subcommand (`--profile`, `--set`).
    pub pre: Vec<String>,
    /// `--arbiter`.
    pub arbiter: String,
}

impl Launcher {
    /// `ftvm backup --as-spare --find-spares` waiting on `listen`, serving
    /// `service` once live; with `vm` registered at the arbiter as its
    /// spare. Returns once it waits.
    pub fn spare(
        &self,
        role: &'static str,
        vm: Option<&str>,
        listen: &str,
        service: &str,
    ) -> Result<Proc> {
        self.spare_with(role, vm, listen, service, &[])
    }

    /// [`Launcher::spare`] with `extra` arguments (`--metrics ADDR`, …).
    pub fn spare_with(
        &self,
        role: &'static str,
        vm: Option<&str>,
        listen: &str,
        service: &str,
        extra: &[&str],
    ) -> Result<Proc> {
        // Port 0: `Proc::spawn` learns the bound address.
        let status = "127.0.0.1:0".to_string();
        let mut a = self.pre.clone();
        a.extend(strings(&[
            "backup",
            "--as-spare",
            "--find-spares",
            "--guest",
            "kv",
            "--listen",
            listen,
            "--service",
            service,
            "--status",
            &status,
            "--arbiter",
            &self.arbiter,
            "--wait-secs",
            "120",
        ]));
        if let Some(vm) = vm {
            a.extend(strings(&["--vm", vm]));
        }
        a.extend(strings(extra));
        let mut p = Proc::spawn(&self.ftvm, role, &a, &self.dir, status)?;
        p.wait_status(LIMIT, "waiting", |v| v["phase"] == "waiting")?;
        // Its status answers before its VM is built and its key registered.
        let t = Instant::now();
        while !p.stderr().contains("waiting as a SPARE on") {
            if t.elapsed() > LIMIT {
                bail!("the {role} never said it waits: {}", p.stderr());
            }
            if let Some(s) = p.exited() {
                bail!("the {role} exited ({s}) before waiting: {}", p.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(p)
    }

    /// `ftvm primary` of `vm` with no backup, serving `service`, taking
    /// the spares `spares` and (with `find`) those registered at the arbiter.
    pub fn unprotected_primary(
        &self,
        role: &'static str,
        vm: &str,
        service: &str,
        spares: &[&str],
        find: bool,
    ) -> Result<Proc> {
        // Port 0: `Proc::spawn` learns the bound address.
        let status = "127.0.0.1:0".to_string();
        let mut a = self.pre.clone();
        a.extend(strings(&[
            "primary",
            "--guest",
            "kv",
            "--service",
            service,
            "--status",
            &status,
            "--arbiter",
            &self.arbiter,
            "--vm",
            vm,
        ]));
        if !spares.is_empty() {
            a.extend(["--spare".to_string(), spares.join(",")]);
        }
        if find {
            a.push("--find-spares".into());
        }
        Proc::spawn(&self.ftvm, role, &a, &self.dir, status)
    }
}

/// The `digest <hex>` on the last line of `text` containing `marker`.
fn digest_after(text: &str, marker: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| l.contains(marker))?;
    let at = line.rfind("digest ")?;
    let d = line[at + 7..].split_whitespace().next()?;
    Some(d.trim_end_matches(',').to_string())
}

/// The final `state digest <hex> at exit <n>` a process printed.
pub fn final_state(p: &Proc) -> Result<String> {
    p.stdout()
        .lines()
        .rev()
        .find(|l| l.starts_with("state digest "))
        .map(str::to_string)
        .with_context(|| format!("the {} printed no final state: {}", p.role, p.stderr()))
}

/// A live side's view: its own (a primary) or its `live` part (a backup
/// that went live).
fn live_field<'a>(v: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    if v["role"] == "backup" {
        &v["live"][key]
    } else {
        &v[key]
    }
}

/// Waits until `live` at `generation` is protected by `spare` and checks
/// that both name the same digest at the join exit; `since`: the kill (or
/// the start) the time is measured from.
pub fn wait_joined(
    live: &mut Proc,
    spare: &mut Proc,
    generation: u64,
    since: Instant,
) -> Result<Join> {
    let v = live.wait_status(LIMIT, "protected again", |v| {
        live_field(v, "protection") == "protected"
    })?;
    let protected_ms = since.elapsed().as_secs_f64() * 1e3;
    ensure!(
        live_field(&v, "generation") == generation,
        "the live side runs at generation {}, expected {generation}: {v}",
        live_field(&v, "generation")
    );
    let b = spare.wait_status(LIMIT, "replaying", |v| v["phase"] == "replaying")?;
    ensure!(
        b["generation"] == generation,
        "the spare replays at generation {}, expected {generation}",
        b["generation"]
    );
    let sent = digest_after(&live.stderr(), "state transferred to the spare")
        .context("the live side names no join digest")?;
    let took = digest_after(&spare.stderr(), "took the state of")
        .context("the spare names no join digest")?;
    ensure!(
        sent == took,
        "join digests differ at generation {generation}: live side {sent}, spare {took}"
    );
    let last = &live_field(&v, "transfer")["last"];
    let transfer_ms = last["total_ms"].as_f64().unwrap_or(0.0);
    let offer_after_live_ms = match (
        v["failover"]["live_us"].as_u64(),
        last["ended_unix_us"].as_u64(),
    ) {
        (Some(live), Some(ended)) => Some((ended as f64 - live as f64) / 1e3 - transfer_ms),
        _ => None,
    };
    Ok(Join {
        generation,
        live_ms: None,
        protected_ms,
        offer_after_live_ms,
        transfer_ms,
        pause_ms: last["pause_ms"].as_f64().unwrap_or(0.0),
        bytes: last["bytes"].as_u64().unwrap_or(0),
        digest: sent,
    })
}

/// The chain's load: `clients` closed-loop clients appending unique tokens
/// over every service address (tried in order on a 100 ms timeout) until
/// `stop`, then reading every key back.
pub fn append_load(
    services: &[String],
    clients: u32,
    stop: &Arc<AtomicBool>,
) -> Result<LoadConfig> {
    let (first, rest) = services.split_first().context("no service address")?;
    let mut cfg = LoadConfig::new(first.parse()?);
    for s in rest {
        cfg.fallbacks.push(s.parse()?);
    }
    cfg.clients = clients;
    cfg.ops = u64::MAX / 4;
    cfg.timeout = Duration::from_millis(100);
    cfg.max_attempts = 600;
    cfg.spin = false;
    cfg.mix = OpMix::AppendOnly;
    cfg.final_check = true;
    cfg.stop = Some(stop.clone());
    Ok(cfg)
}

/// Runs the chain (module doc).
pub fn run_chain(opts: &ChainOptions) -> Result<ChainReport> {
    ensure!(
        (1..SPARES.len()).contains(&opts.cycles),
        "cycles {} out of range 1..={}",
        opts.cycles,
        SPARES.len() - 1
    );
    std::fs::create_dir_all(&opts.work_dir)?;
    let at = Launcher {
        ftvm: opts.ftvm.clone(),
        dir: opts.work_dir.clone(),
        pre: global(opts),
        arbiter: format!("file:{}", opts.work_dir.join("arbiter").display()),
    };
    let vm = format!("kv-chain-{}", std::process::id());
    let services = (0..=opts.cycles + 1)
        .map(|_| free_addr(true))
        .collect::<Result<Vec<_>>>()?;
    let spare = |i: usize| at.spare(SPARES[i], Some(&vm), &free_addr(false)?, &services[i + 1]);
    let mut waiting = vec![spare(0)?];
    let start = Instant::now();
    let mut live = at.unprotected_primary("primary", &vm, &services[0], &[], true)?;
    let mut joins = vec![wait_joined(&mut live, &mut waiting[0], 1, start)?];
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = append_load(&services, opts.clients, &stop)?;
    let load = std::thread::spawn(move || run_load(&cfg));
    let acked = |v: &serde_json::Value| live_field(v, "last_seq_acked").as_u64().unwrap_or(0);
    for cycle in 1..=opts.cycles {
        waiting.push(spare(cycle)?);
        let base = live.query().map_or(0, |v| acked(&v));
        live.wait_status(LIMIT, "ACKs flowing", |v| acked(v) > base + 200)?;
        let killed = Instant::now();
        live.kill9()?;
        let mut backup = waiting.remove(0);
        let generation = cycle as u64 + 1;
        let v = backup.wait_status(LIMIT, "live", |v| v["phase"] == "live")?;
        let live_ms = killed.elapsed().as_secs_f64() * 1e3;
        ensure!(
            v["generation"] == generation,
            "the backup went live at generation {}, expected {generation}",
            v["generation"]
        );
        let mut j = wait_joined(&mut backup, &mut waiting[0], generation, killed)?;
        j.live_ms = Some(live_ms);
        joins.push(j);
        live = backup;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let r = load
        .join()
        .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    live.signal(Signal::SIGINT)?;
    let mut last = waiting.remove(0);
    for p in [&mut live, &mut last] {
        match p.wait_exit(LIMIT) {
            Some(s) if s.success() => {}
            Some(s) => bail!("the {} ended {s}: {}", p.role, p.stderr()),
            None => bail!("the {} did not stop: {}", p.role, p.stderr()),
        }
    }
    let (a, b) = (final_state(&live)?, final_state(&last)?);
    ensure!(
        a == b,
        "the last pair ended apart: live side {a}, backup {b}"
    );
    Ok(ChainReport {
        joins,
        ops: r.ops,
        lost: r.lost_writes,
        applied_twice: r.applied_twice,
        errors: r.errors,
        final_state: a,
    })
}

//! The `ftvm bench` subcommand tree: [`BenchCommand`] is parsed by the
//! binary (clap derive) and handed to [`run`]; every check of the arguments
//! and the option structs they become live here, beside the harnesses.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use ftvm_tuning::Settings;

use crate::transfer::{Stream, TransferOptions, list_transfer, run_transfer};
use crate::{ChannelOptions, Role};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Channel benchmark: floors, output-rule, mixed, throughput, idle-cpu.
    Channel(ChannelArgs),
    /// VMM benchmark: live vs record mode with the kv guest.
    Vmm(crate::vmm::BenchVmmArgs),
    /// End to end: kv, echo and dns guests, unprotected vs FT per transport.
    E2e(crate::e2e::BenchE2eArgs),
    /// Failover: faults (SIGKILL, SIGSTOP, partition) injected into a pair
    /// of ftvm processes under a self-checking load; lost / applied-twice /
    /// both-live counts and the gap, split into its parts.
    Failover(FailoverArgs),
    /// State transfer: live pre-copy of the kv guest, idle and under load.
    Transfer(TransferArgs),
    /// An ACK-only backup: takes a primary's channel, validates and ACKs
    /// every entry, replays nothing (what FT costs a primary whose backup
    /// has a host of its own).
    AckBackup(crate::ackonly::AckBackupArgs),
}

/// Which end of a two-host run this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// The backup end: `--listen ADDR`, serves runs until killed.
    Sink,
    /// The measuring primary end: `--connect ADDR`.
    Source,
}

#[derive(Debug, clap::Args)]
pub struct ChannelArgs {
    /// Print the scenario table and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only scenarios whose name contains SUBSTR.
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Transport: tcp, uring, shm, rdma or all (default: channel.transport).
    /// rdma runs on the device `[rdma]` selects; `--set rdma.nic=simulated`
    /// runs it on the simulated NIC (a harness check, not a measurement).
    #[arg(long)]
    pub transport: Option<String>,
    /// Latency samples (round trips, OUTPUT entries, mixed entries) per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub entries: u64,
    /// Seconds of time-based scenarios (idle-cpu).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Payload bytes per entry (comma-separated list allowed: 64,4096).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub payload: Vec<usize>,
    /// mixed and open-floor: offered entries per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// throughput: stream at least this many MiB of frames (and --entries entries).
    #[arg(long, default_value_t = 1024)]
    pub stream_mib: u64,
    /// Rounds: each scenario and its floor alternate this many times (samples split between rounds).
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// mixed: plain entries before each OUTPUT entry.
    #[arg(long, default_value_t = 10)]
    pub output_every: u32,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write HdrHistogram percentile files (.hgrm) into this directory.
    #[arg(long, value_name = "DIR")]
    pub hgrm: Option<PathBuf>,
    /// Write an SVG percentile plot here.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Two-host mode: this process is the sink or the source.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Sink: address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Source: sink address to connect to.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,
}

fn channel(a: ChannelArgs, settings: &Settings) -> anyhow::Result<()> {
    if a.list {
        print!("{}", crate::list());
        return Ok(());
    }
    let role = match (a.role, a.listen, a.connect) {
        (None, None, None) => Role::Local,
        (Some(RoleArg::Sink), Some(listen), None) => Role::Sink { listen },
        (Some(RoleArg::Source), None, Some(connect)) => Role::Source { connect },
        (Some(RoleArg::Sink), _, _) => bail!("--role sink needs --listen ADDR (and no --connect)"),
        (Some(RoleArg::Source), _, _) => {
            bail!("--role source needs --connect ADDR (and no --listen)")
        }
        (None, _, _) => bail!("--listen/--connect need --role sink|source"),
    };
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration {}: expected 0 < seconds <= 3600", a.duration);
    }
    if a.rounds == 0 || a.rounds > 1000 {
        bail!("--rounds {}: expected 1..=1000", a.rounds);
    }
    if a.entries == 0 {
        bail!("--entries 0: expected at least 1");
    }
    let opts = ChannelOptions {
        transports: crate::e2e::transports(a.transport.as_deref(), settings)?,
        filter: a.filter,
        entries: a.entries,
        duration: Duration::from_secs_f64(a.duration),
        payloads: a.payload,
        rate: a.rate,
        stream_bytes: a.stream_mib << 20,
        output_every: a.output_every,
        report: a.report,
        hgrm: a.hgrm,
        plot: a.plot,
        role,
    };
    crate::run_rounds(&opts, settings, a.rounds).map(drop)
}

pub fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Channel(a) => channel(a, settings),
        BenchCommand::Vmm(a) => crate::vmm::run(a, settings),
        BenchCommand::E2e(a) => crate::e2e::run(a, settings),
        BenchCommand::Failover(a) => failover(a, settings),
        BenchCommand::Transfer(a) => transfer(a, settings),
        BenchCommand::AckBackup(a) => crate::ackonly::run(a, settings),
    }
}

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Trials per fault kind (a kind listed in --trials-of overrides it).
    #[arg(long, default_value_t = 10)]
    pub trials: u32,
    /// Per-kind counts, e.g. `kill-primary=100,kill-backup=30`.
    #[arg(long, value_delimiter = ',', value_name = "KIND=N")]
    pub trials_of: Vec<String>,
    /// Fault kinds to run (default: all): kill-primary, kill-backup,
    /// stop-primary, stop-backup, partition.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Channel transport (tcp, shm, uring).
    #[arg(long, default_value = "tcp")]
    pub transport: String,
    /// peer_timeout_ms of both sides (silent failures are noticed after it).
    #[arg(long, default_value_t = 300)]
    pub peer_timeout_ms: u64,
    /// The clients' retry interval in ms (a request unanswered this long goes to the next address).
    #[arg(long, default_value_t = 100)]
    pub retry_ms: u64,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Arbiter URL for every trial (default: a fresh file: directory each).
    #[arg(long)]
    pub arbiter: Option<String>,
    /// Seed of the fault moments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where trials keep their files (kept when given: a failed trial's, or
    /// one whose gap exceeded two retry intervals, stays for a look).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// One line per trial.
    #[arg(long, short)]
    pub verbose: bool,
}

fn failover(a: FailoverArgs, settings: &Settings) -> anyhow::Result<()> {
    use crate::failover::{FailoverOptions, FaultKind};
    let kinds: Vec<FaultKind> = if a.kinds.is_empty() {
        FaultKind::ALL.to_vec()
    } else {
        a.kinds
            .iter()
            .map(|k| FaultKind::parse(k))
            .collect::<anyhow::Result<_>>()?
    };
    let mut trials: Vec<(FaultKind, u32)> = kinds.iter().map(|k| (*k, a.trials)).collect();
    for spec in &a.trials_of {
        let (k, n) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--trials-of {spec:?}: expected KIND=N"))?;
        let kind = FaultKind::parse(k)?;
        let n: u32 = n
            .parse()
            .map_err(|_| anyhow::anyhow!("--trials-of {spec:?}: {n:?} is not a count"))?;
        match trials.iter_mut().find(|(t, _)| *t == kind) {
            Some(t) => t.1 = n,
            None => trials.push((kind, n)),
        }
    }
    let keep = a.work_dir.is_some();
    let work_dir = a.work_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ftvm-bench-failover-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work_dir)?;
    // Both sides of every trial run with these settings (profile and --set).
    let profile = work_dir.join("settings.toml");
    std::fs::write(&profile, settings.to_toml())?;
    let opts = FailoverOptions {
        ftvm: std::env::current_exe()?,
        trials,
        transport: a.transport,
        peer_timeout_ms: a.peer_timeout_ms,
        retry: Duration::from_millis(a.retry_ms.max(1)),
        clients: a.clients,
        arbiter: a.arbiter,
        work_dir,
        seed: a.seed,
        profile: Some(profile),
        verbose: a.verbose,
    };
    let report = crate::failover::run(&opts)?;
    print!("{}", report.table());
    if let Some(path) = &a.report {
        crate::failover::write_json(&report, path)?;
        println!("report: {}", path.display());
    }
    if !report.clean() {
        bail!(
            "failover invariants broken (or trials failed); trial files are kept under {}",
            opts.work_dir.display()
        );
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&opts.work_dir);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Print the scenario table and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only scenarios whose name contains SUBSTR (idle-64, kv-64, idle-512, kv-512).
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Transfers per scenario (medians over these).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Byte stream: tcp (loopback) or pipe (in-process).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "pipe"])]
    pub stream: String,
    /// kv ops per load burst (bursts run back to back during a scenario).
    #[arg(long, default_value_t = 5_000)]
    pub burst_ops: u64,
    /// kv clients of the load.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Pre-copy: dirty-page rounds after the full copy, at most.
    #[arg(long, default_value_t = 16)]
    pub max_rounds: u32,
    /// Pre-copy: stop and copy once a round would send at most this many pages.
    #[arg(long, default_value_t = 256)]
    pub stop_pages: usize,
    /// Nice value of the receiving thread (it stands for another host).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub receiver_nice: i32,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

fn transfer(a: TransferArgs, settings: &Settings) -> anyhow::Result<()> {
    if a.list {
        print!("{}", list_transfer());
        return Ok(());
    }
    if a.runs == 0 || a.runs > 1000 {
        bail!("--runs {}: expected 1..=1000", a.runs);
    }
    if a.clients == 0 {
        bail!("--clients 0: expected at least 1");
    }
    let opts = TransferOptions {
        filter: a.filter,
        runs: a.runs,
        stream: if a.stream == "pipe" {
            Stream::Pipe
        } else {
            Stream::Tcp
        },
        burst_ops: a.burst_ops.max(100),
        clients: a.clients,
        max_rounds: a.max_rounds,
        stop_pages: a.stop_pages,
        receiver_nice: a.receiver_nice.clamp(-20, 19),
        report: a.report,
    };
    run_transfer(&opts, settings).map(drop)
}

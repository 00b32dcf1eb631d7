//! `ftvm bench ...`: argument parsing only; the harness is `ftvm-bench`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use ftvm_bench::{ChannelOptions, Role};
use ftvm_tuning::{Settings, TransportKind};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Channel benchmark: floors, output-rule, mixed, throughput, idle-cpu.
    Channel(ChannelArgs),
    /// VMM benchmark: live vs record mode with the kv guest.
    Vmm(crate::bench_vmm::BenchVmmArgs),
    /// End to end: kv and echo guests, unprotected vs FT per transport.
    E2e(crate::bench_e2e::BenchE2eArgs),
    /// State transfer: live pre-copy of the kv guest, idle and under load.
    Transfer(crate::bench_transfer::BenchTransferArgs),
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
    /// Transport: tcp, uring, shm or all (default: channel.transport).
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

/// The transports `--transport` names (`all`, or one), or the settings' one.
pub(crate) fn transports(
    arg: Option<&str>,
    settings: &Settings,
) -> anyhow::Result<Vec<TransportKind>> {
    Ok(match arg {
        None => vec![settings.channel.transport],
        Some("all") => vec![TransportKind::Tcp, TransportKind::Uring, TransportKind::Shm],
        Some("tcp") => vec![TransportKind::Tcp],
        Some("uring") => vec![TransportKind::Uring],
        Some("shm") => vec![TransportKind::Shm],
        Some(other) => bail!("--transport {other:?}: expected tcp, uring, shm or all"),
    })
}

fn channel(a: ChannelArgs, settings: &Settings) -> anyhow::Result<()> {
    if a.list {
        print!("{}", ftvm_bench::list());
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
        transports: transports(a.transport.as_deref(), settings)?,
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
    ftvm_bench::run_rounds(&opts, settings, a.rounds).map(drop)
}

pub fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Channel(a) => channel(a, settings),
        BenchCommand::Vmm(a) => crate::bench_vmm::run(a, settings),
        BenchCommand::E2e(a) => crate::bench_e2e::run(a, settings),
        BenchCommand::Transfer(a) => crate::bench_transfer::run(a, settings),
    }
}

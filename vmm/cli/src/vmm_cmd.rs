//! `ftvm primary`, `ftvm replay`: run a guest recording its log, or replay a
//! log offline and verify every checkpoint. Both end with the line
//! `state digest <hex> at exit <n>`.
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ftvm_ft::node::{PrimaryNode, Protect};
use ftvm_tuning::Settings;
use ftvm_vmm::{LogFileReader, LogFileWriter, RunMode, RunOutcome, StopReason, Vm, VmConfig};

#[derive(Debug, clap::Subcommand)]
pub enum VmmCommand {
    /// Run a guest as the primary: protected by a backup with --backup
    /// (every output waits for the backup's ACK; a lost backup makes it race
    /// for the next generation at the arbiter), else record mode with
    /// --record-log or live mode. Stops when the guest exits or on
    /// SIGINT/SIGTERM (at the next exit, with a final checkpoint).
    Primary(Box<PrimaryArgs>),
    /// Replay a recorded log offline, verifying every checkpoint.
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct PrimaryArgs {
    /// Embedded guest to run (hello, ticker, kv, echo, dns).
    #[arg(long)]
    guest: String,
    /// UDP address the guest's NIC serves on (`host:port`; a name is resolved).
    #[arg(long, value_name = "HOST:PORT")]
    service: Option<String>,
    /// Record the log into FILE (record mode); without it, live mode.
    #[arg(long, value_name = "FILE")]
    record_log: Option<PathBuf>,
    /// Backing file of the guest's block device (--disk-mode local: this
    /// side's own copy).
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
    /// Argument passed to the guest in its boot info (replay needs the same).
    #[arg(long, default_value_t = 0)]
    arg: u64,
    /// Stop after this many exits.
    #[arg(long)]
    max_exits: Option<u64>,
    /// Protect the guest with the backup listening at ADDR (`ftvm backup`):
    /// record into the logging channel; every output waits for its ACK.
    #[arg(long, value_name = "ADDR")]
    backup: Option<String>,
    /// Channel transport to the backup: tcp, shm or uring (default: channel.transport).
    #[arg(long, requires = "backup")]
    transport: Option<ftvm_tuning::TransportKind>,
    /// Start unprotected and take a spare (`ftvm backup --spare --listen
    /// ADDR`) as the backup while running: live state transfer, then the
    /// pair is protected; again whenever the backup is lost.
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        conflicts_with = "backup"
    )]
    spare: Vec<String>,
    /// Also take the spares registered at the arbiter under --vm.
    #[arg(long, conflicts_with = "backup")]
    find_spares: bool,
    /// Serve status (JSON) on this TCP address (`ftvm status ADDR`); with
    /// --backup, --spare or --find-spares.
    #[arg(long)]
    status: Option<String>,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (docs/operations.md);
    /// with --backup, --spare or --find-spares.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    #[command(flatten)]
    pair: crate::ft_cmd::PairArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Embedded guest the log was recorded with.
    #[arg(long)]
    guest: String,
    /// The log file written by `ftvm primary --record-log`.
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// Guest argument the primary ran with.
    #[arg(long, default_value_t = 0)]
    arg: u64,
    /// With --disk-mode local: this replay's own copy of the disk (a copy
    /// of the primary's disk as it was when the log began); the replay
    /// performs the guest's writes on it.
    #[arg(long, value_name = "FILE")]
    disk: Option<PathBuf>,
}

pub fn run(cmd: VmmCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        VmmCommand::Primary(a) => primary(*a, settings),
        VmmCommand::Replay(a) => replay(a, settings),
    }
}

pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    Ok(stop)
}

fn primary(a: PrimaryArgs, settings: &Settings) -> anyhow::Result<()> {
    let mut c = VmConfig::new(&a.guest, &settings.vmm)?;
    c.guest_arg = a.arg;
    c.disk = a.disk;
    c.max_exits = a.max_exits;
    c.stop = stop_on_signals()?;
    let service = (a.service.as_deref())
        .map(|addr| ftvm_ft::node::resolve("--service", addr))
        .transpose()?;
    let pair = a.pair.config()?;
    if let Some(f) = &pair.floating {
        // The primary is live from the start: the address is its now.
        f.add()?;
        f.announce()?;
    }
    // Bind the service before anything else: a busy address fails here, and
    // requests that arrive while the pair forms wait in the socket's buffer
    // (a primary that says "protected" is also already reachable).
    if let Some(addr) = service {
        c.devices
            .push(Box::new(ftvm_vmm::devices::net::Nic::new(addr)?));
    }
    let protect = match (a.backup, a.spare.is_empty() && !a.find_spares) {
        (Some(addr), _) => Some(Protect::Backup(addr)),
        (None, false) => Some(Protect::Spares(ftvm_ft::rejoin::SpareSources {
            list: a.spare,
            registered: a.find_spares,
        })),
        (None, true) => None,
    };
    if let (None, Some(flag)) = (
        &protect,
        (a.status.as_ref().map(|_| "--status")).or(a.metrics.as_ref().map(|_| "--metrics")),
    ) {
        anyhow::bail!("{flag} needs --backup, --spare or --find-spares (a pair to report on)");
    }
    if let Some(protect) = protect {
        let node = PrimaryNode {
            settings: crate::ft_cmd::with_transport(settings, a.transport),
            protect,
            status: a.status,
            // Bound now: a busy address fails before the pair forms.
            metrics: (a.metrics.as_deref())
                .map(|addr| ftvm_ft::metrics::MetricsEndpoint::bind("--metrics", addr))
                .transpose()?,
            record_log: a.record_log,
            pair,
            service,
        };
        let outcome = ftvm_ft::node::run_primary(c, node)?;
        report(&outcome);
        return finish(outcome);
    }
    let mode = match &a.record_log {
        Some(path) => RunMode::Record(Box::new(LogFileWriter::create(path)?)),
        None => RunMode::Live,
    };
    let outcome = Vm::new(c, mode)?.run()?;
    report(&outcome);
    if let Some(path) = &a.record_log {
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "log {}: {} entries, {bytes} bytes",
            path.display(),
            outcome.stats.entries
        );
    }
    finish(outcome)
}

fn replay(a: ReplayArgs, settings: &Settings) -> anyhow::Result<()> {
    let mut c = VmConfig::new(&a.guest, &settings.vmm)?;
    c.guest_arg = a.arg;
    c.disk = a.disk;
    c.stop = stop_on_signals()?;
    let source = LogFileReader::open(&a.log)?;
    let outcome = Vm::new(c, RunMode::Replay(Box::new(source)))?.run()?;
    report(&outcome);
    if outcome.reason == StopReason::LogEnded {
        eprintln!("note: the log ended without the primary's final checkpoint");
    }
    finish(outcome)
}

fn report(o: &RunOutcome) {
    let secs = o.elapsed.as_secs_f64();
    eprintln!(
        "stopped: {:?} after {} exits in {:.3} s ({:.0} exits/s), {} entries ({} payload bytes), {} checkpoints, {} interrupts, {} outputs",
        o.reason,
        o.exits,
        secs,
        o.exits as f64 / secs.max(1e-9),
        o.stats.entries,
        o.stats.payload_bytes,
        o.checkpoints,
        o.interrupts,
        o.stats.outputs,
    );
    // A closed stdout (e.g. piped into `head`) must not turn into a panic.
    let _ = writeln!(
        std::io::stdout(),
        "state digest {:016x} at exit {}",
        o.state.digest,
        o.exits
    );
}

fn finish(o: RunOutcome) -> anyhow::Result<()> {
    match o.reason {
        StopReason::GuestExit(code) if code != 0 => {
            anyhow::bail!("the guest exited with code {code}")
        }
        _ => Ok(()),
    }
}

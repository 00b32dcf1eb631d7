//! Setting up either end of the pair: generation, transport, handshake,
//! driver (primary) or source and failover plan (backup).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ftvm_arbiter::{Arbiter, ArbiterError, Decision, Retry};
use ftvm_channel::transport::{self, Listener, TransportError};
use ftvm_channel::{Appender, Backup, ChannelError, Primary};
use ftvm_tuning::Settings;
use ftvm_vmm::{PollPoint, Vm, VmConfig, VmError};
use ftvm_wire::control::Hello;

use crate::driver::{DriverShared, PairIdentity, PrimaryDriver};
use crate::gate::{ChannelGate, GateCounters, gate_channel};
use crate::golive::{BackupFailover, BackupStatus};
use crate::service::ServiceTakeover;
use crate::sink::{ChannelSink, DriverThread, SinkStats};
use crate::source::{ChannelSource, SourceStats, Stopper};
use crate::standby::StandbyGate;

/// Answers "is this process stopping?" (arbitration stops retrying then).
pub type GiveUp = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long an orderly finish waits for the backup's last ACK.
pub(crate) const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Setting up an end of the pair failed.
#[derive(Debug, thiserror::Error)]
pub enum PairSetupError {
    /// The transport could not connect or listen.
    #[error("{what}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: TransportError,
    },
    /// The handshake or the channel failed.
    #[error("{what}")]
    Channel {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: ChannelError,
    },
    /// No primary connected in time.
    #[error("no primary connected to {addr} within {secs} s")]
    NoPrimary {
        /// The listening address.
        addr: String,
        /// The wait.
        secs: u64,
    },
    /// The arbiter could not be asked.
    #[error("{what} at {arbiter}")]
    Arbiter {
        /// What was being done.
        what: String,
        /// The arbiter's URL.
        arbiter: String,
        /// Why it failed.
        source: ArbiterError,
    },
    /// Another primary of this VM claimed the generation first.
    #[error(
        "generation {generation} of VM {vm:?} was just claimed by {holder}: is another primary of this VM starting?"
    )]
    Claimed {
        /// The VM.
        vm: String,
        /// The generation.
        generation: u64,
        /// Who claimed it.
        holder: String,
    },
    /// A local resource (a socket pair) could not be made.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A primary starting a pair claims the generation after the latest one
/// decided for `vm` (1 for a new VM); the pair runs at it, and the next
/// failure races for the one after. Nothing is ever reset.
pub fn claim_generation(
    arbiter: &dyn Arbiter,
    vm: &str,
    candidate: &str,
) -> Result<u64, PairSetupError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source| PairSetupError::Arbiter {
            what,
            arbiter: arbiter.url(),
            source,
        }
    };
    let latest = arbiter
        .latest(vm)
        .map_err(err("reading the latest generation"))?
        .map_or(0, |(g, _)| g);
    let generation = latest + 1;
    match arbiter
        .test_and_set(vm, generation, candidate)
        .map_err(err("claiming a generation"))?
    {
        Decision::Won => Ok(generation),
        Decision::Lost { holder } => Err(PairSetupError::Claimed {
            vm: vm.to_string(),
            generation,
            holder,
        }),
    }
}

/// Who the primary is and what it runs.
#[derive(Clone)]
pub struct PrimaryOptions {
    /// The pair's identity; `generation` is the one claimed.
    pub pair: PairIdentity,
    /// The guest (`--guest`), told to the backup.
    pub guest: String,
    /// The guest's argument (`--arg`).
    pub guest_arg: u64,
    /// The process is stopping.
    pub give_up: GiveUp,
}

impl std::fmt::Debug for PrimaryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryOptions")
            .field("pair", &self.pair)
            .field("guest", &self.guest)
            .finish()
    }
}

/// The primary's end: what the VM needs.
#[derive(Debug)]
pub struct PrimaryEnd {
    /// The VM's log sink (owns or watches the driver).
    pub sink: ChannelSink,
    /// The VM's output gate.
    pub gate: ChannelGate,
    /// What the driver publishes (status, protection, generation).
    pub shared: Arc<DriverShared>,
    /// Held / released outputs.
    pub gate_counters: Arc<GateCounters>,
    /// Sink counters (entries, bytes, flow and lag control).
    pub sink_stats: Arc<SinkStats>,
}

impl PrimaryEnd {
    /// Wires the gate into `config`; returns the sink to record into
    /// (`RunMode::Record`). When the VM stops, the sink finishes the driver.
    pub fn install(self, config: &mut VmConfig) -> ChannelSink {
        config.gate = Box::new(self.gate);
        self.sink
    }
}

/// Connects to the backup at `addr`, handshakes (guest, argument, image,
/// settings, VM name must match) and sets up the driver: inline when the
/// transport has a readiness fd (tcp), else — or with `channel.threaded` —
/// on a thread of its own.
pub fn connect_primary(
    settings: &Settings,
    addr: &str,
    image: &[u8],
    opts: PrimaryOptions,
) -> Result<PrimaryEnd, PairSetupError> {
    let t = transport::connect(&settings.channel, addr).map_err(|source| {
        PairSetupError::Transport {
            what: format!(
                "connecting to the backup at {addr} ({})",
                settings.channel.transport.name()
            ),
            source,
        }
    })?;
    let hello = crate::hello(
        settings,
        image,
        &opts.guest,
        opts.guest_arg,
        &opts.pair.vm,
        opts.pair.generation,
    );
    let handshake = |source| PairSetupError::Channel {
        what: format!("pairing with the backup at {addr}"),
        source,
    };
    let lag_limit = Duration::from_micros(settings.channel.lag_limit_us);
    let (gate, outputs, gate_counters) = gate_channel();
    let io = |what: &str| {
        let what = what.to_string();
        move |source| PairSetupError::Io { what, source }
    };
    // Inline needs a readiness fd: a vCPU asleep in the wait port must wake
    // when an ACK arrives. Transports without one (shm, io_uring) get the
    // channel thread, which also does the handshake: a transport is driven
    // by one thread only (io_uring's rings are single-issuer).
    let sink = if settings.channel.threaded || t.readable_fd().is_none() {
        let (thread, app) =
            spawn_driver(t, settings, hello, outputs, &opts, &gate_counters).map_err(handshake)?;
        ChannelSink::threaded(app, thread, lag_limit)
    } else {
        let (primary, app) = Primary::establish(t, &settings.channel, hello).map_err(handshake)?;
        let driver = PrimaryDriver::new(
            primary,
            outputs,
            opts.pair,
            gate_counters.clone(),
            opts.give_up,
            FINISH_TIMEOUT,
        )
        .map_err(io("making the driver's wake-up socket pair"))?;
        ChannelSink::inline(app, driver, lag_limit)
    };
    Ok(PrimaryEnd {
        shared: sink.shared(),
        sink_stats: sink.stats(),
        sink,
        gate,
        gate_counters,
    })
}

/// Runs the handshake and then the driver on a channel thread pinned to
/// `channel.sender_core`; returns once the handshake is done.
fn spawn_driver(
    transport: Box<dyn ftvm_channel::transport::Transport>,
    settings: &Settings,
    hello: ftvm_channel::HelloParams,
    outputs: crossbeam_channel::Receiver<crate::gate::Submitted>,
    opts: &PrimaryOptions,
    counters: &Arc<GateCounters>,
) -> Result<(DriverThread, Appender), ChannelError> {
    let (tx, rx) = mpsc::channel();
    let finish = Arc::new(AtomicBool::new(false));
    let abandon = Arc::new(AtomicBool::new(false));
    let (fin, ab) = (finish.clone(), abandon.clone());
    let s = settings.channel.clone();
    let (pair, counters) = (opts.pair.clone(), counters.clone());
    let ab2 = abandon.clone();
    let outer = opts.give_up.clone();
    let give_up: GiveUp = Arc::new(move || outer() || ab2.load(Ordering::Relaxed));
    let thread = std::thread::Builder::new()
        .name("ftvm-primary-channel".into())
        .spawn(move || {
            if let Ok(core) = usize::try_from(s.sender_core) {
                ftvm_channel::pin_current_thread(core);
            }
            let (primary, app) = match Primary::establish(transport, &s, hello) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return Ok(());
                }
            };
            let mut driver =
                match PrimaryDriver::new(primary, outputs, pair, counters, give_up, FINISH_TIMEOUT)
                {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(ChannelError::Protocol {
                            peer: String::new(),
                            what: format!("making the driver's wake-up socket pair: {e}"),
                        }));
                        return Ok(());
                    }
                };
            let _ = tx.send(Ok((driver.shared().clone(), app)));
            let mut idler = ftvm_channel::idler_for(&s);
            let park = Duration::from_micros(s.park_us);
            loop {
                // Acquire: pairs with the Release stores of the sink (its
                // final checkpoint is in the ring before `finish` is set).
                if ab.load(Ordering::Acquire) {
                    return Ok(());
                }
                if fin.load(Ordering::Acquire) {
                    return driver.finish();
                }
                let work = driver.pump(PollPoint::Wait)?;
                if work == 0 && idler.is_parking() {
                    driver.wait(park);
                } else {
                    idler.idle(work);
                }
            }
        })
        .map_err(|e| ChannelError::Protocol {
            peer: String::new(),
            what: format!("starting the primary's channel thread: {e}"),
        })?;
    match rx.recv() {
        Ok(Ok((shared, app))) => Ok((
            DriverThread {
                thread: Some(thread),
                finish,
                abandon,
                shared,
            },
            app,
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ChannelError::Protocol {
            peer: String::new(),
            what: "the primary's channel thread ended during the handshake".into(),
        }),
    }
}

/// What the backup runs, for the handshake.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// The guest (`--guest`): must be the primary's.
    pub guest: String,
    /// The guest's argument (`--arg`): must be the primary's.
    pub guest_arg: u64,
    /// The VM name, if given (`--vm`): must be the primary's; else adopted.
    pub vm: Option<String>,
    /// Where the backup reports its phase (serve it before waiting).
    pub status: Arc<BackupStatus>,
}

/// The backup's end.
#[derive(Debug)]
pub struct BackupEnd {
    /// The VM's log source (owns the channel).
    pub source: ChannelSource,
    /// Replay counters.
    pub stats: Arc<SourceStats>,
    /// Peer address.
    pub peer: String,
    /// The primary's Hello: VM name and the generation the pair runs at.
    pub hello: Hello,
    /// Phase and failover timeline.
    pub status: Arc<BackupStatus>,
    /// Tells the primary why the backup stops.
    pub stopper: Stopper,
    released: Arc<AtomicU64>,
}

/// How a backup goes live when its primary is lost.
pub struct StandbyPlan {
    /// The arbiter.
    pub arbiter: Arc<dyn Arbiter>,
    /// This backup's name at the arbiter.
    pub candidate: String,
    /// Backoff while the arbiter is unreachable.
    pub retry: Retry,
    /// The service address to take over.
    pub service: ServiceTakeover,
    /// Re-send the replies whose release on the primary is unconfirmed.
    pub resend_replies: bool,
    /// The process is stopping.
    pub give_up: GiveUp,
    /// Once live, take spares as the next backup (`None`: run alone).
    pub reprotect: Option<crate::rejoin::ReprotectPlan>,
}

impl std::fmt::Debug for StandbyPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyPlan")
            .field("arbiter", &self.arbiter.url())
            .field("candidate", &self.candidate)
            .finish()
    }
}

impl BackupEnd {
    /// Wires the replay into `config`: the standby gate and — with a plan —
    /// the failover (the VM goes live where the log of a lost primary
    /// ends); returns the source to replay from (`RunMode::Replay`).
    pub fn install(self, config: &mut VmConfig, plan: Option<StandbyPlan>) -> ChannelSource {
        let (source, gate, failover) = self.parts(plan);
        config.gate = gate;
        config.failover = failover;
        source
    }

    /// [`BackupEnd::install`] into a VM that exists already: a spare that
    /// received the state of a live side (`Vm::attach_replay`).
    pub fn attach(self, vm: &mut Vm, plan: Option<StandbyPlan>) -> Result<(), VmError> {
        let (source, gate, failover) = self.parts(plan);
        vm.attach_replay(Box::new(source), gate, failover)
    }

    #[allow(clippy::type_complexity)]
    fn parts(
        self,
        plan: Option<StandbyPlan>,
    ) -> (
        ChannelSource,
        Box<dyn ftvm_vmm::OutputGate>,
        Option<Box<dyn ftvm_vmm::failover::Failover>>,
    ) {
        let resend = plan.as_ref().is_some_and(|p| p.resend_replies);
        let gate = Box::new(StandbyGate::new(self.released.clone(), resend));
        let failover = plan.map(|p| {
            Box::new(BackupFailover {
                pair: PairIdentity {
                    vm: self.hello.vm.clone(),
                    generation: self.hello.generation,
                    candidate: p.candidate,
                    arbiter: p.arbiter,
                    retry: p.retry,
                },
                service: p.service,
                status: self.status.clone(),
                give_up: p.give_up,
                reprotect: p.reprotect,
            }) as Box<dyn ftvm_vmm::failover::Failover>
        });
        (self.source, gate, failover)
    }
}

/// Waits up to `wait` for a primary on `listener`, handshakes (guest,
/// argument, image, settings, VM name must match) and sets up the source.
pub fn accept_backup(
    settings: &Settings,
    listener: &mut dyn Listener,
    image: &[u8],
    opts: &BackupOptions,
    wait: Duration,
) -> Result<BackupEnd, PairSetupError> {
    let addr = listener.local_addr();
    let start = Instant::now();
    let t = loop {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(PairSetupError::NoPrimary {
                addr,
                secs: wait.as_secs(),
            });
        }
        match listener.accept(left.min(Duration::from_millis(200))) {
            Ok(Some(t)) => break t,
            Ok(None) => {}
            Err(source) => {
                return Err(PairSetupError::Transport {
                    what: format!("accepting on {addr}"),
                    source,
                });
            }
        }
    };
    backup_end(settings, t, image, opts, 1)
}

/// The handshake with a primary over `t` and the backup's source; the
/// backup expects the log from `next_seq` (1, or a spare's join seq).
pub fn backup_end(
    settings: &Settings,
    t: Box<dyn ftvm_channel::transport::Transport>,
    image: &[u8],
    opts: &BackupOptions,
    next_seq: u64,
) -> Result<BackupEnd, PairSetupError> {
    let peer = t.peer();
    let hello = ftvm_channel::HelloParams {
        next_seq,
        ..crate::hello(
            settings,
            image,
            &opts.guest,
            opts.guest_arg,
            opts.vm.as_deref().unwrap_or(""),
            0,
        )
    };
    let handshake = |source| PairSetupError::Channel {
        what: format!("pairing with the primary {peer}"),
        source,
    };
    let status = opts.status.clone();
    let (source, primary_hello) = if settings.channel.threaded {
        // The receiver thread does the handshake: one thread drives a transport.
        let (handle, feed) =
            Backup::spawn_establish(t, &settings.channel, hello).map_err(handshake)?;
        let h = handle.peer_hello().unwrap_or_default();
        (ChannelSource::threaded(feed, handle, status.clone()), h)
    } else {
        let backup = Backup::establish(t, &settings.channel, hello).map_err(handshake)?;
        let h = backup.peer_hello().clone();
        (
            ChannelSource::inline(backup, &settings.channel, status.clone()),
            h,
        )
    };
    status.paired(&primary_hello.vm, primary_hello.generation);
    Ok(BackupEnd {
        stats: source.stats(),
        stopper: source.stopper(),
        released: source.released(),
        source,
        peer,
        hello: primary_hello,
        status,
    })
}

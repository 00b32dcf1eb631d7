//! Re-protection, the live side (issue 9, `docs/reprotect.md`): a primary
//! running with no backup takes a spare as its backup while it runs.
//!
//! ```text
//!  Unprotected ──join exit (seq N)──▶ Joining ──spare took the state,──▶ Protected
//!      ▲                                 │      channel handshaken
//!      └──── transfer failed ────────────┘
//! ```
//!
//! * The VM records from the start into a log ring that an unprotected
//!   driver drains and discards; outputs leave at once.
//! * The [`Reprotector`] thread offers the state to the spares
//!   ([`crate::spare::offer_state`]: live pre-copy over TCP). At the join
//!   exit it tells the driver the seq `N` the next entry gets: from then on
//!   entries stay in the ring and outputs from `N` on are held.
//! * When the spare took the state whole, the transfer's TCP connection
//!   becomes the pair's channel: the driver handshakes on it (Hello with
//!   `next_seq = N` and the generation the live side holds) and ships the
//!   ring from `N`. The spare replays from the join exit. The pair runs at
//!   the live side's generation; the next failure races for the next one.
//! * A transfer that fails after the join gives no backup: the spare has no
//!   channel, so it cannot go live, and the driver releases what it held.
//!   A handshake that fails is a lost backup (the spare may have finished
//!   its half): the driver races for the next generation, as always.
//! * Whenever the driver is unprotected again (its backup lost, the race
//!   won), the thread looks for a spare again: redundancy comes back by
//!   itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ftvm_arbiter::Arbiter;
use ftvm_channel::{Appender, transport::tcp::TcpTransport};
use ftvm_tuning::Settings;
use ftvm_vmm::VmControl;
use ftvm_vmm::transfer::PrecopyConfig;

use crate::driver::{
    DriverShared, Join, Joins, PairIdentity, PrimaryDriver, Protection, TransferDone,
    TransferRunning, notice,
};
use crate::gate::gate_channel;
use crate::golive::unix_us;
use crate::pair::{FINISH_TIMEOUT, GiveUp, PairSetupError, PrimaryEnd, PrimaryOptions};
use crate::sink::ChannelSink;

/// Sets up a primary with no backup that spares can join: the VM's sink
/// and gate (as for a pair) and the [`Reprotector`] to start once the VM
/// exists. The channel runs inline over tcp (the transfer's connection).
pub fn unprotected_primary(
    settings: &Settings,
    image: &[u8],
    opts: PrimaryOptions,
) -> Result<(PrimaryEnd, Reprotector), PairSetupError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| PairSetupError::Io { what, source }
    };
    let (app, consumer) = Appender::unshipped(settings.channel.ring_bytes).map_err(|source| {
        PairSetupError::Channel {
            what: "making the log ring".into(),
            source,
        }
    })?;
    let (gate, outputs, gate_counters) = gate_channel();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut channel = settings.channel.clone();
    channel.transport = ftvm_tuning::TransportKind::Tcp;
    let hello = crate::hello(
        settings,
        image,
        &opts.guest,
        opts.guest_arg,
        &opts.pair.vm,
        opts.pair.generation,
    );
    let vm = opts.pair.vm.clone();
    let arbiter = opts.pair.arbiter.clone();
    let driver = PrimaryDriver::unprotected(
        consumer,
        outputs,
        opts.pair,
        gate_counters.clone(),
        opts.give_up.clone(),
        FINISH_TIMEOUT,
        Joins {
            rx,
            channel: channel.clone(),
            hello,
        },
    )
    .map_err(io("making the driver's wake-up socket pair"))?;
    let lag_limit = Duration::from_micros(settings.channel.lag_limit_us);
    let sink = ChannelSink::inline(app, driver, lag_limit);
    let shared = sink.shared();
    let end = PrimaryEnd {
        shared: shared.clone(),
        sink_stats: sink.stats(),
        sink,
        gate,
        gate_counters,
    };
    Ok((
        end,
        Reprotector {
            tx,
            shared,
            socket_buffer_bytes: channel.socket_buffer_bytes,
            vm,
            arbiter,
            give_up: opts.give_up,
        },
    ))
}

/// Where the live side looks for spares.
#[derive(Clone, Debug, Default)]
pub struct SpareSources {
    /// `--spare ADDR[,ADDR…]`, tried first, in order.
    pub list: Vec<String>,
    /// Also the spares registered at the arbiter under the VM's name.
    pub registered: bool,
}

/// The live side's re-protection thread (module doc).
pub struct Reprotector {
    tx: Sender<Join>,
    shared: Arc<DriverShared>,
    socket_buffer_bytes: usize,
    vm: String,
    arbiter: Arc<dyn Arbiter>,
    give_up: GiveUp,
}

impl std::fmt::Debug for Reprotector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reprotector").field("vm", &self.vm).finish()
    }
}

/// How long to wait between rounds over the spares.
const RETRY: Duration = Duration::from_secs(1);
/// Connecting to a spare, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A spare that takes nothing for this long is skipped.
const STALL: Duration = Duration::from_secs(5);

impl Reprotector {
    /// Starts the thread over the running VM behind `control`.
    pub fn spawn(
        self,
        control: VmControl,
        spares: SpareSources,
        precopy: PrecopyConfig,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ftvm-reprotect".into())
            .spawn(move || self.run(&control, &spares, &precopy))
    }

    fn candidates(&self, spares: &SpareSources) -> Vec<String> {
        let mut all = spares.list.clone();
        if spares.registered {
            match self.arbiter.spares(&self.vm) {
                Ok(found) => all.extend(found.into_iter().filter(|s| !spares.list.contains(s))),
                Err(e) => notice(
                    "primary",
                    &format!(
                        "looking up the spares of VM {:?}: {}",
                        self.vm,
                        ftvm_vmm::error_chain(&e)
                    ),
                ),
            }
        }
        all
    }

    fn run(self, control: &VmControl, spares: &SpareSources, precopy: &PrecopyConfig) {
        let mut attempt = precopy.attempt;
        let mut said_none = false;
        while !(self.give_up)() {
            match self.shared.protection() {
                Protection::Unprotected => {}
                Protection::Lost | Protection::Finished => return,
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let list = self.candidates(spares);
            if list.is_empty() && !said_none {
                notice(
                    "primary",
                    "UNPROTECTED and no spare known yet (--spare, or a spare registered at the arbiter)",
                );
                said_none = true;
            }
            for spare in &list {
                if (self.give_up)() {
                    return;
                }
                if self.offer(control, spare, precopy, attempt) {
                    said_none = false;
                    break;
                }
                attempt += 1;
            }
            if self.shared.protection() == Protection::Unprotected {
                std::thread::sleep(RETRY);
            }
        }
    }

    /// One attempt at `spare`; true when the pair is protected again.
    fn offer(
        &self,
        control: &VmControl,
        spare: &str,
        precopy: &PrecopyConfig,
        attempt: u64,
    ) -> bool {
        let joined = Arc::new(AtomicBool::new(false));
        let cfg = PrecopyConfig {
            attempt,
            ..precopy.clone()
        };
        self.shared.edit_transfer(|t| {
            t.in_progress = Some(TransferRunning {
                spare: spare.to_string(),
                attempt,
                started_unix_us: unix_us(),
            });
        });
        let (tx, shared, j) = (self.tx.clone(), self.shared.clone(), joined.clone());
        let offered = crate::spare::offer_state(
            control,
            &[spare.to_string()],
            CONNECT_TIMEOUT,
            STALL,
            self.socket_buffer_bytes,
            &cfg,
            move |_| {
                let (tx, shared, j) = (tx.clone(), shared.clone(), j.clone());
                move |b: &mut ftvm_vmm::ExitBoundary<'_>| {
                    let _ = tx.send(Join::At(b.next_seq()));
                    // Release: the driver reads it after the message.
                    j.store(true, Ordering::Release);
                    shared.kick();
                }
            },
        );
        self.shared.edit_transfer(|t| {
            t.in_progress = None;
            t.last = Some(match &offered {
                Ok(o) => TransferDone {
                    spare: spare.to_string(),
                    ok: true,
                    error: None,
                    rounds: o.report.rounds.len(),
                    bytes: o.report.bytes,
                    total_ms: o.report.total.as_secs_f64() * 1e3,
                    pause_ms: o.report.pause.map(|p| p.as_secs_f64() * 1e3),
                    join_seq: Some(o.report.next_seq),
                    ended_unix_us: unix_us(),
                },
                Err(e) => TransferDone {
                    spare: spare.to_string(),
                    ok: false,
                    error: Some(ftvm_vmm::error_chain(e)),
                    rounds: 0,
                    bytes: 0,
                    total_ms: 0.0,
                    pause_ms: None,
                    join_seq: None,
                    ended_unix_us: unix_us(),
                },
            });
        });
        let step = match offered {
            Ok(o) => {
                let r = &o.report;
                notice(
                    "primary",
                    &format!(
                        "state transferred to the spare at {spare}: {} rounds, {} bytes in {:.0} ms, pause {:.2} ms, join at exit {} (seq {}), digest {:016x}",
                        r.rounds.len(),
                        r.bytes,
                        r.total.as_secs_f64() * 1e3,
                        r.pause.unwrap_or_default().as_secs_f64() * 1e3,
                        r.ordinal,
                        r.next_seq,
                        r.digest.digest
                    ),
                );
                // The driver handshakes on the vCPU thread: wait here until
                // the spare's Hello is in (it sends it once it has the whole
                // state), so that the handshake does not wait on the link.
                match hello_arrived(&o.stream, STALL).and_then(|()| {
                    TcpTransport::from_stream(o.stream, self.socket_buffer_bytes)
                        .map_err(|e| ftvm_vmm::error_chain(&e))
                }) {
                    Ok(t) => Join::Ready(Box::new(t), spare.to_string()),
                    Err(why) => Join::Failed(spare.to_string(), why),
                }
            }
            Err(e) => {
                let why = ftvm_vmm::error_chain(&e);
                // Acquire: pairs with the Release at the join.
                if !joined.load(Ordering::Acquire) {
                    notice("primary", &format!("spare {spare} not joined: {why}"));
                    self.shared.edit_transfer(|t| t.failed += 1);
                    return false;
                }
                Join::Failed(spare.to_string(), why)
            }
        };
        let _ = self.tx.send(step);
        self.shared.kick();
        // The driver takes the step at the VM's next exit or WAIT pass.
        let deadline = Instant::now() + STALL;
        while self.shared.protection() == Protection::Joining && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let protected = self.shared.protection() == Protection::Protected;
        self.shared.edit_transfer(|t| {
            if protected {
                t.joined += 1;
            } else {
                t.failed += 1;
            }
        });
        protected
    }
}

/// Waits up to `limit` for the first bytes from the spare (its Hello) on
/// `stream`, without taking them.
fn hello_arrived(stream: &std::net::TcpStream, limit: Duration) -> Result<(), String> {
    let gone = |e: std::io::Error| format!("waiting for the spare's hello: {e}");
    stream.set_read_timeout(Some(limit)).map_err(gone)?;
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    stream.set_read_timeout(None).map_err(gone)?;
    match r {
        Ok(0) => Err("the spare closed the connection before its hello".into()),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "no hello from the spare within {} s of the transfer",
                limit.as_secs()
            ))
        }
        Err(e) => Err(gone(e)),
    }
}

/// What a backup needs to re-protect itself once it has gone live
/// (`ftvm backup --spare`/`--find-spares`): the same unprotected driver and
/// re-protection thread as [`unprotected_primary`], made at go-live.
#[derive(Clone)]
pub struct ReprotectPlan {
    /// The pair's settings (the joined pair runs over tcp).
    pub settings: Settings,
    /// The guest image (its digest goes into the new pair's Hello).
    pub image: Arc<[u8]>,
    /// The guest (`--guest`).
    pub guest: String,
    /// The guest's argument (`--arg`).
    pub guest_arg: u64,
    /// Where to look for spares.
    pub spares: SpareSources,
    /// Pre-copy settings of each transfer.
    pub precopy: PrecopyConfig,
    /// The VM's control, set by the caller once the VM exists (the plan
    /// runs inside that VM, on its vCPU thread).
    pub control: Arc<std::sync::OnceLock<VmControl>>,
}

impl std::fmt::Debug for ReprotectPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReprotectPlan")
            .field("guest", &self.guest)
            .field("spares", &self.spares)
            .finish()
    }
}

impl ReprotectPlan {
    /// At go-live, `pair` at the generation just won: the unprotected
    /// driver the VM records into from here (its sink and gate) and the
    /// re-protection thread, started.
    pub(crate) fn start(self, pair: PairIdentity, give_up: GiveUp) -> Result<PrimaryEnd, String> {
        let control = self
            .control
            .get()
            .cloned()
            .ok_or("the VM's control was never handed to the re-protection plan")?;
        let opts = PrimaryOptions {
            pair,
            guest: self.guest,
            guest_arg: self.guest_arg,
            give_up,
        };
        let (end, reprotector) = unprotected_primary(&self.settings, &self.image, opts)
            .map_err(|e| ftvm_vmm::error_chain(&e))?;
        reprotector
            .spawn(control, self.spares, self.precopy)
            .map_err(|e| format!("starting the re-protection thread: {e}"))?;
        Ok(end)
    }
}

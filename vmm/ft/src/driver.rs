//! The primary's driver: the one place where the output rule and the
//! reaction to a lost backup live (docs/failover.md).
//!
//! ```text
//!              backup lost (EOF, reset, corrupt frame, silence, Stop frame)
//!  Protected ──────────────────────────────────────────────▶ Arbitrating
//!      │                                                  won N+1 │  │ lost N+1
//!      │ orderly stop: ship, last ACK, goodbye                    ▼  ▼
//!      ▼                                            Unprotected    Lost
//!   Finished ◀───────────────── orderly stop ───────────┘     (stop at once,
//!                                                               release nothing)
//! ```
//!
//! * **Protected**: the [`Primary`] end ships the log; each output waits in
//!   the [`AckGate`] until [`PrimaryDriver::releasable`] — the fence — lets
//!   it go: an ACK covers its entry *and* the ACK lease is valid.
//! * **Arbitrating**: the backup is gone. Nothing is released; the driver
//!   races for generation N+1 at the arbiter, retrying while it is
//!   unreachable ("it waits until it can"), until it wins or loses.
//! * **Unprotected**: won. Every held output is released, entries are
//!   drained from the log ring and discarded (nothing is shipped), new
//!   outputs leave at once — in order, through the same gate.
//! * **Lost**: another side holds N+1 (the backup went live). The driver
//!   releases nothing and every further call is an error that stops the VM.
//!
//! The same driver runs in both modes: inline, owned by the VM's sink and
//! polled at every exit and WAIT pass ([`EventSource`]); threaded, on a
//! channel thread of its own ([`crate::sink`]).

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ftvm_arbiter::{Arbiter, Decision, Retry};
use ftvm_channel::{AckGate, ChannelError, Primary, PrimaryStats};
use ftvm_ring::log::Consumer;
use ftvm_vmm::{Counter, EventSource, EventSourceError, PollPoint, Release};

use crate::breakdown::ShipMarks;
use crate::gate::{GateCounters, Submitted};
use crate::pair::GiveUp;

/// Where a pair stands, as the primary's driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Protection {
    /// A backup replays the log; outputs wait for its ACK.
    Protected = 1,
    /// The backup is lost; racing for the next generation.
    Arbitrating = 2,
    /// Won the next generation: running alone, outputs leave at once.
    Unprotected = 3,
    /// Another side won: stopped, nothing released.
    Lost = 4,
    /// Stopped in order.
    Finished = 5,
    /// Unprotected, and a spare is taking the state: outputs from the join
    /// exit on wait for it.
    Joining = 6,
}

impl Protection {
    /// Lower-case name (status, messages).
    pub fn name(self) -> &'static str {
        match self {
            Protection::Protected => "protected",
            Protection::Arbitrating => "arbitrating",
            Protection::Unprotected => "unprotected",
            Protection::Lost => "lost",
            Protection::Finished => "finished",
            Protection::Joining => "joining",
        }
    }

    fn from_u8(v: u8) -> Protection {
        match v {
            1 => Protection::Protected,
            2 => Protection::Arbitrating,
            3 => Protection::Unprotected,
            4 => Protection::Lost,
            6 => Protection::Joining,
            _ => Protection::Finished,
        }
    }
}

/// Who this side is at the arbiter, and the generation the pair runs at.
#[derive(Clone, Debug)]
pub struct PairIdentity {
    /// Name of the protected VM (the arbiter's key).
    pub vm: String,
    /// The generation the pair runs at (the next failure races for +1).
    pub generation: u64,
    /// This side's name at the arbiter (shown to the loser).
    pub candidate: String,
    /// The arbiter.
    pub arbiter: Arc<dyn Arbiter>,
    /// Backoff while the arbiter is unreachable.
    pub retry: Retry,
}

/// What the driver publishes for the status endpoint, the sink and tests.
#[derive(Debug)]
pub struct DriverShared {
    /// The VM's name (for events).
    vm: String,
    state: AtomicU8,
    generation: Counter,
    acked: Counter,
    replayed: Counter,
    replay_ordinal: Counter,
    last_sent: Counter,
    /// Time from detecting the loss to the arbiter's answer (µs).
    arbitration_us: Counter,
    /// When the backup was found lost, and when the arbiter answered (Unix µs).
    lost_unix_us: Counter,
    decided_unix_us: Counter,
    /// Channel counters over every backup this primary had (`ChannelTotals`).
    entries_sent: Counter,
    entry_bytes_sent: Counter,
    acks: Counter,
    /// Backups lost, and races for the next generation won after a loss.
    backup_losses: Counter,
    races_won: Counter,
    /// Why the backup was lost / who won, for messages.
    note: Mutex<String>,
    stats: Mutex<Option<PrimaryStats>>,
    /// State transfers to spares (`crate::rejoin`).
    transfer: Mutex<TransferView>,
    /// Written on every state change (wakes a WAIT in threaded mode).
    kick_tx: UnixDatagram,
    kick_rx: UnixDatagram,
}

impl DriverShared {
    pub(crate) fn new(
        vm: &str,
        generation: u64,
        protection: Protection,
    ) -> std::io::Result<DriverShared> {
        let (kick_tx, kick_rx) = UnixDatagram::pair()?;
        kick_tx.set_nonblocking(true)?;
        kick_rx.set_nonblocking(true)?;
        let shared = DriverShared {
            vm: vm.to_string(),
            state: AtomicU8::new(protection as u8),
            generation: Counter::new(generation),
            acked: Counter::new(0),
            replayed: Counter::new(0),
            replay_ordinal: Counter::new(0),
            last_sent: Counter::new(0),
            arbitration_us: Counter::new(0),
            lost_unix_us: Counter::new(0),
            decided_unix_us: Counter::new(0),
            entries_sent: Counter::new(0),
            entry_bytes_sent: Counter::new(0),
            acks: Counter::new(0),
            backup_losses: Counter::new(0),
            races_won: Counter::new(0),
            note: Mutex::new(String::new()),
            stats: Mutex::new(None),
            transfer: Mutex::new(TransferView::default()),
            kick_tx,
            kick_rx,
        };
        // The first state: protected (connected) or unprotected (no backup yet).
        crate::events::state_changed("primary", protection.name(), vm, generation, "");
        Ok(shared)
    }

    /// The VM's name.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// Where the pair stands.
    pub fn protection(&self) -> Protection {
        // Acquire: pairs with the Release in `set_state`; the note and the
        // generation written before it are visible.
        Protection::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The generation this side runs at.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Highest seq the backup ACKed.
    pub fn acked_seq(&self) -> u64 {
        self.acked.get()
    }

    /// The backup's replay position (seq, exit ordinal).
    pub fn replay(&self) -> (u64, u64) {
        (self.replayed.get(), self.replay_ordinal.get())
    }

    /// Highest seq handed to the transport.
    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent.get()
    }

    /// Time the last arbitration took (µs; 0: none yet).
    pub fn arbitration_us(&self) -> u64 {
        self.arbitration_us.get()
    }

    /// When the backup was found lost and when the arbiter answered (Unix
    /// µs; 0: not yet).
    pub fn loss_times(&self) -> (u64, u64) {
        (self.lost_unix_us.get(), self.decided_unix_us.get())
    }

    /// Entries and bytes shipped and ACKs received, added up over every
    /// backup this primary had (a re-protected pair goes on counting).
    pub fn channel_totals(&self) -> ChannelTotals {
        ChannelTotals {
            entries_sent: self.entries_sent.get(),
            entry_bytes_sent: self.entry_bytes_sent.get(),
            acks: self.acks.get(),
        }
    }

    /// Backups lost so far.
    pub fn backup_losses(&self) -> u64 {
        self.backup_losses.get()
    }

    /// Races for the next generation won after losing a backup.
    pub fn races_won(&self) -> u64 {
        self.races_won.get()
    }

    /// Why the backup was lost, who won: the last state change's story.
    pub fn note(&self) -> String {
        self.note
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The channel's counters once it finished in order.
    pub fn channel_stats(&self) -> Option<PrimaryStats> {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// State transfers to spares: the one in progress, the last one, counts.
    pub fn transfer(&self) -> TransferView {
        self.transfer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn edit_transfer(&self, f: impl FnOnce(&mut TransferView)) {
        f(&mut self.transfer.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Becomes readable after a state change (see [`DriverShared::drain_kick`]).
    pub fn kick_fd(&self) -> RawFd {
        self.kick_rx.as_raw_fd()
    }

    /// Consumes pending kicks.
    pub fn drain_kick(&self) {
        let mut b = [0u8; 16];
        while self.kick_rx.recv(&mut b).is_ok() {}
    }

    /// Wakes the driver (a WAIT asleep on [`DriverShared::kick_fd`]).
    pub(crate) fn kick(&self) {
        // A full socket buffer already holds a kick.
        let _ = self.kick_tx.send(&[1]);
    }

    fn set_state(&self, p: Protection, note: Option<String>) {
        if let Some(n) = note {
            *self.note.lock().unwrap_or_else(PoisonError::into_inner) = n;
        }
        // Release: publishes the note; pairs with the Acquire in `protection`.
        self.state.store(p as u8, Ordering::Release);
        crate::events::state_changed(
            "primary",
            p.name(),
            &self.vm,
            self.generation(),
            &self.note(),
        );
        // A full socket buffer already holds a kick.
        let _ = self.kick_tx.send(&[1]);
    }

    /// Publishes `p`'s position and counters; `before` is what the
    /// backups before it shipped (the totals stay monotonic).
    fn publish(&self, p: &Primary, before: ChannelTotals) {
        let (replayed, ordinal) = p.replay();
        let now = before.plus(&p.stats());
        self.acked.set(p.acked_seq());
        self.replayed.set(replayed);
        self.replay_ordinal.set(ordinal);
        self.last_sent.set(p.last_sent_seq());
        self.entries_sent.set(now.entries_sent);
        self.entry_bytes_sent.set(now.entry_bytes_sent);
        self.acks.set(now.acks);
    }
}

/// Channel counters of a primary over all its backups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelTotals {
    /// Log entries handed to the transport.
    pub entries_sent: u64,
    /// Log bytes handed to the transport.
    pub entry_bytes_sent: u64,
    /// ACK frames received.
    pub acks: u64,
}

impl ChannelTotals {
    fn plus(self, s: &PrimaryStats) -> ChannelTotals {
        ChannelTotals {
            entries_sent: self.entries_sent + s.entries_sent,
            entry_bytes_sent: self.entry_bytes_sent + s.entry_bytes_sent,
            acks: self.acks + s.acks,
        }
    }
}

/// State transfers from this side to spares, for `ftvm status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TransferView {
    /// The transfer running now, if any.
    pub in_progress: Option<TransferRunning>,
    /// The last transfer that ended, either way.
    pub last: Option<TransferDone>,
    /// Transfers that gave a backup.
    pub joined: u64,
    /// Transfers that did not (spare dead, stalled, refused, cut).
    pub failed: u64,
}

/// A transfer under way.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TransferRunning {
    /// The spare (`host:port`).
    pub spare: String,
    /// Attempt number (the spare refuses a stale one).
    pub attempt: u64,
    /// When it started (Unix µs).
    pub started_unix_us: u64,
}

/// A transfer that ended.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TransferDone {
    /// The spare (`host:port`).
    pub spare: String,
    /// The spare took the state whole (the pair may still fail to form).
    pub ok: bool,
    /// What went wrong, when not ok.
    pub error: Option<String>,
    /// Pre-copy rounds (with the stop-and-copy).
    pub rounds: usize,
    /// Bytes sent.
    pub bytes: u64,
    /// Whole transfer, ms.
    pub total_ms: f64,
    /// The vCPU's pause, ms.
    pub pause_ms: Option<f64>,
    /// The seq the joined log starts at.
    pub join_seq: Option<u64>,
    /// When it ended (Unix µs).
    pub ended_unix_us: u64,
}

/// The driver stopped the VM.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Another side won the generation this side raced for.
    #[error(
        "lost generation {generation} of VM {vm:?} to {holder} after losing the backup ({cause}); stopping at once, {held} held outputs not released"
    )]
    Lost {
        /// The VM.
        vm: String,
        /// The generation raced for.
        generation: u64,
        /// Its holder.
        holder: String,
        /// How the backup was lost.
        cause: String,
        /// Outputs left unreleased.
        held: usize,
    },
    /// The arbiter could not decide (and this side stopped waiting), or
    /// refused: nothing was released.
    #[error(
        "the backup was lost ({cause}) and generation {generation} of VM {vm:?} was not decided ({arbiter}); stopping, {held} held outputs not released"
    )]
    Undecided {
        /// The VM.
        vm: String,
        /// The generation raced for.
        generation: u64,
        /// How the backup was lost.
        cause: String,
        /// Outputs left unreleased.
        held: usize,
        /// The arbiter's last answer.
        arbiter: String,
    },
}

/// The primary's driver (module doc).
pub struct PrimaryDriver {
    state: State,
    gate: AckGate<(Instant, Release)>,
    outputs: Receiver<Submitted>,
    pair: PairIdentity,
    shared: Arc<DriverShared>,
    counters: Arc<GateCounters>,
    /// True once the process is stopping: arbitration stops retrying.
    give_up: GiveUp,
    finish_timeout: Duration,
    /// How the backup was lost (for the Lost error).
    cause: String,
    /// Spares joining an unprotected driver (`crate::rejoin`).
    joins: Option<Joins>,
    /// What the backups before the current one shipped.
    shipped_before: ChannelTotals,
    /// When each send went out (the output-rule breakdown).
    ship_marks: ShipMarks,
}

/// What an unprotected driver needs to take a spare as its backup.
pub(crate) struct Joins {
    /// Messages of the re-protector.
    pub(crate) rx: Receiver<Join>,
    /// The channel settings of the new pair.
    pub(crate) channel: ftvm_tuning::ChannelSettings,
    /// The Hello the new pair starts with (seq and generation set at the join).
    pub(crate) hello: ftvm_channel::HelloParams,
}

/// A step of a spare's join, from the re-protector to the driver.
pub(crate) enum Join {
    /// The join exit was just handled; the next entry gets this seq: from
    /// it on, entries are kept for the spare and outputs wait for its ACK.
    At(u64),
    /// The spare took the state: the channel to it, to handshake on.
    Ready(Box<dyn ftvm_channel::transport::Transport>, String),
    /// The transfer failed after the join: no backup came of it (the
    /// spare, what went wrong).
    Failed(String, String),
}

enum State {
    Protected(Box<Primary>),
    Unprotected(Consumer),
    /// A spare is taking the state; entries from seq `at` on stay in the ring.
    Joining {
        consumer: Consumer,
        at: u64,
    },
    Lost {
        holder: String,
        generation: u64,
    },
    Undecided {
        arbiter: String,
    },
    Finished,
}

impl std::fmt::Debug for PrimaryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryDriver")
            .field("protection", &self.shared.protection())
            .field("generation", &self.pair.generation)
            .field("held", &self.gate.held())
            .finish()
    }
}

pub(crate) use crate::events::notice;

impl PrimaryDriver {
    /// A protected driver over the connected `primary`, taking outputs from
    /// the VM's gate through `outputs`.
    pub(crate) fn new(
        primary: Primary,
        outputs: Receiver<Submitted>,
        pair: PairIdentity,
        counters: Arc<GateCounters>,
        give_up: GiveUp,
        finish_timeout: Duration,
    ) -> std::io::Result<PrimaryDriver> {
        let shared = Arc::new(DriverShared::new(
            &pair.vm,
            pair.generation,
            Protection::Protected,
        )?);
        shared.publish(&primary, ChannelTotals::default());
        Ok(PrimaryDriver {
            state: State::Protected(Box::new(primary)),
            gate: AckGate::new(),
            outputs,
            pair,
            shared,
            counters,
            give_up,
            finish_timeout,
            cause: String::new(),
            joins: None,
            shipped_before: ChannelTotals::default(),
            ship_marks: ShipMarks::new(),
        })
    }

    /// A driver with no backup yet (outputs leave at once, entries are
    /// drained and discarded) that takes spares through `joins`.
    pub(crate) fn unprotected(
        consumer: Consumer,
        outputs: Receiver<Submitted>,
        pair: PairIdentity,
        counters: Arc<GateCounters>,
        give_up: GiveUp,
        finish_timeout: Duration,
        joins: Joins,
    ) -> std::io::Result<PrimaryDriver> {
        let shared = Arc::new(DriverShared::new(
            &pair.vm,
            pair.generation,
            Protection::Unprotected,
        )?);
        Ok(PrimaryDriver {
            state: State::Unprotected(consumer),
            gate: AckGate::new(),
            outputs,
            pair,
            shared,
            counters,
            give_up,
            finish_timeout,
            cause: String::new(),
            joins: Some(joins),
            shipped_before: ChannelTotals::default(),
            ship_marks: ShipMarks::new(),
        })
    }

    /// The re-protector's messages, in order (module `crate::rejoin`).
    fn take_joins(&mut self) -> Result<(), DriverError> {
        let Some(joins) = &self.joins else {
            return Ok(());
        };
        if let State::Unprotected(_) | State::Joining { .. } = self.state {
            // The kick is the wait fd only in these states; a protected
            // pump (every exit) pays no syscall for it.
            self.shared.drain_kick();
        }
        while let Ok(msg) = joins.rx.try_recv() {
            let state = std::mem::replace(&mut self.state, State::Finished);
            self.state = match (msg, state) {
                (Join::At(at), State::Unprotected(mut consumer)) => {
                    // Discard what precedes the join; the spare's log starts at `at`.
                    let chunk = consumer.read();
                    let before: usize = chunk
                        .records()
                        .take_while(|r| ftvm_wire::raw::seq(r) < at)
                        .map(<[u8]>::len)
                        .sum();
                    chunk.release_up_to(before);
                    let msg = format!("a spare is joining at seq {at}");
                    self.shared.set_state(Protection::Joining, Some(msg));
                    State::Joining { consumer, at }
                }
                (Join::Ready(t, spare), State::Joining { consumer, at }) => {
                    let hello = ftvm_channel::HelloParams {
                        next_seq: at,
                        generation: self.pair.generation,
                        ..joins.hello.clone()
                    };
                    match Primary::join(t, &joins.channel, hello, consumer) {
                        Ok(p) => {
                            self.shared.publish(&p, self.shipped_before);
                            let msg = format!(
                                "PROTECTED again by the spare at {spare}: VM {:?} at generation {}, log from seq {at}",
                                self.pair.vm, self.pair.generation
                            );
                            notice("primary", &msg);
                            self.shared.set_state(Protection::Protected, Some(msg));
                            State::Protected(Box::new(p))
                        }
                        Err(failed) => {
                            let (e, consumer) = *failed;
                            // The spare may have finished its half: it could
                            // race for the next generation. Race too.
                            self.state = State::Joining { consumer, at };
                            return self.backup_lost(e);
                        }
                    }
                }
                (Join::Failed(spare, why), State::Joining { consumer, .. }) => {
                    // No channel, no backup: the spare cannot go live.
                    let msg = format!(
                        "spare {spare} not joined after the join exit ({why}): released what was held, running on UNPROTECTED"
                    );
                    notice("primary", &msg);
                    self.shared.set_state(Protection::Unprotected, Some(msg));
                    State::Unprotected(consumer)
                }
                // Out of step (a message for a join that already ended).
                (_, state) => state,
            };
        }
        Ok(())
    }

    /// What the driver publishes.
    pub fn shared(&self) -> &Arc<DriverShared> {
        &self.shared
    }

    /// One round: take new outputs, drive the channel (`at` picks the cheap
    /// exit-time round or the full one), react to a lost backup, release
    /// what the fence allows. Returns the work done.
    pub fn pump(&mut self, at: PollPoint) -> Result<usize, DriverError> {
        self.take_outputs();
        self.take_joins()?;
        let mut work = 0;
        match &mut self.state {
            State::Protected(p) => {
                let polled = match at {
                    PollPoint::Exit => p.poll_exit(),
                    PollPoint::Wait => p.poll(),
                };
                match polled {
                    Ok(w) => {
                        work += w;
                        self.shared.publish(p, self.shipped_before);
                        self.ship_marks.shipped(p.last_sent_seq());
                    }
                    Err(e) => self.backup_lost(e)?,
                }
            }
            State::Unprotected(consumer) => {
                // Nothing is shipped: drain the ring so the VM never waits.
                let chunk = consumer.read();
                work += chunk.len();
                chunk.release_all();
            }
            // Entries wait in the ring for the spare's channel.
            State::Joining { .. } => {}
            State::Lost { .. } | State::Undecided { .. } => return Err(self.stopped_error()),
            State::Finished => {}
        }
        work += self.release(Instant::now());
        Ok(work)
    }

    /// Blocks up to `timeout` for channel traffic (the park idle strategy of
    /// a threaded driver); returns at once when not protected.
    pub(crate) fn wait(&mut self, timeout: Duration) {
        if let State::Protected(p) = &mut self.state {
            // A failure shows again in the next pump, which handles it.
            let _ = p.wait(timeout);
        }
    }

    /// **The fence**: the highest seq whose output may leave now, or `None`
    /// when nothing may. Protected: what the backup ACKed, while the ACK
    /// lease holds (a primary that was paused past it must not trust the
    /// ACKs it holds: the backup may be live by now). Unprotected: every
    /// output taken so far — not "all": the gate keeps the highest bound it
    /// was given, so a bound beyond what exists would let the outputs of a
    /// later join or pair leave unACKed. Arbitrating, lost or finished:
    /// nothing.
    fn releasable(&self, now: Instant) -> Option<u64> {
        match &self.state {
            State::Protected(p) if p.lease_valid(now) => Some(p.acked_seq()),
            State::Unprotected(_) => Some(self.gate.last_held()),
            // What precedes the join leaves; the rest waits for the spare.
            State::Joining { at, .. } => Some(at - 1),
            _ => None,
        }
    }

    /// Releases, in order, what [`PrimaryDriver::releasable`] allows.
    fn release(&mut self, now: Instant) -> usize {
        let Some(bound) = self.releasable(now) else {
            return 0;
        };
        let mut last = None;
        let latency = &self.counters.release_latency;
        let breakdown = &self.counters.breakdown;
        let marks = &mut self.ship_marks;
        let protected = matches!(self.state, State::Protected(_));
        let n = self.gate.release(bound, |seq, (submitted, release)| {
            let shipped = marks.when(seq).filter(|_| protected);
            let start = Instant::now();
            release();
            latency.observe(now.saturating_duration_since(submitted));
            if let Some(shipped) = shipped {
                breakdown.observe(
                    shipped.saturating_duration_since(submitted),
                    now.saturating_duration_since(shipped),
                    start.elapsed(),
                );
            }
            last = Some(seq);
        });
        if n > 0 {
            self.counters.released.add(n as u64);
        }
        if let (Some(seq), State::Protected(p)) = (last, &mut self.state) {
            p.report_released(seq);
        }
        n
    }

    fn take_outputs(&mut self) {
        while let Ok((seq, submitted, release)) = self.outputs.try_recv() {
            // The VM submits outputs in seq order; a violation would be a
            // VMM bug, and such an output is dropped unreleased (never early).
            let _ = self.gate.hold(seq, (submitted, release));
        }
    }

    fn stopped_error(&self) -> DriverError {
        match &self.state {
            State::Lost { holder, generation } => DriverError::Lost {
                vm: self.pair.vm.clone(),
                generation: *generation,
                holder: holder.clone(),
                cause: self.cause.clone(),
                held: self.gate.held(),
            },
            State::Undecided { arbiter } => DriverError::Undecided {
                vm: self.pair.vm.clone(),
                generation: self.pair.generation + 1,
                cause: self.cause.clone(),
                held: self.gate.held(),
                arbiter: arbiter.clone(),
            },
            // Only called in the two states above.
            _ => DriverError::Undecided {
                vm: self.pair.vm.clone(),
                generation: self.pair.generation + 1,
                cause: self.cause.clone(),
                held: self.gate.held(),
                arbiter: "not consulted".into(),
            },
        }
    }

    /// Protected → Arbitrating → Unprotected | Lost.
    fn backup_lost(&mut self, error: ChannelError) -> Result<(), DriverError> {
        let consumer = match std::mem::replace(
            &mut self.state,
            State::Undecided {
                arbiter: "arbitrating".into(),
            },
        ) {
            State::Protected(p) => {
                self.shipped_before = self.shipped_before.plus(&p.stats());
                p.into_consumer()
            }
            State::Joining { consumer, .. } => consumer,
            other => {
                self.state = other;
                return Ok(());
            }
        };
        self.shared.lost_unix_us.set(crate::golive::unix_us());
        self.shared.backup_losses.add(1);
        self.cause = ftvm_vmm::error_chain(&error);
        let generation = self.pair.generation + 1;
        self.take_outputs();
        self.shared.set_state(
            Protection::Arbitrating,
            Some(format!("backup lost: {}", self.cause)),
        );
        notice(
            "primary",
            &format!(
                "backup lost: {}; {} outputs held; racing for generation {generation} of VM {:?} at {}",
                self.cause,
                self.gate.held(),
                self.pair.vm,
                self.pair.arbiter.url()
            ),
        );
        let started = Instant::now();
        let give_up = self.give_up.clone();
        let decision = ftvm_arbiter::test_and_set_with_retry(
            self.pair.arbiter.as_ref(),
            &self.pair.vm,
            generation,
            &self.pair.candidate,
            &self.pair.retry,
            &|| give_up(),
            &mut |e, delay| {
                notice(
                    "primary",
                    &format!(
                        "arbiter unreachable ({}); holding {} outputs, retrying in {} ms",
                        ftvm_vmm::error_chain(e),
                        self.gate.held(),
                        delay.as_millis()
                    ),
                );
            },
        );
        self.shared
            .arbitration_us
            .set(started.elapsed().as_micros() as u64);
        self.shared.decided_unix_us.set(crate::golive::unix_us());
        match decision {
            Ok(Decision::Won) => {
                self.pair.generation = generation;
                self.shared.generation.set(generation);
                self.shared.races_won.add(1);
                let held = self.gate.held();
                self.state = State::Unprotected(consumer);
                let msg = format!(
                    "won generation {generation} of VM {:?}: running UNPROTECTED (no backup); releasing {held} held outputs",
                    self.pair.vm
                );
                notice("primary", &msg);
                self.shared.set_state(Protection::Unprotected, Some(msg));
                Ok(())
            }
            Ok(Decision::Lost { holder }) => {
                let msg = format!(
                    "lost generation {generation} of VM {:?} to {holder}: stopping, releasing nothing",
                    self.pair.vm
                );
                notice("primary", &msg);
                self.state = State::Lost { holder, generation };
                self.shared.set_state(Protection::Lost, Some(msg));
                Err(self.stopped_error())
            }
            Err(e) => {
                let arbiter = ftvm_vmm::error_chain(&e);
                let msg = format!("generation {generation} undecided ({arbiter}): stopping");
                notice("primary", &msg);
                self.state = State::Undecided { arbiter };
                self.shared.set_state(Protection::Lost, Some(msg));
                Err(self.stopped_error())
            }
        }
    }

    /// Orderly stop (the VM stopped and logged its final checkpoint):
    /// protected, ships everything, waits for the ACK covering it, says
    /// goodbye and releases what is held; a backup lost on the way is
    /// handled like any other loss. Unprotected: releases what is held.
    pub fn finish(&mut self) -> Result<(), DriverError> {
        self.take_outputs();
        self.take_joins()?;
        if let State::Joining { .. } = self.state {
            // The spare has no channel yet, so it cannot go live: what the
            // join held leaves now.
            let State::Joining { consumer, .. } =
                std::mem::replace(&mut self.state, State::Finished)
            else {
                unreachable!("matched above")
            };
            self.state = State::Unprotected(consumer);
        }
        if let State::Protected(p) = &mut self.state {
            match p.finish(self.finish_timeout) {
                Ok(stats) => {
                    self.shared.publish(p, self.shipped_before);
                    *self
                        .shared
                        .stats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(stats);
                }
                Err(e) => self.backup_lost(e)?,
            }
        }
        self.release(Instant::now());
        if let State::Lost { .. } | State::Undecided { .. } = self.state {
            return Err(self.stopped_error());
        }
        let held = self.gate.held();
        if held > 0 {
            notice(
                "primary",
                &format!("{held} outputs not released: the ACK lease lapsed during the final wait"),
            );
        }
        self.state = State::Finished;
        self.shared.set_state(Protection::Finished, None);
        Ok(())
    }
}

impl EventSource for PrimaryDriver {
    fn poll(&mut self, at: PollPoint) -> Result<usize, EventSourceError> {
        self.pump(at).map_err(|e| EventSourceError {
            name: "primary channel",
            reason: ftvm_vmm::error_chain(&e),
        })
    }

    fn wait_fd(&self) -> Option<RawFd> {
        match &self.state {
            State::Protected(p) => p.readable_fd(),
            // The re-protector kicks at each step of a join.
            State::Unprotected(_) | State::Joining { .. } if self.joins.is_some() => {
                Some(self.shared.kick_fd())
            }
            _ => None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Protected(p) => Some(p.next_deadline()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// An unprotected driver that takes spares, the sender of its outputs,
    /// the re-protector's end and the count of outputs that left.
    fn unprotected() -> (
        PrimaryDriver,
        crossbeam_channel::Sender<crate::gate::Submitted>,
        crossbeam_channel::Sender<Join>,
        Arc<AtomicUsize>,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (_app, consumer) = ftvm_channel::Appender::unshipped(1 << 16).unwrap();
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let (join_tx, join_rx) = crossbeam_channel::unbounded();
        let settings = ftvm_tuning::Settings::default();
        let driver = PrimaryDriver::unprotected(
            consumer,
            out_rx,
            PairIdentity {
                vm: "vm".into(),
                generation: 1,
                candidate: "test".into(),
                arbiter: Arc::new(ftvm_arbiter::FileArbiter::new(dir.path())),
                retry: Retry::default(),
            },
            Arc::new(GateCounters::default()),
            Arc::new(|| false),
            Duration::from_secs(1),
            Joins {
                rx: join_rx,
                channel: settings.channel.clone(),
                hello: crate::hello(&settings, &[], "kv", 0, "vm", 1),
            },
        )
        .unwrap();
        (driver, out_tx, join_tx, Arc::new(AtomicUsize::new(0)), dir)
    }

    fn output(seq: u64, left: &Arc<AtomicUsize>) -> crate::gate::Submitted {
        let left = left.clone();
        let release: Release = Box::new(move || {
            left.fetch_add(1, Ordering::Relaxed);
        });
        (seq, Instant::now(), release)
    }

    /// Outputs leave at once while unprotected, and those from the join's
    /// seq on wait for the spare: an unprotected release must not open the
    /// gate for what comes after it (the gate keeps its highest bound).
    #[test]
    fn outputs_after_the_join_wait_although_earlier_ones_left_unprotected() {
        let (mut d, outputs, joins, left, _dir) = unprotected();
        outputs.send(output(1, &left)).unwrap();
        d.pump(PollPoint::Wait).unwrap();
        assert_eq!(left.load(Ordering::Relaxed), 1, "unprotected: at once");
        joins.send(Join::At(2)).unwrap();
        outputs.send(output(3, &left)).unwrap();
        d.pump(PollPoint::Wait).unwrap();
        assert_eq!(d.shared().protection(), Protection::Joining);
        assert_eq!(
            left.load(Ordering::Relaxed),
            1,
            "seq 3 is past the join at seq 2: it waits for the spare"
        );
        joins
            .send(Join::Failed("spare".into(), "cut".into()))
            .unwrap();
        d.pump(PollPoint::Wait).unwrap();
        assert_eq!(d.shared().protection(), Protection::Unprotected);
        assert_eq!(left.load(Ordering::Relaxed), 2, "no spare: it leaves");
    }
}

//! Threaded mode: an endpoint's poll loop on its own (optionally pinned)
//! thread. The recording thread reads the ACK position from an atomic; the
//! replaying thread reads entries from a second log ring.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use ftvm_ring::idle::{IdleKind, Idler};
use ftvm_ring::log::{ClaimError, Consumer};
use ftvm_tuning::{ChannelSettings, Idle};
use ftvm_wire::Frame;
use ftvm_wire::control::StopCause;

use crate::appender::Appender;
use crate::backup::{Backup, BackupStats};
use crate::error::ChannelError;
use crate::link::HelloParams;
use crate::primary::{Primary, PrimaryStats};
use crate::transport::Transport;

/// How long a stopping primary waits for the final ACK.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping backup tries to get its Stop frame out.
pub const STOP_SEND_WAIT: Duration = Duration::from_millis(200);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is a plain value; a panic elsewhere cannot leave it torn.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The idle strategy the settings ask for.
pub fn idler_for(settings: &ChannelSettings) -> Idler {
    let kind = match settings.idle {
        Idle::Spin => IdleKind::Spin,
        Idle::SpinYield => IdleKind::SpinYield,
        Idle::Park => IdleKind::Park,
    };
    Idler::new(
        kind,
        settings.spin_before_yield,
        Duration::from_micros(settings.park_us),
    )
}

fn pin(core: i32) {
    if let Ok(id) = usize::try_from(core) {
        pin_current_thread(id);
    }
}

/// Pins the calling thread to core `id`; returns false if that failed (the
/// thread then floats, which is correct, only slower).
pub fn pin_current_thread(id: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id })
}

/// What the channel thread publishes after every poll round.
#[derive(Debug, Default)]
pub struct PrimaryShared {
    acked: AtomicU64,
    replayed: AtomicU64,
    replay_ordinal: AtomicU64,
    last_sent: AtomicU64,
    stopped: AtomicBool,
}

impl PrimaryShared {
    /// Positions of a primary end driven inline (not by `spawn`): its owner
    /// publishes after each poll so status and lag control can read them.
    pub fn new() -> PrimaryShared {
        PrimaryShared::default()
    }

    /// Publishes `p`'s positions.
    pub fn publish(&self, p: &Primary) {
        let (replayed, ordinal) = p.replay();
        // Relaxed: reporting counters, read independently.
        self.replayed.store(replayed, Ordering::Relaxed);
        self.replay_ordinal.store(ordinal, Ordering::Relaxed);
        self.last_sent.store(p.last_sent_seq(), Ordering::Relaxed);
        // Release: whoever acts on the ACK (releases outputs) sees it after
        // the counters above; pairs with the Acquire in `acked_seq`.
        self.acked.store(p.acked_seq(), Ordering::Release);
    }

    /// Highest seq the backup has ACKed.
    pub fn acked_seq(&self) -> u64 {
        // Acquire: pairs with the Release store in `publish`.
        self.acked.load(Ordering::Acquire)
    }

    /// The backup's replay position (seq, exit ordinal) from its last ACK.
    pub fn replay(&self) -> (u64, u64) {
        (
            self.replayed.load(Ordering::Relaxed),
            self.replay_ordinal.load(Ordering::Relaxed),
        )
    }

    /// Highest seq handed to the transport.
    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent.load(Ordering::Relaxed)
    }

    /// Marks the channel stopped (an inline owner whose primary end failed).
    pub fn set_stopped(&self) {
        // Release: pairs with the Acquire in `is_stopped`.
        self.stopped.store(true, Ordering::Release);
    }

    /// True once the channel thread has stopped (finished or failed).
    pub fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release store at thread exit.
        self.stopped.load(Ordering::Acquire)
    }
}

/// A primary end running on its own thread.
#[derive(Debug)]
pub struct PrimaryHandle {
    shared: Arc<PrimaryShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<PrimaryStats, ChannelError>>>,
}

impl Primary {
    /// Moves the poll loop to a thread pinned to `settings.sender_core`
    /// (unpinned when -1), idling per `settings.idle`.
    pub fn spawn(self, settings: &ChannelSettings) -> PrimaryHandle {
        primary_thread(settings, move || Ok(self))
    }

    /// Performs the handshake over `transport` **on a new channel thread**
    /// and runs the primary end there; returns once the handshake is done.
    /// The transport is then only ever driven by that thread, which io_uring's
    /// single-issuer rings require (a ring used by the thread that did the
    /// handshake refuses every other thread).
    pub fn spawn_establish(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
    ) -> Result<(PrimaryHandle, Appender), ChannelError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = settings.clone();
        let mut handle = primary_thread(settings, move || {
            let (primary, app) = Primary::establish(transport, &s, params)?;
            // The caller waits for the appender; if it is gone, so is its use.
            let _ = tx.send(app);
            Ok(primary)
        });
        match rx.recv() {
            Ok(app) => Ok((handle, app)),
            // The thread ended before the handshake completed: its error says why.
            Err(_) => Err(handle
                .join()
                .err()
                .unwrap_or_else(|| thread_failed("primary"))),
        }
    }
}

/// The error of a channel thread (`side`: primary or backup) that could not
/// start or panicked.
fn thread_failed(side: &str) -> ChannelError {
    ChannelError::Protocol {
        peer: String::new(),
        what: format!("{side} channel thread could not start or panicked"),
    }
}

/// Runs the primary end that `make` builds (on the new thread) until stopped.
fn primary_thread(
    settings: &ChannelSettings,
    make: impl FnOnce() -> Result<Primary, ChannelError> + Send + 'static,
) -> PrimaryHandle {
    let shared = Arc::new(PrimaryShared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (sh, s) = (shared.clone(), stop.clone());
    let mut idler = idler_for(settings);
    let core = settings.sender_core;
    let park = Duration::from_micros(settings.park_us);
    let thread = std::thread::Builder::new()
        .name("ftvm-primary-channel".into())
        .spawn(move || {
            pin(core);
            let result = (|| {
                let mut primary = make()?;
                sh.publish(&primary);
                // Relaxed: `stop` carries no data; the appender's entries
                // are published by the ring's own Release/Acquire pair.
                while !s.load(Ordering::Relaxed) {
                    let work = primary.poll()?;
                    sh.publish(&primary);
                    if work == 0 && idler.is_parking() {
                        primary.wait(park)?;
                    } else {
                        idler.idle(work);
                    }
                }
                let stats = primary.finish(FINISH_TIMEOUT)?;
                sh.publish_final();
                Ok(stats)
            })();
            sh.set_stopped();
            result
        })
        .ok();
    PrimaryHandle {
        shared,
        stop,
        thread,
    }
}

impl PrimaryShared {
    fn publish_final(&self) {
        // `finish` returned: everything sent was ACKed.
        let last = self.last_sent.load(Ordering::Relaxed);
        self.acked.fetch_max(last, Ordering::Release);
    }
}

impl PrimaryHandle {
    /// Highest seq the backup has ACKed.
    pub fn acked_seq(&self) -> u64 {
        self.shared.acked_seq()
    }

    /// The positions the channel thread publishes.
    pub fn shared(&self) -> &Arc<PrimaryShared> {
        &self.shared
    }

    /// True once the channel thread has stopped (error or finish).
    pub fn is_finished(&self) -> bool {
        self.shared.is_stopped() || self.thread.is_none()
    }

    /// Asks the thread to ship everything, wait for the last ACK, say goodbye; joins it.
    pub fn finish(mut self) -> Result<PrimaryStats, ChannelError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Joins the thread (after it stopped by itself).
    pub fn join(&mut self) -> Result<PrimaryStats, ChannelError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(thread_failed("primary")),
        }
    }
}

/// The replaying thread's side of a threaded backup: validated entries in order.
#[derive(Debug)]
pub struct ReplayFeed {
    consumer: Consumer,
    replayed: Arc<AtomicU64>,
    ordinal: Arc<AtomicU64>,
    /// Seq of the last entry the receiver put in the ring.
    pushed: Arc<AtomicU64>,
}

impl ReplayFeed {
    /// The oldest entry not yet consumed, lent from the replay ring (read
    /// raw: the receiver checked it, CRC included, before it copied it
    /// here); the same entry until [`ReplayFeed::consume`].
    pub fn peek(&mut self) -> Option<Frame<'_>> {
        self.consumer
            .read()
            .into_records()
            .next()
            .and_then(ftvm_wire::raw::frame)
    }

    /// Frees the entry [`ReplayFeed::peek`] lent, for the receiver to reuse.
    pub fn consume(&mut self) {
        let chunk = self.consumer.read();
        let first = chunk.records().next().map_or(0, <[u8]>::len);
        chunk.release_up_to(first);
    }

    /// Seq of the last entry the receiver put in the ring (entries are
    /// contiguous: this minus the last consumed seq is the backlog).
    pub fn pushed_seq(&self) -> u64 {
        // Relaxed: a counter for reporting; the entries travel through the ring.
        self.pushed.load(Ordering::Relaxed)
    }

    /// Entries waiting in the replay ring (walks them).
    pub fn len(&mut self) -> usize {
        self.consumer.read().records().count()
    }

    /// True when no entry waits.
    pub fn is_empty(&mut self) -> bool {
        self.consumer.is_empty()
    }

    /// Reports the replay position (carried to the primary by the next ACK).
    pub fn set_replayed(&self, seq: u64, exit_ordinal: u64) {
        // Relaxed: two independent counters read for reporting only.
        self.ordinal.store(exit_ordinal, Ordering::Relaxed);
        self.replayed.store(seq, Ordering::Relaxed);
    }
}

/// Why a threaded backup end is told to stop: sent to the primary as a Stop frame.
type AbortReason = Arc<std::sync::Mutex<Option<(StopCause, String)>>>;

/// A backup end running on its own thread.
#[derive(Debug)]
pub struct BackupHandle {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    abort: AbortReason,
    /// The primary's Hello (VM name, generation), known after the handshake.
    hello: Arc<std::sync::Mutex<Option<ftvm_wire::control::Hello>>>,
    /// The primary's released-through watermark, as the thread last saw it.
    released: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<BackupStats, ChannelError>>>,
}

impl Backup {
    /// Moves the poll loop to a thread pinned to `settings.receiver_core`;
    /// entries flow to the returned [`ReplayFeed`] through a log ring of
    /// `settings.ring_bytes`. A full feed stops the receiver reading (the
    /// transport's flow control then reaches the primary); nothing is dropped.
    pub fn spawn(
        self,
        settings: &ChannelSettings,
    ) -> Result<(BackupHandle, ReplayFeed), ChannelError> {
        backup_thread(settings, move || Ok(self))
    }

    /// Performs the handshake over `transport` on a new receiver thread and
    /// runs the backup end there (see [`Primary::spawn_establish`] for why);
    /// returns once the handshake is done.
    pub fn spawn_establish(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
    ) -> Result<(BackupHandle, ReplayFeed), ChannelError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = settings.clone();
        let (mut handle, feed) = backup_thread(settings, move || {
            let backup = Backup::establish(transport, &s, params)?;
            let _ = tx.send(backup.peer_hello().clone());
            Ok(backup)
        })?;
        match rx.recv() {
            Ok(hello) => {
                *lock(&handle.hello) = Some(hello);
                Ok((handle, feed))
            }
            Err(_) => Err(handle
                .join()
                .err()
                .unwrap_or_else(|| thread_failed("backup"))),
        }
    }
}

/// Runs the backup end that `make` builds (on the new thread) until the
/// primary says goodbye, an error, or `stop`.
fn backup_thread(
    settings: &ChannelSettings,
    make: impl FnOnce() -> Result<Backup, ChannelError> + Send + 'static,
) -> Result<(BackupHandle, ReplayFeed), ChannelError> {
    let (mut producer, consumer) = ftvm_ring::log::with_capacity(settings.ring_bytes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let abort: AbortReason = Arc::default();
    let hello: Arc<std::sync::Mutex<Option<ftvm_wire::control::Hello>>> = Arc::default();
    let released = Arc::new(AtomicU64::new(0));
    let (ab, he, rel) = (abort.clone(), hello.clone(), released.clone());
    let replayed = Arc::new(AtomicU64::new(0));
    let ordinal = Arc::new(AtomicU64::new(0));
    let pushed = Arc::new(AtomicU64::new(0));
    let (s, d, r, o, pu) = (
        stop.clone(),
        done.clone(),
        replayed.clone(),
        ordinal.clone(),
        pushed.clone(),
    );
    let mut idler = idler_for(settings);
    let core = settings.receiver_core;
    let park = Duration::from_micros(settings.park_us);
    let thread = std::thread::Builder::new()
        .name("ftvm-backup-channel".into())
        .spawn(move || {
            pin(core);
            let result = (|| {
                let mut backup = make()?;
                *lock(&he) = Some(backup.peer_hello().clone());
                while !s.load(Ordering::Relaxed) && !backup.is_ended() {
                    // Relaxed: reporting positions, read independently.
                    backup.set_replayed(r.load(Ordering::Relaxed), o.load(Ordering::Relaxed));
                    let budget = producer.free_bytes();
                    let mut full = false;
                    let mut last = None;
                    let work = backup.poll_budget(budget, |_, frame| {
                        let bytes = frame.bytes;
                        match producer.claim(bytes.len()) {
                            Ok(mut c) => {
                                c.buf().copy_from_slice(bytes);
                                c.commit();
                                last = Some(frame.header.seq);
                            }
                            // The budget keeps deliveries within the free space.
                            Err(
                                ClaimError::Full { .. }
                                | ClaimError::TooLarge { .. }
                                | ClaimError::BadLength { .. },
                            ) => full = true,
                        }
                    })?;
                    debug_assert!(!full, "replay feed overflowed its budget");
                    if let Some(seq) = last {
                        // Relaxed: a reporting counter (see `pushed_seq`).
                        pu.store(seq, Ordering::Relaxed);
                    }
                    // Relaxed: a watermark read for bookkeeping; the entries
                    // it covers travel through the feed ring.
                    rel.store(backup.released_seq(), Ordering::Relaxed);
                    if work == 0 && idler.is_parking() {
                        backup.wait(park)?;
                    } else {
                        idler.idle(work);
                    }
                }
                if let Some((cause, reason)) = lock(&ab).take() {
                    backup.stop(cause, &reason, STOP_SEND_WAIT);
                }
                Ok(backup.stats())
            })();
            // Release: pairs with the Acquire in `BackupHandle::is_finished`.
            d.store(true, Ordering::Release);
            result
        })
        .ok();
    Ok((
        BackupHandle {
            stop,
            done,
            abort,
            hello,
            released,
            thread,
        },
        ReplayFeed {
            consumer,
            replayed,
            ordinal,
            pushed,
        },
    ))
}

impl BackupHandle {
    /// True once the thread stopped (goodbye, error, or `stop`).
    pub fn is_finished(&self) -> bool {
        // Acquire: pairs with the Release store at thread exit.
        self.done.load(Ordering::Acquire) || self.thread.is_none()
    }

    /// Stops the thread and joins it.
    pub fn stop(mut self) -> Result<BackupStats, ChannelError> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// The replaying side stopped: the thread tells the primary why (a
    /// Stop frame) and ends; joins it.
    pub fn abort(mut self, cause: StopCause, reason: &str) -> Result<BackupStats, ChannelError> {
        *lock(&self.abort) = Some((cause, reason.to_owned()));
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// The primary's Hello (once the handshake is done).
    pub fn peer_hello(&self) -> Option<ftvm_wire::control::Hello> {
        lock(&self.hello).clone()
    }

    /// The primary's released-through watermark as last received.
    pub fn released_seq(&self) -> u64 {
        // Relaxed: see the store in the thread.
        self.released.load(Ordering::Relaxed)
    }

    /// Joins the thread after it stopped by itself.
    pub fn join(&mut self) -> Result<BackupStats, ChannelError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(thread_failed("backup")),
        }
    }
}

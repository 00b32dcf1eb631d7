//! The backup VM's log source: entries received and validated by the
//! channel, handed to the replayer in order; the replay position goes back to
//! the primary in the ACKs.
//!
//! Two ways to drive the channel:
//! * **inline** (default, `channel.threaded = false`): the replay thread polls
//!   the backup end itself on every `poll_entry` — so entries are ACKed on
//!   receipt even while a backlog is replayed — and the pair needs no extra
//!   busy thread (what a 2-core host wants);
//! * **threaded**: a receiver thread on `receiver_core` fills a replay ring.
//!
//! When the channel fails (EOF, reset, corrupt frame, silence) the source
//! records the moment (the backup's *detection*), hands out every entry
//! received before the fault (*draining*), then reports
//! [`SourcePoll::Lost`]; the VM's failover plan takes it from there. When
//! the backup itself stops replaying (divergence, a signal, an error) the
//! source tells the primary at once with a Stop frame ([`Stopper`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ftvm_channel::{Backup, BackupHandle, ChannelError, ReplayFeed, STOP_SEND_WAIT};
use ftvm_ring::idle::Idler;
use ftvm_vmm::Counter;
use ftvm_vmm::log::{EntryRef, LogSource, LogSourceError, SourcePoll};
use ftvm_wire::Frame;
use ftvm_wire::control::StopCause;

use crate::golive::BackupStatus;

/// Counters of the source, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Entries handed to the replayer.
    pub replayed: Counter,
    /// Exit ordinal of the last entry handed out.
    pub exit_ordinal: Counter,
    /// Entries received but not yet replayed.
    pub backlog: Counter,
    /// Log entries received and validated (threaded mode: as drained).
    pub received: Counter,
    /// Bytes of those entries (threaded mode: when the channel ends).
    pub received_bytes: Counter,
    /// ACK frames sent (threaded mode: when the channel ends).
    pub acks_sent: Counter,
}

impl SourceStats {
    fn publish(&self, s: &ftvm_channel::BackupStats) {
        self.received.set(s.entries);
        self.received_bytes.set(s.entry_bytes);
        self.acks_sent.set(s.acks);
    }
}

/// Why the backup stopped replaying, told to the primary in a Stop frame
/// when the source is dropped. Unset at drop time means the replay ended
/// with the primary (its final checkpoint): the goodbye exchange completes.
#[derive(Clone, Debug, Default)]
pub struct Stopper(Arc<Mutex<Option<(StopCause, String)>>>);

impl Stopper {
    /// Records why the backup stops.
    pub fn set(&self, cause: StopCause, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((cause, reason.into()));
    }

    fn take(&self) -> Option<(StopCause, String)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[derive(Debug)]
enum Drive {
    /// The backup end, and the idle strategy for empty polls: once it
    /// reaches its park phase the replay thread blocks on the transport for
    /// `park` instead of spinning.
    Inline(Box<Backup>, Box<Idler>, Duration),
    Threaded {
        feed: ReplayFeed,
        handle: Option<BackupHandle>,
    },
}

/// A `LogSource` over the backup end of the channel.
#[derive(Debug)]
pub struct ChannelSource {
    drive: Drive,
    /// Inline mode: entries received and not yet replayed, their frames
    /// back to back (threaded mode lends them from the replay ring).
    queue: FrameQueue,
    /// The last `poll` said `Ready`: `peek` lends the oldest entry.
    ready: bool,
    /// The channel's verdict once it stopped: Ok = orderly goodbye.
    ended: Option<Result<(), String>>,
    stats: Arc<SourceStats>,
    /// The primary's released-through watermark (read by the standby gate).
    released: Arc<AtomicU64>,
    status: Arc<BackupStatus>,
    stopper: Stopper,
}

/// Checked frames back to back in one reused buffer: received frames are
/// copied in once (the receive buffer is reused by the next poll) and lent
/// out from here. Grows to the largest backlog, then allocates no more.
#[derive(Debug, Default)]
struct FrameQueue {
    bytes: Vec<u8>,
    /// Offset of the oldest frame.
    head: usize,
    len: usize,
}

impl FrameQueue {
    /// Compacts below this many dead bytes only when the queue is empty.
    const COMPACT_AT: usize = 1 << 16;

    fn push(&mut self, frame: &[u8]) {
        if self.head == self.bytes.len() {
            self.bytes.clear();
            self.head = 0;
        } else if self.head >= Self::COMPACT_AT && self.head * 2 >= self.bytes.len() {
            self.bytes.copy_within(self.head.., 0);
            self.bytes.truncate(self.bytes.len() - self.head);
            self.head = 0;
        }
        self.bytes.extend_from_slice(frame);
        self.len += 1;
    }

    /// The oldest frame (checked on receipt: read raw).
    fn front(&self) -> Option<Frame<'_>> {
        ftvm_wire::raw::frame(self.bytes.get(self.head..)?)
    }

    fn pop(&mut self) {
        if let Some(f) = self.front() {
            self.head += f.bytes.len();
            self.len -= 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn describe(e: &ChannelError) -> String {
    ftvm_vmm::error_chain(e)
}

impl ChannelSource {
    /// A source that polls `backup` from the replay thread, idling per
    /// `settings.idle` when nothing has arrived.
    pub(crate) fn inline(
        backup: Backup,
        settings: &ftvm_tuning::ChannelSettings,
        status: Arc<BackupStatus>,
    ) -> ChannelSource {
        ChannelSource::with(
            Drive::Inline(
                Box::new(backup),
                Box::new(ftvm_channel::idler_for(settings)),
                Duration::from_micros(settings.park_us),
            ),
            status,
        )
    }

    /// A source over a receiver thread's `feed`.
    pub(crate) fn threaded(
        feed: ReplayFeed,
        handle: BackupHandle,
        status: Arc<BackupStatus>,
    ) -> ChannelSource {
        ChannelSource::with(
            Drive::Threaded {
                feed,
                handle: Some(handle),
            },
            status,
        )
    }

    fn with(drive: Drive, status: Arc<BackupStatus>) -> ChannelSource {
        ChannelSource {
            drive,
            queue: FrameQueue::default(),
            ready: false,
            ended: None,
            stats: status.replay.clone(),
            released: Arc::new(AtomicU64::new(0)),
            status,
            stopper: Stopper::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// The primary's released-through watermark, kept current by the source.
    pub fn released(&self) -> Arc<AtomicU64> {
        self.released.clone()
    }

    /// The handle through which the backup says why it stops.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Receives what has arrived; records the channel's end when it stopped.
    fn pump(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let queue = &mut self.queue;
        let (ended, backlog) = match &mut self.drive {
            Drive::Inline(b, idler, park) => {
                let result = b.poll(|_, f| queue.push(f.bytes)).and_then(|work| {
                    let idle = work == 0 && queue.is_empty() && !b.is_ended();
                    if !idle {
                        idler.reset();
                    } else if idler.is_parking() {
                        b.wait(*park)?;
                    } else {
                        idler.idle(0);
                    }
                    Ok(work)
                });
                // Relaxed: a watermark for the standby gate, read on this thread.
                self.released.store(b.released_seq(), Ordering::Relaxed);
                self.stats.publish(&b.stats());
                let ended = match result {
                    Ok(_) if b.is_ended() => Some(Ok(())),
                    Ok(_) => None,
                    Err(e) => Some(Err(describe(&e))),
                };
                (ended, queue.len())
            }
            Drive::Threaded { feed, handle } => {
                let finished = handle.as_ref().is_none_or(BackupHandle::is_finished);
                if let Some(h) = handle.as_ref() {
                    self.released.store(h.released_seq(), Ordering::Relaxed);
                }
                if finished {
                    // Everything the thread received before it stopped is in
                    // the replay ring; it is lent from there until drained.
                    let stats = &self.stats;
                    let ended = match handle.take() {
                        Some(mut h) => h
                            .join()
                            .map(|s| stats.publish(&s))
                            .map_err(|e| describe(&e)),
                        None => Ok(()),
                    };
                    (Some(ended), feed.len())
                } else {
                    (None, 0)
                }
            }
        };
        if let Some(Err(reason)) = &ended {
            // Replaying → Draining: the primary is lost as of now.
            self.status.primary_lost(reason, backlog);
        }
        if ended.is_some() {
            self.ended = ended;
        }
    }

    /// The oldest entry not yet replayed.
    fn front(&mut self) -> Option<Frame<'_>> {
        match &mut self.drive {
            Drive::Inline(..) => self.queue.front(),
            Drive::Threaded { feed, .. } => feed.peek(),
        }
    }
}

impl LogSource for ChannelSource {
    fn poll(&mut self) -> Result<SourcePoll, LogSourceError> {
        if self.ready {
            return Ok(SourcePoll::Ready);
        }
        // Poll on every call: entries are ACKed on receipt, not on replay.
        self.pump();
        if self.front().is_some() {
            self.ready = true;
            if matches!(self.drive, Drive::Threaded { .. }) {
                self.stats.received.add(1);
            }
            return Ok(SourcePoll::Ready);
        }
        Ok(match &self.ended {
            None => SourcePoll::Pending,
            Some(Ok(())) => SourcePoll::End,
            // Entries received before the fault were all replayed first.
            Some(Err(e)) => SourcePoll::Lost { reason: e.clone() },
        })
    }

    fn peek(&mut self) -> Option<EntryRef<'_>> {
        if !self.ready {
            return None;
        }
        self.front().map(EntryRef::from)
    }

    /// The replayer applied the entry: its position goes to the primary in
    /// the next ACK.
    fn consume(&mut self) {
        if !std::mem::take(&mut self.ready) {
            return;
        }
        let Some(h) = self.front().map(|f| f.header) else {
            return;
        };
        let backlog = match &mut self.drive {
            Drive::Inline(b, ..) => {
                self.queue.pop();
                b.set_replayed(h.seq, h.exit_ordinal);
                self.queue.len() as u64
            }
            Drive::Threaded { feed, .. } => {
                feed.consume();
                feed.set_replayed(h.seq, h.exit_ordinal);
                // Seqs are contiguous: what was pushed after this one waits.
                feed.pushed_seq().saturating_sub(h.seq)
            }
        };
        self.stats.replayed.set(h.seq);
        self.stats.exit_ordinal.set(h.exit_ordinal);
        self.stats.backlog.set(backlog);
    }
}

impl Drop for ChannelSource {
    /// The replayer is done. If it stopped for a reason of its own
    /// ([`Stopper`]), the primary hears why at once (Stop frame) and treats
    /// the backup as lost. Otherwise (the primary's final checkpoint) the
    /// channel goes on until the goodbye exchange completes, so the last
    /// entries are ACKed and the primary's orderly shutdown succeeds —
    /// bounded by the peer timeout, which ends the wait if the primary is gone.
    fn drop(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let stop = self.stopper.take();
        match &mut self.drive {
            Drive::Inline(b, ..) => match stop {
                Some((cause, reason)) => b.stop(cause, &reason, STOP_SEND_WAIT),
                None => {
                    while self.ended.is_none() {
                        match b.poll(|_, _| {}) {
                            Ok(_) if b.is_ended() => self.ended = Some(Ok(())),
                            Ok(_) => std::thread::yield_now(),
                            Err(e) => self.ended = Some(Err(describe(&e))),
                        }
                    }
                }
            },
            Drive::Threaded { handle, .. } => {
                if let (Some(h), Some((cause, reason))) = (handle.take(), stop) {
                    let _ = h.abort(cause, &reason);
                }
            }
        }
    }
}

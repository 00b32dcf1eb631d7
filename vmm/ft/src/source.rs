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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ftvm_channel::{Backup, BackupHandle, ChannelError, ReplayFeed, STOP_SEND_WAIT};
use ftvm_ring::idle::Idler;
use ftvm_vmm::Counter;
use ftvm_vmm::log::{LogEntry, LogSource, LogSourceError, SourcePoll};
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
    buf: VecDeque<LogEntry>,
    /// The channel's verdict once it stopped: Ok = orderly goodbye.
    ended: Option<Result<(), String>>,
    stats: Arc<SourceStats>,
    /// The primary's released-through watermark (read by the standby gate).
    released: Arc<AtomicU64>,
    status: Arc<BackupStatus>,
    stopper: Stopper,
}

fn owned(f: &Frame<'_>) -> LogEntry {
    LogEntry {
        header: f.header,
        payload: f.payload.to_vec(),
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
            buf: VecDeque::new(),
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
        let buf = &mut self.buf;
        let ended = match &mut self.drive {
            Drive::Inline(b, idler, park) => {
                let result = b.poll(|_, f| buf.push_back(owned(f))).and_then(|work| {
                    let idle = work == 0 && buf.is_empty() && !b.is_ended();
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
                match result {
                    Ok(_) if b.is_ended() => Some(Ok(())),
                    Ok(_) => None,
                    Err(e) => Some(Err(describe(&e))),
                }
            }
            Drive::Threaded { feed, handle } => {
                let finished = handle.as_ref().is_none_or(BackupHandle::is_finished);
                let n = feed.drain(|f| buf.push_back(owned(f)));
                self.stats.received.add(n as u64);
                if let Some(h) = handle.as_ref() {
                    self.released.store(h.released_seq(), Ordering::Relaxed);
                }
                if finished {
                    // Everything the thread received before it stopped is drained.
                    let n = feed.drain(|f| buf.push_back(owned(f)));
                    self.stats.received.add(n as u64);
                    let stats = &self.stats;
                    Some(match handle.take() {
                        Some(mut h) => h
                            .join()
                            .map(|s| stats.publish(&s))
                            .map_err(|e| describe(&e)),
                        None => Ok(()),
                    })
                } else {
                    None
                }
            }
        };
        if let Some(Err(reason)) = &ended {
            // Replaying → Draining: the primary is lost as of now.
            self.status.primary_lost(reason, self.buf.len());
        }
        if ended.is_some() {
            self.ended = ended;
        }
    }

    fn report_replayed(&mut self, seq: u64, ordinal: u64) {
        match &mut self.drive {
            Drive::Inline(b, ..) => b.set_replayed(seq, ordinal),
            Drive::Threaded { feed, .. } => feed.set_replayed(seq, ordinal),
        }
    }
}

impl LogSource for ChannelSource {
    fn poll_entry(&mut self) -> Result<SourcePoll, LogSourceError> {
        // Poll on every call: entries are ACKed on receipt, not on replay.
        self.pump();
        let Some(entry) = self.buf.pop_front() else {
            return Ok(match &self.ended {
                None => SourcePoll::Pending,
                Some(Ok(())) => SourcePoll::End,
                // Entries received before the fault were all replayed first.
                Some(Err(e)) => SourcePoll::Lost { reason: e.clone() },
            });
        };
        // The previous entry has been applied by the replayer.
        let seq = entry.header.seq;
        self.report_replayed(seq - 1, entry.header.exit_ordinal);
        self.stats.replayed.set(seq - 1);
        self.stats.exit_ordinal.set(entry.header.exit_ordinal);
        self.stats.backlog.set(self.buf.len() as u64);
        Ok(SourcePoll::Entry(entry))
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

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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ftvm_channel::{Backup, BackupHandle, ChannelError, ReplayFeed};
use ftvm_ring::idle::Idler;
use ftvm_vmm::log::{LogEntry, LogSource, LogSourceError, SourcePoll};
use ftvm_wire::Frame;

/// Counters of the source, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Entries handed to the replayer.
    pub replayed: AtomicU64,
    /// Exit ordinal of the last entry handed out.
    pub exit_ordinal: AtomicU64,
    /// Entries received but not yet replayed.
    pub backlog: AtomicU64,
}

#[derive(Debug)]
enum Drive {
    /// The backup end, and the idle strategy for empty polls: once it
    /// reaches its park phase the replay thread blocks on the transport for
    /// `park` instead of spinning.
    Inline(Box<Backup>, Box<Idler>, std::time::Duration),
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
    pub fn inline(backup: Backup, settings: &ftvm_tuning::ChannelSettings) -> ChannelSource {
        ChannelSource::with(Drive::Inline(
            Box::new(backup),
            Box::new(ftvm_channel::idler_for(settings)),
            std::time::Duration::from_micros(settings.park_us),
        ))
    }

    /// A source over a receiver thread's `feed`.
    pub fn threaded(feed: ReplayFeed, handle: BackupHandle) -> ChannelSource {
        ChannelSource::with(Drive::Threaded {
            feed,
            handle: Some(handle),
        })
    }

    fn with(drive: Drive) -> ChannelSource {
        ChannelSource {
            drive,
            buf: VecDeque::new(),
            ended: None,
            stats: Arc::new(SourceStats::default()),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Arc<SourceStats> {
        self.stats.clone()
    }

    /// Receives what has arrived; records the channel's end when it stopped.
    fn pump(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let buf = &mut self.buf;
        match &mut self.drive {
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
                match result {
                    Ok(_) if b.is_ended() => self.ended = Some(Ok(())),
                    Ok(_) => {}
                    Err(e) => self.ended = Some(Err(describe(&e))),
                }
            }
            Drive::Threaded { feed, handle } => {
                let finished = handle.as_ref().is_none_or(BackupHandle::is_finished);
                feed.drain(|f| buf.push_back(owned(f)));
                if finished {
                    // Everything the thread received before it stopped is drained.
                    feed.drain(|f| buf.push_back(owned(f)));
                    self.ended = Some(match handle.take() {
                        Some(mut h) => h.join().map(|_| ()).map_err(|e| describe(&e)),
                        None => Ok(()),
                    });
                }
            }
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
            return match &self.ended {
                None => Ok(SourcePoll::Pending),
                Some(Ok(())) => Ok(SourcePoll::End),
                // Entries received before the fault were all replayed first.
                Some(Err(e)) => Err(LogSourceError::Channel(e.clone())),
            };
        };
        // The previous entry has been applied by the replayer.
        let seq = entry.header.seq;
        self.report_replayed(seq - 1, entry.header.exit_ordinal);
        // Relaxed: reporting counters.
        self.stats.replayed.store(seq - 1, Ordering::Relaxed);
        self.stats
            .exit_ordinal
            .store(entry.header.exit_ordinal, Ordering::Relaxed);
        self.stats
            .backlog
            .store(self.buf.len() as u64, Ordering::Relaxed);
        Ok(SourcePoll::Entry(entry))
    }
}

impl Drop for ChannelSource {
    /// The replayer is done (usually at the primary's final checkpoint): keep
    /// the channel going until the goodbye exchange completes, so the last
    /// entries are ACKed and the primary's orderly shutdown succeeds. Bounded
    /// by the peer timeout, which ends the wait if the primary is gone.
    fn drop(&mut self) {
        if let Drive::Inline(b, ..) = &mut self.drive {
            while self.ended.is_none() {
                match b.poll(|_, _| {}) {
                    Ok(_) if b.is_ended() => self.ended = Some(Ok(())),
                    Ok(_) => std::thread::yield_now(),
                    Err(e) => self.ended = Some(Err(describe(&e))),
                }
            }
        }
    }
}

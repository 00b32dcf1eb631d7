//! The primary VM's log sink: entries go into the channel's log ring, and
//! the [`PrimaryDriver`] ships them.
//!
//! * **Inline** (the default with a transport that has a readiness fd, tcp):
//!   the sink owns the driver and exposes it to the VM as its event source,
//!   so the vCPU thread drives the channel at every exit end and WAIT pass
//!   and sleeps on the socket in WAIT (an ACK wakes it). A full ring pumps
//!   the driver until there is room.
//! * **Threaded** (`channel.threaded`, or shm/uring, which cannot wake a
//!   sleeping vCPU): the driver runs on a channel thread of its own, which
//!   also performed the handshake (io_uring rings are single-issuer). The
//!   sink's event source only watches the driver's state, so a lost
//!   arbitration stops the VM even while it sleeps in WAIT.
//!
//! Flow control: a full ring pauses the vCPU until the driver drains it;
//! nothing is dropped. Lag control: while protected, when the backup's
//! replay falls more than `lag_limit_us` behind (the age of the oldest
//! sampled entry it has not replayed), appends sleep in proportion to the
//! excess. When the VM stops, [`LogSink::flush`] finishes the driver
//! (ship, last ACK, goodbye, release).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ftvm_channel::{AppendError, Appender};
use ftvm_vmm::Counter;
use ftvm_vmm::log::{LogSink, LogSinkError};
use ftvm_vmm::{EventSource, EventSourceError, PollPoint};
use ftvm_wire::Kind;

use crate::driver::{DriverError, DriverShared, PrimaryDriver, Protection};

/// Entries between two lag samples.
const SAMPLE_EVERY: u64 = 64;
/// Longest single lag-control sleep.
const MAX_LAG_SLEEP: Duration = Duration::from_millis(20);

/// Counters of the sink, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Entries appended.
    pub entries: Counter,
    /// Entry bytes appended (whole frames).
    pub bytes: Counter,
    /// Exit ordinal of the last entry.
    pub exit_ordinal: Counter,
    /// Times the vCPU waited on a full ring.
    pub full_waits: Counter,
    /// Time the vCPU spent waiting on a full ring (µs).
    pub full_wait_us: Counter,
    /// Lag-control sleeps.
    pub lag_sleeps: Counter,
    /// Time slept by lag control (µs).
    pub lag_sleep_us: Counter,
    /// Replay lag seen at the last check (µs).
    pub lag_us: Counter,
    /// Largest replay lag seen (µs).
    pub max_lag_us: Counter,
}

/// A driver on a channel thread of its own.
#[derive(Debug)]
pub(crate) struct DriverThread {
    pub(crate) thread: Option<JoinHandle<Result<(), DriverError>>>,
    /// Asks the thread to finish in order (ship, last ACK, goodbye).
    pub(crate) finish: Arc<AtomicBool>,
    /// Asks the thread to stop without finishing (the VM failed).
    pub(crate) abandon: Arc<AtomicBool>,
    pub(crate) shared: Arc<DriverShared>,
}

impl DriverThread {
    fn join(&mut self) -> Result<(), LogSinkError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r.map_err(|e| LogSinkError::Closed(ftvm_vmm::error_chain(&e))),
            Some(Err(_)) => Err(LogSinkError::Closed(
                "the primary's channel thread panicked".into(),
            )),
            None => Ok(()),
        }
    }
}

impl EventSource for DriverThread {
    fn poll(&mut self, _at: PollPoint) -> Result<usize, EventSourceError> {
        self.shared.drain_kick();
        match self.shared.protection() {
            Protection::Lost => Err(EventSourceError {
                name: "primary channel",
                reason: self.shared.note(),
            }),
            _ => Ok(0),
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.shared.kick_fd())
    }
}

#[derive(Debug)]
enum Drive {
    Inline(Box<PrimaryDriver>),
    Threaded(DriverThread),
}

/// A `LogSink` over the channel's log ring.
#[derive(Debug)]
pub struct ChannelSink {
    app: Appender,
    drive: Drive,
    shared: Arc<DriverShared>,
    lag_limit: Duration,
    samples: VecDeque<(u64, Instant)>,
    stats: Arc<SinkStats>,
}

impl ChannelSink {
    /// A sink that drives `driver` itself (inline mode).
    pub(crate) fn inline(app: Appender, driver: PrimaryDriver, lag_limit: Duration) -> ChannelSink {
        let shared = driver.shared().clone();
        ChannelSink::with(app, Drive::Inline(Box::new(driver)), shared, lag_limit)
    }

    /// A sink whose driver runs on its own thread.
    pub(crate) fn threaded(
        app: Appender,
        thread: DriverThread,
        lag_limit: Duration,
    ) -> ChannelSink {
        let shared = thread.shared.clone();
        ChannelSink::with(app, Drive::Threaded(thread), shared, lag_limit)
    }

    fn with(
        app: Appender,
        drive: Drive,
        shared: Arc<DriverShared>,
        lag_limit: Duration,
    ) -> ChannelSink {
        ChannelSink {
            app,
            drive,
            shared,
            lag_limit,
            samples: VecDeque::new(),
            stats: Arc::new(SinkStats::default()),
        }
    }

    /// The counters (for the status endpoint and reports).
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// What the driver publishes.
    pub fn shared(&self) -> Arc<DriverShared> {
        self.shared.clone()
    }

    fn driver_gone(&mut self) -> LogSinkError {
        match &mut self.drive {
            Drive::Threaded(t) => t
                .join()
                .err()
                .unwrap_or_else(|| LogSinkError::Closed(self.shared.note())),
            Drive::Inline(_) => LogSinkError::Closed(self.shared.note()),
        }
    }

    /// Waits for room in the ring: the driver drains it (inline: by being
    /// pumped here).
    fn wait_for_room(&mut self, spins: &mut u32) -> Result<(), LogSinkError> {
        match &mut self.drive {
            Drive::Inline(d) => {
                d.pump(PollPoint::Wait)
                    .map_err(|e| LogSinkError::Closed(ftvm_vmm::error_chain(&e)))?;
            }
            Drive::Threaded(t) => {
                if t.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                    return Err(self.driver_gone());
                }
                *spins += 1;
                if *spins < 1000 {
                    std::hint::spin_loop();
                } else {
                    // A driver stuck in arbitration: do not burn the core.
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        Ok(())
    }

    /// Replay lag: age of the oldest sampled entry the backup has not replayed.
    fn lag(&mut self, now: Instant) -> Duration {
        let (replayed, _) = self.shared.replay();
        while self
            .samples
            .front()
            .is_some_and(|(seq, _)| *seq <= replayed)
        {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t))
    }

    fn lag_control(&mut self, seq: u64) {
        if !seq.is_multiple_of(SAMPLE_EVERY) {
            return;
        }
        if self.shared.protection() != Protection::Protected {
            // No backup, no lag.
            self.samples.clear();
            return;
        }
        let now = Instant::now();
        self.samples.push_back((seq, now));
        let lag = self.lag(now);
        let lag_us = lag.as_micros() as u64;
        self.stats.lag_us.set(lag_us);
        self.stats.max_lag_us.max(lag_us);
        if lag > self.lag_limit {
            // Proportional: the further behind, the longer the guest pauses.
            let pause = ((lag - self.lag_limit) / 4).min(MAX_LAG_SLEEP);
            std::thread::sleep(pause);
            self.stats.lag_sleeps.add(1);
            self.stats.lag_sleep_us.add(pause.as_micros() as u64);
        }
    }
}

impl LogSink for ChannelSink {
    /// Claims the entry in the log ring itself: the device writes into the
    /// ring, the ring's claim seals and commits it and gives it its seq (the
    /// one count of entries there is).
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        let mut waited: Option<Instant> = None;
        let mut spins = 0;
        let (seq, len) = loop {
            match self.app.claim(kind, exit_ordinal, max_len) {
                Ok(mut claim) => {
                    let Some(n) = write(claim.payload()) else {
                        return Ok(None);
                    };
                    let seq = claim.seq();
                    break (
                        claim.commit_len(n).map_err(|_| LogSinkError::Overlong {
                            seq,
                            kind,
                            claimed: max_len,
                            written: n,
                        })?,
                        n,
                    );
                }
                Err(AppendError::Full { .. }) => {
                    // Flow control: the vCPU pauses until the ring drains.
                    waited.get_or_insert_with(Instant::now);
                    self.wait_for_room(&mut spins)?;
                }
                Err(e) => {
                    return Err(LogSinkError::Closed(format!(
                        "entry seq {} refused by the channel: {}",
                        self.app.next_seq(),
                        ftvm_vmm::error_chain(&e)
                    )));
                }
            }
        };
        if let Some(t) = waited {
            self.stats.full_waits.add(1);
            self.stats.full_wait_us.add(t.elapsed().as_micros() as u64);
        }
        self.stats.entries.add(1);
        self.stats.bytes.add(ftvm_wire::frame_len(len) as u64);
        self.stats.exit_ordinal.set(exit_ordinal);
        self.lag_control(seq);
        Ok(Some(seq))
    }

    fn next_seq(&self) -> u64 {
        self.app.next_seq()
    }

    fn max_payload_len(&self) -> usize {
        self.app.max_payload_len()
    }

    /// The VM stopped: the driver finishes (ships the rest, waits for the
    /// last ACK, says goodbye, releases what is held).
    fn flush(&mut self) -> Result<(), LogSinkError> {
        match &mut self.drive {
            Drive::Inline(d) => d
                .finish()
                .map_err(|e| LogSinkError::Closed(ftvm_vmm::error_chain(&e))),
            Drive::Threaded(t) => {
                t.finish.store(true, Ordering::Release);
                t.join()
            }
        }
    }

    fn events(&mut self) -> Option<&mut dyn EventSource> {
        Some(match &mut self.drive {
            Drive::Inline(d) => d.as_mut(),
            Drive::Threaded(t) => t,
        })
    }
}

impl Drop for ChannelSink {
    /// A VM that failed: a threaded driver stops without finishing (the
    /// connection closes; the backup takes it as the primary's loss).
    fn drop(&mut self) {
        if let Drive::Threaded(t) = &mut self.drive {
            // Release: pairs with the Acquire load on the channel thread.
            t.abandon.store(true, Ordering::Release);
            let _ = t.join();
        }
    }
}

/// Records into two sinks: the channel, and a log file kept on the primary's
/// host (`ftvm primary --backup ADDR --record-log FILE`). The second sink is
/// flushed after every OUTPUT entry, so a primary killed by SIGKILL leaves
/// a file holding at least every entry up to its last output (what a
/// replay of "the same log" after a failover needs).
#[derive(Debug)]
pub struct TeeSink<A, B> {
    first: A,
    second: B,
}

impl<A: LogSink, B: LogSink> TeeSink<A, B> {
    /// Appends to `first`, then to `second`.
    pub fn new(first: A, second: B) -> TeeSink<A, B> {
        TeeSink { first, second }
    }
}

impl<A: LogSink, B: LogSink> LogSink for TeeSink<A, B> {
    /// The entry is written in place into `first`'s claim and copied from
    /// there into `second` before `first` commits; the two sinks number
    /// their entries alike (both from 1), so the seqs agree.
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        let second = &mut self.second;
        let mut failed = None;
        let seq = self.first.claim(kind, exit_ordinal, max_len, &mut |buf| {
            let n = write(buf)?;
            let payload = buf.get(..n)?;
            match second.append(kind, exit_ordinal, payload) {
                Ok(_) => Some(n),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if kind.is_output() && seq.is_some() {
            self.second.flush()?;
        }
        Ok(seq)
    }

    fn next_seq(&self) -> u64 {
        self.first.next_seq()
    }

    fn max_payload_len(&self) -> usize {
        self.first
            .max_payload_len()
            .min(self.second.max_payload_len())
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        self.first.flush()?;
        self.second.flush()
    }

    fn events(&mut self) -> Option<&mut dyn EventSource> {
        self.first.events()
    }
}

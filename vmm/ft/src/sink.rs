//! The primary VM's log sink: entries go into the channel's log ring.
//!
//! Flow control: a full ring pauses the vCPU here until the channel drains
//! it. Lag control: when the backup's replay falls more than `lag_limit_us`
//! behind (measured as the age of the oldest entry it has not yet replayed),
//! each append sleeps in proportion to the excess, slowing the guest until
//! the backup catches up.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ftvm_channel::{AppendError, Appender, PrimaryShared};
use ftvm_vmm::log::{LogSink, LogSinkError};
use ftvm_wire::Header;

use crate::inline::{InlineShared, lock};

/// Entries between two lag samples.
const SAMPLE_EVERY: u64 = 64;
/// Longest single lag-control sleep.
const MAX_LAG_SLEEP: Duration = Duration::from_millis(20);

/// Counters of the sink, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Entries appended.
    pub entries: AtomicU64,
    /// Entry bytes appended (whole frames).
    pub bytes: AtomicU64,
    /// Exit ordinal of the last entry.
    pub exit_ordinal: AtomicU64,
    /// Times the vCPU waited on a full ring.
    pub full_waits: AtomicU64,
    /// Time the vCPU spent waiting on a full ring (µs).
    pub full_wait_us: AtomicU64,
    /// Lag-control sleeps.
    pub lag_sleeps: AtomicU64,
    /// Time slept by lag control (µs).
    pub lag_sleep_us: AtomicU64,
    /// Replay lag seen at the last check (µs).
    pub lag_us: AtomicU64,
    /// Largest replay lag seen (µs).
    pub max_lag_us: AtomicU64,
}

/// A `LogSink` over the channel's appender.
#[derive(Debug)]
pub struct ChannelSink {
    app: Appender,
    /// Inline mode: the sink drives the channel itself (see `inline.rs`).
    inline: Option<InlineShared>,
    shared: Arc<PrimaryShared>,
    lag_limit: Duration,
    samples: VecDeque<(u64, Instant)>,
    stats: Arc<SinkStats>,
}

impl ChannelSink {
    /// A sink appending with `app`, watching the channel thread through
    /// `shared`, slowing the guest when replay lags over `lag_limit`.
    pub fn new(app: Appender, shared: Arc<PrimaryShared>, lag_limit: Duration) -> ChannelSink {
        ChannelSink {
            app,
            inline: None,
            shared,
            lag_limit,
            samples: VecDeque::new(),
            stats: Arc::new(SinkStats::default()),
        }
    }

    /// A sink that also drives the inline channel `inline`.
    pub(crate) fn inline(
        app: Appender,
        inline: InlineShared,
        shared: Arc<PrimaryShared>,
        lag_limit: Duration,
    ) -> ChannelSink {
        ChannelSink {
            inline: Some(inline),
            ..ChannelSink::new(app, shared, lag_limit)
        }
    }

    /// The counters (for the status endpoint and reports).
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    fn channel_gone(&self) -> LogSinkError {
        LogSinkError::Closed(format!(
            "the channel to the backup stopped (last seq sent {}, acked {}); its error follows",
            self.shared.last_sent_seq(),
            self.shared.acked_seq()
        ))
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
        let now = Instant::now();
        self.samples.push_back((seq, now));
        let lag = self.lag(now);
        let lag_us = lag.as_micros() as u64;
        // Relaxed: reporting counters.
        self.stats.lag_us.store(lag_us, Ordering::Relaxed);
        self.stats.max_lag_us.fetch_max(lag_us, Ordering::Relaxed);
        if lag > self.lag_limit {
            // Proportional: the further behind, the longer the guest pauses.
            let pause = ((lag - self.lag_limit) / 4).min(MAX_LAG_SLEEP);
            std::thread::sleep(pause);
            self.stats.lag_sleeps.fetch_add(1, Ordering::Relaxed);
            self.stats
                .lag_sleep_us
                .fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl LogSink for ChannelSink {
    fn append(&mut self, header: &Header, payload: &[u8]) -> Result<(), LogSinkError> {
        if header.seq != self.app.next_seq() {
            return Err(LogSinkError::Closed(format!(
                "VMM appended seq {} but the channel's next seq is {}",
                header.seq,
                self.app.next_seq()
            )));
        }
        let mut waited: Option<Instant> = None;
        loop {
            match self.app.append(header.kind, header.exit_ordinal, payload) {
                Ok(_) => break,
                Err(AppendError::Full { .. }) => {
                    if self.shared.is_stopped() {
                        return Err(self.channel_gone());
                    }
                    // Flow control: the vCPU pauses until the channel drains
                    // (inline: it drains the ring itself).
                    waited.get_or_insert_with(Instant::now);
                    match &self.inline {
                        Some(i) => {
                            lock(i).pump();
                        }
                        None => std::hint::spin_loop(),
                    }
                }
                Err(e) => {
                    return Err(LogSinkError::Closed(format!(
                        "entry seq {} refused by the channel: {e}",
                        header.seq
                    )));
                }
            }
        }
        if let Some(t) = waited {
            self.stats.full_waits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .full_wait_us
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(header.frame_len() as u64, Ordering::Relaxed);
        self.stats
            .exit_ordinal
            .store(header.exit_ordinal, Ordering::Relaxed);
        if let Some(i) = &self.inline
            && header.kind.is_output()
        {
            // An output waits on this entry: ship it now.
            lock(i).pump();
        }
        if self.shared.is_stopped() {
            return Err(self.channel_gone());
        }
        self.lag_control(header.seq);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        // The channel thread ships committed entries on its own; the final
        // ACK is awaited by `PrimaryHandle::finish`.
        Ok(())
    }
}

/// Records into two sinks: the channel, and a log file kept on the primary's
/// host (`ftvm primary --backup ADDR --record-log FILE`).
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
    fn append(&mut self, header: &Header, payload: &[u8]) -> Result<(), LogSinkError> {
        self.first.append(header, payload)?;
        self.second.append(header, payload)
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        self.first.flush()?;
        self.second.flush()
    }
}

//! The primary end: ships committed log entries per the flush policy, takes
//! cumulative ACKs, sends ticks when idle and watches the backup's liveness.
//!
//! Flush policy (ARCHITECTURE "The logging channel"): everything committed
//! leaves in one `send` at once when it holds an OUTPUT entry; otherwise when
//! `batch_bytes` are pending or the oldest unsent entry is `max_delay_us` old.
//!
//! # The ACK lease (fencing)
//!
//! A backup declares the primary lost only after `peer_timeout_ms` without
//! receiving anything. So an ACK proving that the backup received a frame the
//! primary sent at time `t` also proves the backup cannot have gone live
//! before `t + peer_timeout`. [`Primary::lease_valid`] is true while
//! `now < t + peer_timeout - margin` for the newest such `t` (entries proved
//! by `acked_seq`, ticks proved by the echo in the backup's ACKs and ticks).
//! A primary that was paused past that point — SIGSTOP, a frozen host — wakes
//! with a lapsed lease and must not release an output on an ACK it holds:
//! the backup may be live by now (docs/failover.md).

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use ftvm_ring::log::Consumer;
use ftvm_tuning::ChannelSettings;
use ftvm_wire::control::{Ack, Control, Goodbye, Released, Role, Tick};
use ftvm_wire::raw;

use crate::appender::Appender;
use crate::error::ChannelError;
use crate::link::{HelloParams, Link, LinkStats};
use crate::transport::{Transport, TransportError};

/// Counters of the primary end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimaryStats {
    /// Connection traffic.
    pub link: LinkStats,
    /// Log entries handed to the transport.
    pub entries_sent: u64,
    /// Log bytes handed to the transport.
    pub entry_bytes_sent: u64,
    /// ACK frames received.
    pub acks: u64,
    /// Flushes triggered by an OUTPUT entry.
    pub output_flushes: u64,
}

/// Unsent part of the log ring, as the sender sees it.
#[derive(Debug)]
struct Outbox {
    consumer: Consumer,
    /// Bytes of the head records already handed to the transport (a record cut by a short send).
    partial: usize,
    /// Bytes from the head already scanned for OUTPUT flags and seqs.
    scanned: usize,
    /// An OUTPUT entry is among the scanned, unsent bytes.
    output_pending: bool,
    /// When the sender first saw the oldest unsent entry.
    pending_since: Option<Instant>,
    /// Seq of the last entry scanned.
    last_scanned_seq: u64,
}

/// The primary end of a connected channel. Drive it with [`Primary::poll`].
#[derive(Debug)]
pub struct Primary {
    link: Link,
    out: Outbox,
    batch_bytes: usize,
    max_delay: Duration,
    tick_interval: Duration,
    peer_timeout: Duration,
    last_sent_seq: u64,
    acked: Ack,
    stats: PrimaryStats,
    peer_goodbye: bool,
    capture: Option<Capture>,
    /// Start of this connection's clock (tick `time_ns`).
    epoch: Instant,
    /// Send times of shipped entries: (last seq of a send, when), oldest first.
    sends: VecDeque<(u64, Instant)>,
    /// Send time of the newest frame the backup proved it received.
    proved_sent_at: Option<Instant>,
    /// How long a proof stays good: `peer_timeout - margin`.
    lease: Duration,
    /// Released-through watermark to report, and the last one reported.
    released: u64,
    released_sent: u64,
    released_sent_at: Instant,
    /// The VM name the backup's Hello gave (empty: it adopted ours).
    peer_vm: String,
    /// Start of the last full poll.
    last_poll: Instant,
    /// The transport reports delivery itself (rdma with `completion_ack`):
    /// (stream end of the whole records of a send, their last seq), oldest first.
    delivery: Option<VecDeque<(u64, u64)>>,
    /// Highest seq the transport proved is in the backup's memory.
    delivered_seq: u64,
}

/// Unacked sends the RTT queue holds before it grows (reserved at the
/// handshake so steady shipping does not allocate).
const SENDS_RESERVED: usize = 1024;

/// [`Primary::poll_exit`] receives at most this often.
pub const RECEIVE_EVERY: Duration = Duration::from_micros(50);

/// Shortest gap between two `Released` watermark frames.
const RELEASED_EVERY: Duration = Duration::from_millis(1);

/// The lease's safety margin: covers clock-rate differences between the two
/// hosts and the time from the check to the release.
pub fn lease_margin(peer_timeout: Duration) -> Duration {
    Duration::from_millis(5) + peer_timeout / 10
}

/// The capture sink (a newtype so `Primary` stays `Debug`).
struct Capture(Box<dyn Write + Send>);

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Capture")
    }
}

impl Primary {
    /// Creates the log ring (`ring_bytes`), performs the handshake over
    /// `transport` and returns the primary end and the appender for the
    /// thread that records entries.
    pub fn establish(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
    ) -> Result<(Primary, Appender), ChannelError> {
        let (producer, consumer) = ftvm_ring::log::with_capacity(settings.ring_bytes)?;
        let first_seq = params.next_seq.max(1);
        let primary = Primary::establish_on(transport, settings, params, consumer)?;
        Ok((primary, Appender::new(producer, first_seq)))
    }

    /// [`Primary::establish`] over an existing log ring (whose consumer was
    /// given back by [`Primary::into_consumer`]): a new backup joins a log
    /// that goes on. `params.next_seq` is the seq of the next record the ring
    /// will hold; the ring must hold nothing unsent.
    pub fn establish_on(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
        consumer: Consumer,
    ) -> Result<Primary, ChannelError> {
        Primary::join(transport, settings, params, consumer).map_err(|b| b.0)
    }

    /// [`Primary::establish_on`] that gives the consumer back when the
    /// handshake fails, so that the log goes on (a spare that died while
    /// joining).
    pub fn join(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
        consumer: Consumer,
    ) -> Result<Primary, Box<(ChannelError, Consumer)>> {
        let first_seq = params.next_seq.max(1);
        let mut link = Link::new(transport);
        let timeout = Duration::from_millis(settings.peer_timeout_ms);
        let peer = match link.handshake(
            Role::Primary,
            HelloParams {
                next_seq: first_seq,
                ..params
            },
            timeout,
        ) {
            Ok(p) => p,
            Err(e) => return Err(Box::new((e, consumer))),
        };
        let now = Instant::now();
        let delivery = link.t.delivered().map(|_| VecDeque::new());
        Ok(Primary {
            delivery,
            delivered_seq: first_seq - 1,
            link,
            out: Outbox {
                consumer,
                partial: 0,
                scanned: 0,
                output_pending: false,
                pending_since: None,
                last_scanned_seq: first_seq - 1,
            },
            batch_bytes: settings.batch_bytes,
            max_delay: Duration::from_micros(settings.max_delay_us),
            tick_interval: Duration::from_millis(settings.tick_interval_ms),
            peer_timeout: timeout,
            last_sent_seq: first_seq - 1,
            acked: Ack {
                acked_seq: first_seq - 1,
                replayed_seq: first_seq - 1,
                replay_ordinal: 0,
                echo_ns: 0,
            },
            stats: PrimaryStats::default(),
            peer_goodbye: false,
            capture: None,
            epoch: now,
            sends: VecDeque::with_capacity(SENDS_RESERVED),
            // The handshake itself proves the backup heard us just now.
            proved_sent_at: Some(now),
            lease: timeout.saturating_sub(lease_margin(timeout)),
            released: first_seq - 1,
            released_sent: first_seq - 1,
            released_sent_at: now,
            peer_vm: peer.vm,
            last_poll: now,
        })
    }

    /// The connection is over (the backup is lost): gives back the log
    /// ring's consumer so that whoever drives the log goes on draining it
    /// (an unprotected primary discards entries) or hands it to the next
    /// backup ([`Primary::establish_on`]).
    pub fn into_consumer(self) -> Consumer {
        self.out.consumer
    }

    /// True while an ACK may release an output: the newest frame the backup
    /// proved it received was sent less than `peer_timeout - margin` ago
    /// (module doc, "The ACK lease").
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.proved_sent_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.lease)
    }

    /// Records the released-through watermark; the backup hears of it in a
    /// `Released` frame (at most one per millisecond, and before goodbye).
    pub fn report_released(&mut self, seq: u64) {
        self.released = self.released.max(seq);
    }

    /// When [`Primary::poll`] must run next at the latest: a tick falls due,
    /// or the backup's silence reaches `peer_timeout`.
    pub fn next_deadline(&self) -> Instant {
        (self.link.last_tx + self.tick_interval).min(self.link.last_rx + self.peer_timeout)
    }

    /// The VM name the backup's Hello named (empty when it adopted ours).
    pub fn peer_vm(&self) -> &str {
        &self.peer_vm
    }

    fn tick_time_ns(&self, now: Instant) -> u64 {
        // Never 0: 0 means "no tick" in the backup's echo.
        now.saturating_duration_since(self.epoch).as_nanos() as u64 + 1
    }

    /// The backup proved it received what we sent at `at`.
    fn proved(&mut self, at: Instant) {
        if self.proved_sent_at.is_none_or(|t| at > t) {
            self.proved_sent_at = Some(at);
        }
    }

    fn proved_echo(&mut self, echo_ns: u64) {
        if echo_ns > 0 {
            self.proved(self.epoch + Duration::from_nanos(echo_ns - 1));
        }
    }

    /// Writes every entry byte exactly as shipped to `w`, after a log-file
    /// header (`ftvm_wire::logfile`): `ftvm log inspect` reads it back.
    pub fn capture_to(&mut self, mut w: Box<dyn Write + Send>) -> Result<(), ChannelError> {
        w.write_all(&ftvm_wire::logfile::file_header())
            .map_err(ChannelError::Capture)?;
        self.capture = Some(Capture(w));
        Ok(())
    }

    /// Highest entry seq the backup has ACKed (received and validated), or —
    /// with a transport that reports delivery (`rdma.completion_ack`) — that
    /// the RC completions prove is in the backup's memory, if higher.
    pub fn acked_seq(&self) -> u64 {
        self.acked.acked_seq.max(self.delivered_seq)
    }

    /// Takes the transport's delivery report (completion-as-ACK transports only).
    fn take_delivery(&mut self) {
        let (Some(marks), Some(delivered)) = (self.delivery.as_mut(), self.link.t.delivered())
        else {
            return;
        };
        while let Some(&(end, seq)) = marks.front() {
            if end > delivered {
                break;
            }
            self.delivered_seq = seq;
            marks.pop_front();
        }
        // What landed in the backup's memory proves its sends, like an ACK.
        let mut proved = None;
        while let Some(&(seq, at)) = self.sends.front() {
            if seq > self.delivered_seq {
                break;
            }
            proved = Some(at);
            self.sends.pop_front();
        }
        if let Some(at) = proved {
            self.proved(at);
        }
    }

    /// The backup's last reported replay position.
    pub fn replay(&self) -> (u64, u64) {
        (self.acked.replayed_seq, self.acked.replay_ordinal)
    }

    /// Highest entry seq handed to the transport.
    pub fn last_sent_seq(&self) -> u64 {
        self.last_sent_seq
    }

    /// Counters.
    pub fn stats(&self) -> PrimaryStats {
        PrimaryStats {
            link: self.link.stats,
            ..self.stats
        }
    }

    /// Peer address.
    pub fn peer(&self) -> &str {
        &self.link.peer
    }

    /// The transport's readiness fd, if it has one (see `Transport::readable_fd`).
    pub fn readable_fd(&self) -> Option<std::os::fd::RawFd> {
        self.link.t.readable_fd()
    }

    fn transport_err(&self, what: &'static str, source: TransportError) -> ChannelError {
        ChannelError::Transport {
            what,
            last_sent: self.last_sent_seq,
            last_acked: self.acked.acked_seq,
            last_received: 0,
            source,
        }
    }

    /// The cheap round for the end of a guest exit (inline mode): ships
    /// what the flush policy says is due — at once when an OUTPUT entry
    /// waits — and does a whole [`Primary::poll`] (ACKs, ticks, liveness)
    /// only when the last one is [`RECEIVE_EVERY`] old, so an exit costs no
    /// system call when there is nothing to send.
    pub fn poll_exit(&mut self) -> Result<usize, ChannelError> {
        let now = Instant::now();
        if now.saturating_duration_since(self.last_poll) >= RECEIVE_EVERY {
            return self.poll();
        }
        self.ship(now, false)
    }

    /// One round of work: take ACKs, ship entries per the flush policy, tick,
    /// check liveness. Returns the amount of work done (0: idle round).
    pub fn poll(&mut self) -> Result<usize, ChannelError> {
        let now = Instant::now();
        self.last_poll = now;
        let mut work = self.receive(now)?;
        work += self.ship(now, false)?;
        self.take_delivery();
        if now.saturating_duration_since(self.link.last_tx) >= self.tick_interval
            && self.out.partial == 0
            && !self.link.control_pending()
        {
            self.link.queue(Control::Tick(Tick {
                last_seq: self.last_sent_seq,
                time_ns: self.tick_time_ns(now),
            }));
        }
        if self.released > self.released_sent
            && now.saturating_duration_since(self.released_sent_at) >= RELEASED_EVERY
            && self.out.partial == 0
        {
            self.queue_released(now);
        }
        work += self
            .link
            .flush_control(now)
            .map_err(|e| self.transport_err("send tick", e))?;
        self.check_liveness(now)?;
        Ok(work)
    }

    fn queue_released(&mut self, now: Instant) {
        self.link.queue(Control::Released(Released {
            released_seq: self.released,
        }));
        self.released_sent = self.released;
        self.released_sent_at = now;
    }

    fn check_liveness(&self, now: Instant) -> Result<(), ChannelError> {
        let silent = self.link.silent_for(now);
        if silent > self.peer_timeout {
            return Err(ChannelError::PeerTimeout {
                peer: self.link.peer.clone(),
                silent_ms: silent.as_millis() as u64,
                timeout_ms: self.peer_timeout.as_millis() as u64,
                last_sent: self.last_sent_seq,
                last_acked: self.acked.acked_seq,
                last_received: 0,
            });
        }
        Ok(())
    }

    fn receive(&mut self, now: Instant) -> Result<usize, ChannelError> {
        let mut total = 0;
        // Bounded: a flood of ACKs must not starve the send side.
        for _ in 0..4 {
            let n = match self.link.fill(now) {
                Ok(n) => n,
                Err(TransportError::Closed) if self.peer_goodbye => 0,
                Err(e) => return Err(self.transport_err("receive acks", e)),
            };
            self.process_frames()?;
            total += n;
            if n == 0 || self.link.rx.drained() {
                break;
            }
        }
        Ok(total)
    }

    fn process_frames(&mut self) -> Result<(), ChannelError> {
        loop {
            let (offset, frame) = match self.link.rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(bad) => {
                    return Err(ChannelError::Corrupt {
                        offset: bad.offset,
                        expected_seq: 0,
                        source: bad.error,
                    });
                }
            };
            let kind = frame.header.kind;
            let seq = frame.header.seq;
            let parsed = Control::parse(kind, frame.payload);
            self.link.stats.control_in += 1;
            match parsed {
                Some(Ok(Control::Ack(ack))) => self.take_ack(ack)?,
                Some(Ok(Control::Tick(t))) => self.proved_echo(t.time_ns),
                Some(Ok(Control::Goodbye(_))) => self.peer_goodbye = true,
                Some(Ok(Control::Stop(stop))) => {
                    return Err(ChannelError::PeerStopped {
                        peer: self.link.peer.clone(),
                        cause: stop.cause.name(),
                        last_seq: stop.last_seq,
                        reason: stop.reason,
                    });
                }
                Some(Ok(Control::Released(_))) => {
                    return Err(self.protocol(format!(
                        "backup sent a released watermark at stream offset {offset}"
                    )));
                }
                Some(Ok(Control::Hello(_))) => {
                    return Err(self.protocol(format!("second hello at stream offset {offset}")));
                }
                Some(Err(source)) => return Err(ChannelError::Control { offset, source }),
                None => {
                    return Err(self.protocol(format!(
                        "backup sent a {kind} entry (seq {seq}) at stream offset {offset}"
                    )));
                }
            }
        }
    }

    fn protocol(&self, what: String) -> ChannelError {
        ChannelError::Protocol {
            peer: self.link.peer.clone(),
            what,
        }
    }

    fn take_ack(&mut self, ack: Ack) -> Result<(), ChannelError> {
        if ack.acked_seq > self.last_sent_seq {
            return Err(self.protocol(format!(
                "ACK for seq {} but the last seq sent is {}",
                ack.acked_seq, self.last_sent_seq
            )));
        }
        if ack.acked_seq < self.acked.acked_seq {
            return Err(self.protocol(format!(
                "ACK went backwards from seq {} to {}",
                self.acked.acked_seq, ack.acked_seq
            )));
        }
        // Entries up to acked_seq were received: the newest send they were
        // part of is proved.
        let mut proved = None;
        while let Some(&(seq, at)) = self.sends.front() {
            if seq > ack.acked_seq {
                break;
            }
            proved = Some(at);
            self.sends.pop_front();
        }
        if let Some(at) = proved {
            self.proved(at);
        }
        self.proved_echo(ack.echo_ns);
        self.acked = ack;
        self.stats.acks += 1;
        Ok(())
    }

    /// Scans newly committed records, applies the flush policy and sends.
    /// `force` ships everything regardless of the policy (shutdown).
    fn ship(&mut self, now: Instant, force: bool) -> Result<usize, ChannelError> {
        if self.link.control_pending() && self.out.partial == 0 {
            // A control frame is half out: finish it before any entry bytes.
            self.link
                .flush_control(now)
                .map_err(|e| self.transport_err("send control", e))?;
            if self.link.control_pending() {
                return Ok(0);
            }
        }
        let chunk = self.out.consumer.read();
        let total = chunk.len();
        if total > self.out.scanned {
            if self.out.scanned == self.out.partial && self.out.pending_since.is_none() {
                self.out.pending_since = Some(now);
            }
            let mut pos = 0;
            for rec in chunk.records() {
                if pos >= self.out.scanned {
                    self.out.output_pending |= raw::is_output(rec);
                    self.out.last_scanned_seq = raw::seq(rec);
                }
                pos += rec.len();
            }
            self.out.scanned = total;
        }
        let unsent = total - self.out.partial;
        if unsent == 0 {
            return Ok(0);
        }
        let due = force
            || self.out.partial > 0
            || self.out.output_pending
            || unsent >= self.batch_bytes
            || self
                .out
                .pending_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.max_delay);
        if !due {
            return Ok(0);
        }
        let (a, b) = chunk.slices();
        let skip = self.out.partial;
        let bufs: [&[u8]; 2] = if skip < a.len() {
            [&a[skip..], b]
        } else {
            [&b[skip - a.len()..], &[]]
        };
        let n = match self.link.send(&bufs, now) {
            Ok(n) => n,
            Err(e) => return Err(self.transport_err("send entries", e)),
        };
        if n == 0 {
            return Ok(0);
        }
        if self.out.output_pending {
            self.stats.output_flushes += 1;
        }
        if let Some(w) = self.capture.as_mut() {
            let mut left = n;
            for b in bufs {
                let take = left.min(b.len());
                w.0.write_all(&b[..take]).map_err(ChannelError::Capture)?;
                left -= take;
            }
        }
        let sent_total = skip + n;
        // Seq and count of the whole records now out of our hands.
        let mut pos = 0;
        let mut last_seq = self.last_sent_seq;
        let mut entries = 0;
        for rec in chunk.records() {
            if pos + rec.len() > sent_total {
                break;
            }
            pos += rec.len();
            last_seq = raw::seq(rec);
            entries += 1;
        }
        let released = chunk.release_up_to(sent_total);
        debug_assert_eq!(released, pos);
        self.stats.entries_sent += entries;
        self.stats.entry_bytes_sent += released as u64;
        if entries > 0 {
            // Bounded by the unACKed sends; ACKs drain it.
            self.sends.push_back((last_seq, now));
        }
        self.last_sent_seq = last_seq;
        self.out.partial = sent_total - released;
        self.out.scanned -= released;
        if let Some(marks) = self.delivery.as_mut()
            && entries > 0
        {
            // The stream position after the last whole record of this send.
            marks.push_back((
                self.link.stats.bytes_out - self.out.partial as u64,
                last_seq,
            ));
        }
        if self.out.partial == self.out.scanned {
            self.out.output_pending = false;
            self.out.pending_since = None;
        }
        Ok(n)
    }

    /// Blocks up to `timeout` for the transport (park idle strategy).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), ChannelError> {
        self.link
            .wait(self.out.partial > 0, timeout)
            .map_err(|e| self.transport_err("wait", e))
    }

    /// Orderly shutdown: ships every committed entry, waits up to `timeout`
    /// for the ACK covering the last one, says goodbye.
    pub fn finish(&mut self, timeout: Duration) -> Result<PrimaryStats, ChannelError> {
        let start = Instant::now();
        loop {
            let now = Instant::now();
            self.receive(now)?;
            self.ship(now, true)?;
            self.link
                .flush_control(now)
                .map_err(|e| self.transport_err("send control", e))?;
            if self.out.consumer.is_empty() && self.acked.acked_seq == self.last_sent_seq {
                break;
            }

            self.check_liveness(now)?;
            if start.elapsed() > timeout {
                return Err(self.protocol(format!(
                    "no ACK for seq {} within {} ms of shutdown (acked {})",
                    self.last_sent_seq,
                    timeout.as_millis(),
                    self.acked.acked_seq
                )));
            }
            std::hint::spin_loop();
        }
        if self.released > self.released_sent {
            self.queue_released(Instant::now());
        }
        self.link.queue(Control::Goodbye(Goodbye {
            last_seq: self.last_sent_seq,
        }));
        while self.link.control_pending() {
            self.link
                .flush_control(Instant::now())
                .map_err(|e| self.transport_err("send goodbye", e))?;
            if start.elapsed() > timeout {
                break;
            }
        }
        if let Some(w) = self.capture.as_mut() {
            w.0.flush().map_err(ChannelError::Capture)?;
        }
        Ok(self.stats())
    }
}

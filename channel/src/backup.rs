//! The backup end: receives and validates entries (CRC, version, kind,
//! length, sequence continuity), hands each to the caller, and sends
//! cumulative ACKs that also carry the replay position.
//!
//! ACK policy: at once when an OUTPUT entry arrived (the primary's output
//! waits for it); otherwise every `ack_every` entries or `ack_delay_us` after
//! the first unACKed one, and when the replay position moved.

use std::time::{Duration, Instant};

use ftvm_tuning::ChannelSettings;
use ftvm_wire::Frame;
use ftvm_wire::control::{Ack, Control, Goodbye, Hello, Role, Stop, StopCause, Tick};

use crate::error::ChannelError;
use crate::link::{HelloParams, Link, LinkStats};
use crate::transport::{Transport, TransportError};

/// Counters of the backup end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// Connection traffic.
    pub link: LinkStats,
    /// Log entries received and validated.
    pub entries: u64,
    /// Bytes of those entries (whole frames).
    pub entry_bytes: u64,
    /// OUTPUT entries among them.
    pub outputs: u64,
    /// ACK frames sent.
    pub acks: u64,
}

/// The backup end of a connected channel. Drive it with [`Backup::poll`].
#[derive(Debug)]
pub struct Backup {
    link: Link,
    expected_seq: u64,
    ack_every: u64,
    ack_delay: Duration,
    tick_interval: Duration,
    peer_timeout: Duration,
    acked: Ack,
    replayed_seq: u64,
    replay_ordinal: u64,
    unacked: u64,
    unacked_since: Option<Instant>,
    ack_now: bool,
    peer_goodbye: Option<u64>,
    goodbye_sent: bool,
    last_ack_at: Instant,
    ended: bool,
    stats: BackupStats,
    /// `time_ns` of the newest primary tick (echoed to renew its ACK lease).
    echo_ns: u64,
    /// A primary tick arrived: echo it at once.
    echo_now: bool,
    /// The primary's released-through watermark.
    released_seq: u64,
    /// The primary's Hello (VM name, generation, guest).
    peer_hello: Hello,
}

impl Backup {
    /// Performs the handshake over `transport`. With `params.next_seq == 0`
    /// the backup adopts the primary's first seq.
    pub fn establish(
        transport: Box<dyn Transport>,
        settings: &ChannelSettings,
        params: HelloParams,
    ) -> Result<Backup, ChannelError> {
        let mut link = Link::new(transport);
        let timeout = Duration::from_millis(settings.peer_timeout_ms);
        let theirs = link.handshake(Role::Backup, params, timeout)?;
        let first = theirs.next_seq.max(1);
        let released_seq = first - 1;
        Ok(Backup {
            link,
            expected_seq: first,
            ack_every: u64::from(settings.ack_every),
            ack_delay: Duration::from_micros(settings.ack_delay_us),
            tick_interval: Duration::from_millis(settings.tick_interval_ms),
            peer_timeout: timeout,
            acked: Ack {
                acked_seq: first - 1,
                replayed_seq: first - 1,
                replay_ordinal: 0,
                echo_ns: 0,
            },
            replayed_seq: first - 1,
            replay_ordinal: 0,
            unacked: 0,
            unacked_since: None,
            ack_now: false,
            peer_goodbye: None,
            goodbye_sent: false,
            last_ack_at: Instant::now(),
            ended: false,
            stats: BackupStats::default(),
            echo_ns: 0,
            echo_now: false,
            released_seq,
            peer_hello: theirs,
        })
    }

    /// The primary's Hello: the VM name and generation the pair runs at.
    pub fn peer_hello(&self) -> &Hello {
        &self.peer_hello
    }

    /// The primary's released-through watermark: every output whose entry
    /// has a seq up to it has left the primary (sent, or written to disk).
    pub fn released_seq(&self) -> u64 {
        self.released_seq
    }

    /// This backup stops replaying: tells the primary why (a Stop frame,
    /// sent within `wait`) so that it treats the backup as lost at once
    /// rather than waiting for a timeout; then the connection is done. A
    /// dead primary makes this a no-op.
    pub fn stop(&mut self, cause: StopCause, reason: &str, wait: Duration) {
        if self.ended {
            return;
        }
        self.link.queue(Control::Stop(Stop {
            last_seq: self.replayed_seq,
            cause,
            reason: reason.to_owned(),
        }));
        let start = Instant::now();
        while self.link.control_pending() && start.elapsed() < wait {
            match self.link.flush_control(Instant::now()) {
                Ok(0) => {
                    let _ = self.link.wait(true, Duration::from_millis(1));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Bytes accepted by a transport with an internal queue (io_uring)
        // still need a push.
        while self.link.t.pending_send() > 0 && start.elapsed() < wait {
            if self.link.t.progress().is_err() {
                break;
            }
        }
        self.ended = true;
    }

    /// Highest entry seq received and validated.
    pub fn received_seq(&self) -> u64 {
        self.expected_seq - 1
    }

    /// Highest entry seq ACKed to the primary.
    pub fn acked_seq(&self) -> u64 {
        self.acked.acked_seq
    }

    /// True once the primary said goodbye and everything is ACKed.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Counters.
    pub fn stats(&self) -> BackupStats {
        BackupStats {
            link: LinkStats {
                control_in: self.stats.link.control_in,
                ..self.link.stats
            },
            ..self.stats
        }
    }

    /// Peer address.
    pub fn peer(&self) -> &str {
        &self.link.peer
    }

    /// Reports the replay position carried by the next ACK.
    pub fn set_replayed(&mut self, seq: u64, exit_ordinal: u64) {
        self.replayed_seq = seq.min(self.received_seq());
        self.replay_ordinal = exit_ordinal;
    }

    fn transport_err(&self, what: &'static str, source: TransportError) -> ChannelError {
        ChannelError::Transport {
            what,
            last_sent: 0,
            last_acked: self.acked.acked_seq,
            last_received: self.received_seq(),
            source,
        }
    }

    /// One round: receive and validate entries (each handed to `on_entry`
    /// with its stream offset, in order), ACK per policy, tick, check
    /// liveness. Returns work done. After an error nothing more is delivered.
    pub fn poll(&mut self, on_entry: impl FnMut(u64, &Frame<'_>)) -> Result<usize, ChannelError> {
        self.poll_budget(usize::MAX, on_entry)
    }

    /// [`Backup::poll`] delivering at most `budget` bytes of whole frames
    /// (the rest stays buffered): lets a consumer with bounded room apply
    /// back-pressure instead of dropping entries.
    pub fn poll_budget(
        &mut self,
        mut budget: usize,
        mut on_entry: impl FnMut(u64, &Frame<'_>),
    ) -> Result<usize, ChannelError> {
        let now = Instant::now();
        let mut work = 0;
        if !self.ended {
            for _ in 0..8 {
                if self.link.rx.buffered() >= budget {
                    break;
                }
                let n = match self.link.fill(now) {
                    Ok(n) => n,
                    Err(TransportError::Closed | TransportError::PeerLost(_))
                        if self.peer_goodbye.is_some() =>
                    {
                        0
                    }
                    Err(e) => {
                        if let Some(bad) = self.link.rx.truncated_at_close() {
                            return Err(ChannelError::Corrupt {
                                offset: bad.offset,
                                expected_seq: self.expected_seq,
                                source: bad.error,
                            });
                        }
                        return Err(self.transport_err("receive entries", e));
                    }
                };
                work += n;
                self.process_frames(now, &mut budget, &mut on_entry)?;
                if n == 0 || self.link.rx.drained() {
                    break;
                }
            }
        }
        self.maybe_ack(now);
        if (self.echo_now || now.saturating_duration_since(self.link.last_tx) >= self.tick_interval)
            && !self.link.control_pending()
        {
            self.link.queue(Control::Tick(Tick {
                last_seq: self.acked.acked_seq,
                time_ns: self.echo_ns,
            }));
            self.echo_now = false;
        }
        match self.link.flush_control(now) {
            Ok(n) => work += n,
            // The primary said goodbye after our ACK covered its last entry,
            // and may close before our own goodbye is out: an orderly end.
            Err(TransportError::Closed | TransportError::PeerLost(_)) if self.goodbye_sent => {
                self.ended = true;
            }
            Err(e) => return Err(self.transport_err("send acks", e)),
        }
        if self.goodbye_sent && !self.link.control_pending() {
            self.ended = true;
        }
        let silent = self.link.silent_for(now);
        if !self.ended && self.peer_goodbye.is_none() && silent > self.peer_timeout {
            return Err(ChannelError::PeerTimeout {
                peer: self.link.peer.clone(),
                silent_ms: silent.as_millis() as u64,
                timeout_ms: self.peer_timeout.as_millis() as u64,
                last_sent: 0,
                last_acked: self.acked.acked_seq,
                last_received: self.received_seq(),
            });
        }
        Ok(work)
    }

    fn process_frames(
        &mut self,
        now: Instant,
        budget: &mut usize,
        on_entry: &mut impl FnMut(u64, &Frame<'_>),
    ) -> Result<(), ChannelError> {
        loop {
            let expected = self.expected_seq;
            if self.link.rx.peek_len().is_some_and(|len| len > *budget) {
                return Ok(());
            }
            let (offset, frame) = match self.link.rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(bad) => {
                    return Err(ChannelError::Corrupt {
                        offset: bad.offset,
                        expected_seq: expected,
                        source: bad.error,
                    });
                }
            };
            let h = frame.header;
            if h.kind.is_control() {
                self.stats.link.control_in += 1;
                match Control::parse(h.kind, frame.payload) {
                    Some(Ok(Control::Tick(t))) => {
                        if t.time_ns > self.echo_ns {
                            self.echo_ns = t.time_ns;
                            self.echo_now = true;
                        }
                    }
                    Some(Ok(Control::Released(r))) => {
                        if r.released_seq > expected - 1 {
                            return Err(ChannelError::Protocol {
                                peer: self.link.peer.clone(),
                                what: format!(
                                    "released watermark seq {} at stream offset {offset} is beyond the last seq received {}",
                                    r.released_seq,
                                    expected - 1
                                ),
                            });
                        }
                        self.released_seq = self.released_seq.max(r.released_seq);
                    }
                    Some(Ok(Control::Goodbye(g))) => {
                        if g.last_seq != expected - 1 {
                            return Err(ChannelError::Protocol {
                                peer: self.link.peer.clone(),
                                what: format!(
                                    "goodbye at stream offset {offset} claims last seq {}, received {}",
                                    g.last_seq,
                                    expected - 1
                                ),
                            });
                        }
                        self.peer_goodbye = Some(g.last_seq);
                        self.ack_now = true;
                    }
                    Some(Ok(c)) => {
                        return Err(ChannelError::Protocol {
                            peer: self.link.peer.clone(),
                            what: format!("primary sent {} at stream offset {offset}", c.kind()),
                        });
                    }
                    Some(Err(source)) => return Err(ChannelError::Control { offset, source }),
                    None => unreachable!("is_control kinds all parse"),
                }
                continue;
            }
            if self.peer_goodbye.is_some() || h.seq != expected {
                return Err(ChannelError::Sequence {
                    offset,
                    expected,
                    found: h.seq,
                    kind: h.kind,
                });
            }
            on_entry(offset, &frame);
            *budget -= frame.bytes.len();
            self.expected_seq += 1;
            self.stats.entries += 1;
            self.stats.entry_bytes += h.frame_len() as u64;
            if h.kind.is_output() {
                self.stats.outputs += 1;
                self.ack_now = true;
            }
            self.unacked += 1;
            if self.unacked_since.is_none() {
                self.unacked_since = Some(now);
            }
        }
    }

    fn maybe_ack(&mut self, now: Instant) {
        let received = self.received_seq();
        if let Some(last) = self.peer_goodbye
            && !self.goodbye_sent
            && received == last
        {
            // The primary is leaving: final ACK and our goodbye, at once.
            self.send_ack(now, received);
            self.link
                .queue(Control::Goodbye(Goodbye { last_seq: last }));
            self.goodbye_sent = true;
            return;
        }
        let replay_moved = self.replayed_seq != self.acked.replayed_seq;
        let due = self.ack_now
            || self.unacked >= self.ack_every
            || (self.unacked > 0
                && self
                    .unacked_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.ack_delay))
            || (replay_moved && now.saturating_duration_since(self.last_ack_at) >= self.ack_delay);
        if due && (received != self.acked.acked_seq || replay_moved) {
            self.send_ack(now, received);
        }
        self.ack_now = false;
    }

    fn send_ack(&mut self, now: Instant, received: u64) {
        self.acked = Ack {
            acked_seq: received,
            replayed_seq: self.replayed_seq,
            replay_ordinal: self.replay_ordinal,
            echo_ns: self.echo_ns,
        };
        self.link.queue(Control::Ack(self.acked));
        self.stats.acks += 1;
        self.unacked = 0;
        self.unacked_since = None;
        self.last_ack_at = now;
    }

    /// Blocks up to `timeout` for the transport (park idle strategy).
    pub fn wait(&mut self, timeout: Duration) -> Result<(), ChannelError> {
        self.link
            .wait(false, timeout)
            .map_err(|e| self.transport_err("wait", e))
    }
}

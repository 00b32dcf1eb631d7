//! [`Link`]: the one-sided ring protocol over any [`OneSidedPort`], both
//! directions of one connection.
//!
//! It is the protocol of [`ftvm_ring::pipe`] (positions that only grow,
//! credit written back by the reader, every value from the peer validated),
//! with the RDMA rules for when bytes are visible. Main flow:
//!
//! 1. **Send** ([`Link::send`]): free space is `capacity - (write_pos -
//!    credit)`; only when that is too small is the credit reloaded from our
//!    receive region (see [`crate::layout`]; a torn credit is ignored). The
//!    accepted prefix is copied once: into the post list itself when it is at
//!    most `max_inline` bytes (`IBV_SEND_INLINE`), else into the staging
//!    region at the ring offset it will have at the peer. One post list (one
//!    doorbell) then carries the data as one or two RDMA WRITEs (two across
//!    the ring's end) and makes it visible:
//!    * **immediate** (default): the last WRITE is a WRITE WITH IMMEDIATE
//!      carrying the end position ([`crate::layout::encode_end`]);
//!    * **trailer**, only when the peer's queue pair reported in-order data
//!      placement: one more 8-byte inline WRITE stores the end position into
//!      the peer's trailer word, placed after the data.
//!
//!    A credit owed to the peer rides along in the same post list.
//! 2. **Signalling**: one work request in `signal_every` asks for a
//!    completion; slots are reclaimed when it is polled. A list that does not
//!    fit the free slots is not posted and `send` returns 0 (flow control),
//!    as for a full ring. With `completion_ack` the last request of every
//!    list is signalled and [`Link::delivered`] reports the stream position
//!    the completions cover: those bytes are in the peer's memory.
//! 3. **Receive** ([`Link::recv`]): poll completions; each immediate moves
//!    the visible end (validated against the window); in trailer mode the
//!    trailer word is loaded (Acquire) and validated instead. Visible bytes
//!    are copied out and the read position grows. Consumed immediates are
//!    replaced by fresh receives at once, so the peer never meets
//!    receiver-not-ready while it keeps to its limit of `rq_depth / 2`
//!    immediates in flight.
//! 4. **Credit, lazily**: the read position and the count of immediates
//!    taken go back as one 24-byte inline WRITE into the peer's credit
//!    triple when a quarter of the ring or of the receive queue was consumed
//!    since the last one, or for free with our next data. That is enough for
//!    liveness: once a reader has consumed everything, the writer's view is
//!    at most a quarter behind, so it always has room.
//! 5. **Errors**: a failed completion, a post the port refuses, an
//!    immediate, trailer or credit outside its window: the link fails with a
//!    [`TransferError`] and reports it again on every later call. Bytes are
//!    never delivered past what an immediate or trailer announced, so a fault
//!    is an error, never corruption.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::layout::{self, CREDIT_LEN, CREDIT_OFFSET, DATA_OFFSET, TRAILER_OFFSET};
use crate::port::{Completion, OneSidedPort, PortCaps, PostError, Source, WcStatus, WriteRequest};

/// How one direction's bytes become visible to its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// A WRITE WITH IMMEDIATE carrying the end position (needs posted receives).
    Immediate,
    /// An 8-byte trailer WRITE after the data (needs in-order placement at the reader).
    Trailer,
}

impl Visibility {
    /// The name used in settings and reports.
    pub fn name(self) -> &'static str {
        match self {
            Visibility::Immediate => "immediate",
            Visibility::Trailer => "trailer",
        }
    }
}

/// What both ends agreed on at connection time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkParams {
    /// Data bytes of our receive ring.
    pub local_capacity: usize,
    /// Data bytes of the peer's receive ring (our writes go there).
    pub remote_capacity: usize,
    /// How the peer's bytes become visible here (our choice, announced to it).
    pub local_visibility: Visibility,
    /// How our bytes become visible at the peer (its choice).
    pub remote_visibility: Visibility,
    /// The peer's receive-queue depth (bounds our immediates in flight).
    pub remote_rq_depth: u32,
    /// One work request in this many is signalled (1..=sq_depth/2).
    pub signal_every: u32,
    /// Largest write sent inline (at most the port's `max_inline`).
    pub max_inline: usize,
    /// Signal every post list so that [`Link::delivered`] follows the stream.
    pub completion_ack: bool,
}

/// Why the link failed. Every variant is fatal and reported again on every
/// later call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// A work request completed with an error.
    #[error("{what} (work request {wr_id}) failed: {status}")]
    Completion {
        /// `RDMA write` or `receive`.
        what: &'static str,
        /// Its id (writes are numbered from 0; receives report 0).
        wr_id: u64,
        /// The status.
        status: WcStatus,
    },
    /// The port refused a post.
    #[error("posting to the queue pair")]
    Post(#[from] PostError),
    /// Polling the completion queue failed.
    #[error("polling the completion queue")]
    Poll(#[from] crate::port::PollError),
    /// An immediate outside the window the receiver can accept.
    #[error(
        "peer announced immediate {imm:#010x}, outside the window after position {visible} \
         (read position {read_pos}, ring of {capacity} bytes)"
    )]
    BadImmediate {
        /// The immediate.
        imm: u32,
        /// End of the bytes already visible.
        visible: u64,
        /// Our read position.
        read_pos: u64,
        /// Our ring's capacity.
        capacity: usize,
    },
    /// An immediate in trailer mode, or a receive without an immediate.
    #[error("peer sent {what}, which this connection does not use")]
    Unexpected {
        /// What arrived.
        what: &'static str,
    },
    /// A trailer behind the visible end or more than the capacity ahead.
    #[error(
        "peer stored trailer {trailer}, outside {visible}..={} (read position {read_pos}, ring of {capacity} bytes)",
        read_pos + *capacity as u64
    )]
    BadTrailer {
        /// The trailer's value.
        trailer: u64,
        /// End of the bytes already visible.
        visible: u64,
        /// Our read position.
        read_pos: u64,
        /// Our ring's capacity.
        capacity: usize,
    },
    /// A well-formed credit that no honest peer could send.
    #[error(
        "peer stored credit {credit} (immediates {imms}); valid: {min_credit}..={write_pos} and {min_imms}..={imms_sent}"
    )]
    BadCredit {
        /// The credit.
        credit: u64,
        /// Its immediate count.
        imms: u64,
        /// Our last valid credit.
        min_credit: u64,
        /// Our write position.
        write_pos: u64,
        /// Our last valid immediate count.
        min_imms: u64,
        /// Immediates we sent.
        imms_sent: u64,
    },
    /// Posted writes did not complete in time.
    #[error("{left} posted work requests not completed after {waited_ms} ms")]
    Timeout {
        /// Requests still outstanding.
        left: u64,
        /// How long we waited.
        waited_ms: u64,
    },
}

/// Counters of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Post lists (doorbells).
    pub post_lists: u64,
    /// Work requests posted.
    pub work_requests: u64,
    /// Data writes sent inline.
    pub inline_writes: u64,
    /// Data writes sent from staging.
    pub staged_writes: u64,
    /// Signalled work requests.
    pub signaled: u64,
    /// Sends refused for want of send-queue slots.
    pub queue_full: u64,
    /// Sends refused for want of ring credit.
    pub credit_waits: u64,
    /// Sends refused for want of receives at the peer (immediates in flight).
    pub imm_waits: u64,
    /// Standalone credit writes.
    pub credit_writes: u64,
    /// Credits that rode along with data.
    pub credit_piggybacked: u64,
    /// Credit triples read torn (ignored).
    pub torn_credits: u64,
    /// Immediates received.
    pub imms_received: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
}

/// Completions taken per poll call.
const POLL_BATCH: usize = 64;

/// Both directions of one connection over a port.
#[derive(Debug)]
pub struct Link<P: OneSidedPort> {
    port: P,
    caps: PortCaps,
    p: LinkParams,
    // Sending.
    write_pos: u64,
    credit: u64,
    credit_imms: u64,
    imms_sent: u64,
    imm_limit: u64,
    // Send-queue accounting: work request ids are 0, 1, 2, ...
    next_wr: u64,
    freed: u64,
    unsignaled: u32,
    /// Signalled requests in flight and the stream end their completion proves landed.
    marks: VecDeque<(u64, u64)>,
    delivered: u64,
    // Receiving.
    read_pos: u64,
    visible: u64,
    imms_seen: u64,
    reported_pos: u64,
    reported_imms: u64,
    // Scratch.
    completions: Vec<Completion>,
    inline: Vec<u8>,
    failed: Option<TransferError>,
    stats: LinkStats,
}

impl<P: OneSidedPort> Link<P> {
    /// Starts the protocol on a connected port: posts a full receive queue
    /// when the peer will send immediates.
    pub fn new(mut port: P, p: LinkParams) -> Result<Link<P>, TransferError> {
        let caps = port.caps();
        assert!(
            layout::valid_capacity(p.local_capacity) && layout::valid_capacity(p.remote_capacity),
            "ring capacities {} / {} must be checked at connection setup",
            p.local_capacity,
            p.remote_capacity
        );
        assert!(
            caps.local_region_len >= layout::region_len(p.local_capacity)
                && caps.remote_region_len >= layout::region_len(p.remote_capacity)
                && caps.staging_len >= p.remote_capacity,
            "port regions {caps:?} smaller than the rings {p:?}"
        );
        let signal_every = p.signal_every.clamp(1, (caps.sq_depth / 2).max(1));
        if p.local_visibility == Visibility::Immediate {
            port.post_receives(caps.rq_depth)?;
        }
        Ok(Link {
            port,
            caps,
            p: LinkParams {
                signal_every,
                max_inline: p.max_inline.min(caps.max_inline),
                ..p
            },
            write_pos: 0,
            credit: 0,
            credit_imms: 0,
            imms_sent: 0,
            imm_limit: u64::from(p.remote_rq_depth / 2).max(1),
            next_wr: 0,
            freed: 0,
            unsignaled: 0,
            marks: VecDeque::new(),
            delivered: 0,
            read_pos: 0,
            visible: 0,
            imms_seen: 0,
            reported_pos: 0,
            reported_imms: 0,
            completions: Vec::with_capacity(POLL_BATCH),
            inline: Vec::with_capacity(p.max_inline),
            failed: None,
            stats: LinkStats::default(),
        })
    }

    /// The agreed parameters (`signal_every` and `max_inline` as clamped).
    pub fn params(&self) -> LinkParams {
        self.p
    }

    /// The port beneath.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// The port beneath, mutably (fault injection in tests).
    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Bytes accepted by [`Link::send`] so far.
    pub fn sent(&self) -> u64 {
        self.write_pos
    }

    /// Bytes returned by [`Link::recv`] so far.
    pub fn received(&self) -> u64 {
        self.read_pos
    }

    /// Stream position up to which completions prove our bytes are in the
    /// peer's memory (advances per post list with `completion_ack`, else per
    /// signalled request).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The error the link failed with, if it did.
    pub fn failure(&self) -> Option<&TransferError> {
        self.failed.as_ref()
    }

    fn check(&self) -> Result<(), TransferError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: TransferError) -> TransferError {
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        self.failed.clone().unwrap_or(e)
    }

    fn sq_free(&self) -> usize {
        self.caps.sq_depth as usize - (self.next_wr - self.freed) as usize
    }

    fn room(&self) -> usize {
        self.p.remote_capacity - (self.write_pos - self.credit) as usize
    }

    /// Sends a prefix of the concatenation of `bufs`; returns its length, 0
    /// when the ring, the send queue or the peer's receives are full.
    pub fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransferError> {
        self.check()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        if self.room() < total {
            self.reload_credit()?;
        }
        let n = total.min(self.room());
        if n == 0 {
            self.stats.credit_waits += 1;
            self.progress()?;
            return Ok(0);
        }
        let immediate = self.p.remote_visibility == Visibility::Immediate;
        if immediate && self.imms_sent - self.credit_imms >= self.imm_limit {
            self.reload_credit()?;
            if self.imms_sent - self.credit_imms >= self.imm_limit {
                self.stats.imm_waits += 1;
                self.progress()?;
                return Ok(0);
            }
        }
        let mask = self.p.remote_capacity - 1;
        // Truncation intended: the ring index is the low bits of the position.
        let start = (self.write_pos as usize) & mask;
        let first = n.min(self.p.remote_capacity - start);
        let segments = if first < n { 2 } else { 1 };
        let piggyback = self.read_pos > self.reported_pos || self.imms_seen > self.reported_imms;
        let wanted = segments + usize::from(!immediate) + usize::from(piggyback);
        if self.sq_free() < wanted {
            self.reap()?;
            if self.sq_free() < wanted {
                self.stats.queue_full += 1;
                return Ok(0);
            }
        }
        let inline = n <= self.p.max_inline;
        if inline {
            self.inline.clear();
            gather(bufs, n, |piece| self.inline.extend_from_slice(piece));
        } else {
            let mut at = start;
            let port = &mut self.port;
            gather(bufs, n, |piece| {
                let mut piece = piece;
                while !piece.is_empty() {
                    let take = piece.len().min(self.p.remote_capacity - at);
                    port.write_staging(at, &piece[..take]);
                    at = (at + take) & mask;
                    piece = &piece[take..];
                }
            });
        }
        let end = self.write_pos + n as u64;
        let trailer = end.to_le_bytes();
        let credit = layout::encode_credit(self.read_pos, self.imms_seen);
        let mut wrs: [Option<WriteRequest<'_>>; 4] = [None; 4];
        let mut count = 0;
        for (i, (offset, len)) in [(start, first), (0, n - first)].into_iter().enumerate() {
            if len == 0 {
                continue;
            }
            let source = if inline {
                let from = if i == 0 { 0 } else { first };
                Source::Inline(&self.inline[from..from + len])
            } else {
                Source::Staging { offset, len }
            };
            let last_data = i + 1 == segments;
            wrs[count] = Some(WriteRequest {
                wr_id: 0,
                source,
                remote_offset: DATA_OFFSET + offset,
                imm: (immediate && last_data).then(|| layout::encode_end(end)),
                signaled: false,
            });
            count += 1;
        }
        if !immediate {
            wrs[count] = Some(WriteRequest {
                wr_id: 0,
                source: Source::Inline(&trailer),
                remote_offset: TRAILER_OFFSET,
                imm: None,
                signaled: false,
            });
            count += 1;
        }
        if piggyback {
            wrs[count] = Some(WriteRequest {
                wr_id: 0,
                source: Source::Inline(&credit),
                remote_offset: CREDIT_OFFSET,
                imm: None,
                signaled: false,
            });
            count += 1;
        }
        // Number and signal the list; committed only if the post succeeds.
        let mut unsignaled = self.unsignaled;
        let mut marks = [(0u64, 0u64); 4];
        let mut nmarks = 0;
        let mut list = [WriteRequest {
            wr_id: 0,
            source: Source::Inline(&[]),
            remote_offset: 0,
            imm: None,
            signaled: false,
        }; 4];
        for (i, slot) in wrs[..count].iter().enumerate() {
            let Some(mut wr) = *slot else { continue };
            wr.wr_id = self.next_wr + i as u64;
            unsignaled += 1;
            let is_last = i + 1 == count;
            if unsignaled >= self.p.signal_every || (self.p.completion_ack && is_last) {
                wr.signaled = true;
                unsignaled = 0;
                let covered = if i == 0 && segments == 2 {
                    self.write_pos + first as u64
                } else {
                    end
                };
                marks[nmarks] = (wr.wr_id, covered);
                nmarks += 1;
            }
            list[i] = wr;
        }
        match self.port.post_writes(&list[..count]) {
            Ok(()) => {}
            Err(PostError::QueueFull { .. }) => {
                self.stats.queue_full += 1;
                return Ok(0);
            }
            Err(e) => return Err(self.fail(e.into())),
        }
        self.unsignaled = unsignaled;
        self.marks.extend(&marks[..nmarks]);
        self.next_wr += count as u64;
        self.write_pos = end;
        self.imms_sent += u64::from(immediate);
        if piggyback {
            self.reported_pos = self.read_pos;
            self.reported_imms = self.imms_seen;
            self.stats.credit_piggybacked += 1;
        }
        self.stats.post_lists += 1;
        self.stats.work_requests += count as u64;
        self.stats.signaled += nmarks as u64;
        if inline {
            self.stats.inline_writes += segments as u64;
        } else {
            self.stats.staged_writes += segments as u64;
        }
        self.stats.bytes_sent += n as u64;
        Ok(n)
    }

    /// Moves visible bytes into `buf`; returns how many (0: none yet).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransferError> {
        self.check()?;
        self.reap()?;
        if self.p.local_visibility == Visibility::Trailer {
            self.load_trailer()?;
        }
        let n = ((self.visible - self.read_pos) as usize).min(buf.len());
        if n > 0 {
            let cap = self.p.local_capacity;
            // Truncation intended: the ring index is the low bits of the position.
            let start = (self.read_pos as usize) & (cap - 1);
            let first = n.min(cap - start);
            self.port.read_local(DATA_OFFSET + start, &mut buf[..first]);
            self.port.read_local(DATA_OFFSET, &mut buf[first..n]);
            self.read_pos += n as u64;
            self.stats.bytes_received += n as u64;
        }
        self.maybe_credit()?;
        Ok(n)
    }

    /// Bytes visible now and not yet received.
    pub fn readable(&mut self) -> Result<usize, TransferError> {
        self.check()?;
        self.reap()?;
        if self.p.local_visibility == Visibility::Trailer {
            self.load_trailer()?;
        }
        Ok((self.visible - self.read_pos) as usize)
    }

    /// Whether a send could move bytes now (room in the ring and the queue).
    pub fn writable(&mut self) -> Result<bool, TransferError> {
        self.check()?;
        if self.room() == 0 {
            self.reload_credit()?;
        }
        self.reap()?;
        Ok(self.room() > 0 && self.sq_free() >= 4)
    }

    /// Polls completions and writes a credit that is due; true if anything moved.
    pub fn progress(&mut self) -> Result<bool, TransferError> {
        self.check()?;
        let before = (self.freed, self.visible, self.reported_pos);
        self.reap()?;
        self.maybe_credit()?;
        Ok(before != (self.freed, self.visible, self.reported_pos))
    }

    /// Waits until every posted write has completed (posting one signalled
    /// zero-length write if the last ones were unsignalled), up to `timeout`.
    pub fn quiesce(&mut self, timeout: Duration) -> Result<(), TransferError> {
        self.check()?;
        let start = Instant::now();
        if self.unsignaled > 0 {
            while self.sq_free() == 0 {
                self.reap()?;
                self.timed_out(start, timeout)?;
                std::thread::yield_now();
            }
            let wr = WriteRequest {
                wr_id: self.next_wr,
                source: Source::Inline(&[]),
                remote_offset: DATA_OFFSET,
                imm: None,
                signaled: true,
            };
            if let Err(e) = self.port.post_writes(&[wr]) {
                return Err(self.fail(e.into()));
            }
            self.marks.push_back((self.next_wr, self.write_pos));
            self.next_wr += 1;
            self.unsignaled = 0;
            self.stats.work_requests += 1;
            self.stats.signaled += 1;
        }
        while self.freed < self.next_wr {
            self.reap()?;
            self.timed_out(start, timeout)?;
            std::thread::yield_now();
        }
        Ok(())
    }

    fn timed_out(&mut self, start: Instant, timeout: Duration) -> Result<(), TransferError> {
        if start.elapsed() > timeout {
            return Err(self.fail(TransferError::Timeout {
                left: self.next_wr - self.freed,
                waited_ms: start.elapsed().as_millis() as u64,
            }));
        }
        Ok(())
    }

    /// Polls the completion queue dry and reposts consumed receives.
    fn reap(&mut self) -> Result<(), TransferError> {
        loop {
            self.completions.clear();
            let got = match self.port.poll(&mut self.completions, POLL_BATCH) {
                Ok(n) => n,
                Err(e) => return Err(self.fail(e.into())),
            };
            let mut error: Option<TransferError> = None;
            let mut reposts = 0u32;
            for i in 0..got {
                match self.completions[i] {
                    Completion::Send {
                        wr_id,
                        status: WcStatus::Success,
                    } => {
                        self.freed = self.freed.max(wr_id + 1);
                        while let Some(&(id, end)) = self.marks.front() {
                            if id > wr_id {
                                break;
                            }
                            self.delivered = self.delivered.max(end);
                            self.marks.pop_front();
                        }
                    }
                    Completion::Send { wr_id, status } => {
                        let e = TransferError::Completion {
                            what: "RDMA write",
                            wr_id,
                            status,
                        };
                        error = Some(worse(error, e));
                    }
                    Completion::Recv {
                        imm: Some(imm),
                        status: WcStatus::Success,
                    } => {
                        if self.p.local_visibility != Visibility::Immediate {
                            error = Some(worse(
                                error,
                                TransferError::Unexpected {
                                    what: "a write with immediate",
                                },
                            ));
                            continue;
                        }
                        let cap = self.p.local_capacity;
                        match layout::decode_end(imm, self.visible, self.read_pos, cap) {
                            Some(end) => self.visible = end,
                            None => {
                                error = Some(worse(
                                    error,
                                    TransferError::BadImmediate {
                                        imm,
                                        visible: self.visible,
                                        read_pos: self.read_pos,
                                        capacity: cap,
                                    },
                                ));
                            }
                        }
                        self.imms_seen += 1;
                        self.stats.imms_received += 1;
                        reposts += 1;
                    }
                    Completion::Recv {
                        imm: None,
                        status: WcStatus::Success,
                    } => {
                        error = Some(worse(
                            error,
                            TransferError::Unexpected {
                                what: "a send without immediate",
                            },
                        ));
                    }
                    Completion::Recv { status, .. } => {
                        let e = TransferError::Completion {
                            what: "receive",
                            wr_id: 0,
                            status,
                        };
                        error = Some(worse(error, e));
                    }
                }
            }
            if let Some(e) = error {
                return Err(self.fail(e));
            }
            if reposts > 0
                && let Err(e) = self.port.post_receives(reposts)
            {
                return Err(self.fail(e.into()));
            }
            if got < POLL_BATCH {
                return Ok(());
            }
        }
    }

    fn load_trailer(&mut self) -> Result<(), TransferError> {
        let trailer = self.port.load_local_u64(TRAILER_OFFSET);
        if trailer == self.visible {
            return Ok(());
        }
        let cap = self.p.local_capacity;
        if trailer < self.visible || trailer - self.read_pos > cap as u64 {
            return Err(self.fail(TransferError::BadTrailer {
                trailer,
                visible: self.visible,
                read_pos: self.read_pos,
                capacity: cap,
            }));
        }
        self.visible = trailer;
        Ok(())
    }

    /// Reloads the peer's credit triple; a torn one is ignored.
    fn reload_credit(&mut self) -> Result<(), TransferError> {
        let words = [0, 8, 16].map(|o| self.port.load_local_u64(CREDIT_OFFSET + o));
        let Some((credit, imms)) = layout::decode_credit(words) else {
            if words != [0; 3] {
                self.stats.torn_credits += 1;
            }
            return Ok(());
        };
        if credit < self.credit
            || credit > self.write_pos
            || imms < self.credit_imms
            || imms > self.imms_sent
        {
            return Err(self.fail(TransferError::BadCredit {
                credit,
                imms,
                min_credit: self.credit,
                write_pos: self.write_pos,
                min_imms: self.credit_imms,
                imms_sent: self.imms_sent,
            }));
        }
        self.credit = credit;
        self.credit_imms = imms;
        Ok(())
    }

    /// Writes our credit when a quarter of the ring or the receive queue was
    /// consumed since the last one (deferred while the send queue is full).
    fn maybe_credit(&mut self) -> Result<(), TransferError> {
        let bytes_due = self.read_pos - self.reported_pos >= (self.p.local_capacity / 4) as u64;
        let imms_due =
            self.imms_seen - self.reported_imms >= u64::from(self.caps.rq_depth / 4).max(1);
        if !(bytes_due || imms_due) {
            return Ok(());
        }
        if self.sq_free() == 0 {
            self.reap()?;
            if self.sq_free() == 0 {
                return Ok(());
            }
        }
        let credit = layout::encode_credit(self.read_pos, self.imms_seen);
        self.unsignaled += 1;
        let signaled = self.unsignaled >= self.p.signal_every;
        let wr = WriteRequest {
            wr_id: self.next_wr,
            source: Source::Inline(&credit),
            remote_offset: CREDIT_OFFSET,
            imm: None,
            signaled,
        };
        match self.port.post_writes(&[wr]) {
            Ok(()) => {}
            Err(PostError::QueueFull { .. }) => {
                self.unsignaled -= 1;
                return Ok(());
            }
            Err(e) => return Err(self.fail(e.into())),
        }
        if signaled {
            self.unsignaled = 0;
            self.marks.push_back((self.next_wr, self.write_pos));
            self.stats.signaled += 1;
        }
        self.next_wr += 1;
        self.reported_pos = self.read_pos;
        self.reported_imms = self.imms_seen;
        self.stats.credit_writes += 1;
        self.stats.work_requests += 1;
        self.stats.post_lists += 1;
        debug_assert_eq!(CREDIT_LEN, credit.len());
        Ok(())
    }
}

/// Of two errors in one batch of completions, the one that explains the
/// other: a flush is the consequence of whatever else failed.
fn worse(current: Option<TransferError>, new: TransferError) -> TransferError {
    let flushed = |e: &TransferError| {
        matches!(
            e,
            TransferError::Completion {
                status: WcStatus::Flushed,
                ..
            }
        )
    };
    match current {
        Some(c) if !flushed(&c) || flushed(&new) => c,
        _ => new,
    }
}

/// Calls `f` on consecutive pieces of the first `n` bytes of `bufs`.
fn gather(bufs: &[&[u8]], n: usize, mut f: impl FnMut(&[u8])) {
    let mut left = n;
    for b in bufs {
        if left == 0 {
            break;
        }
        let take = b.len().min(left);
        if take > 0 {
            f(&b[..take]);
        }
        left -= take;
    }
}

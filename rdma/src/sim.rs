//! A simulated RDMA NIC: reliable-connected queue pairs in one process, with
//! the failure modes of real hardware, for tests on machines without RDMA.
//!
//! It is not a model of performance; it is a model of what the protocol must
//! survive. Every port call locks the NIC ([`SimNic`], shared by all its
//! queue pairs), lets the NIC engine take a few steps for the caller's queue
//! pair and its peer, then does the call. The engine, per queue pair:
//!
//! 1. takes the head of the send queue and snapshots its bytes (inline bytes
//!    were copied at post time; staged bytes are read now, like a DMA read);
//! 2. cuts them into pieces and **places the pieces over several steps in a
//!    random order** (1..=`max_piece` bytes each). A target whose
//!    [`SimConfig::data_in_order`] is set instead places 8-byte-aligned
//!    units in address order (what `ibv_query_qp_data_in_order` promises);
//! 3. for a WRITE WITH IMMEDIATE, consumes a posted receive at the target
//!    and queues a receive completion there. With none posted the target
//!    answers **receiver-not-ready**: the write is retried on later steps
//!    (forever with `rnr_retry` 7) or fails with
//!    [`WcStatus::RnrRetryExceeded`];
//! 4. queues a send completion if the request was signalled.
//!
//! Writes are placed one after the other, so when a completion or an
//! immediate appears every earlier write has landed: the RC guarantee.
//! The send queue is **bounded** and slots come back only through polled
//! completions (a caller that never signals fills it). Injected
//! [`Fault`]s give **retry-exceeded** (a dead path: the request times out
//! after `ack_timeout × (retry_count + 1)`), a **receiver-not-ready storm**,
//! a **remote access error** and an **asynchronous QP error**; after any of
//! them the queue pair is in the error state and everything outstanding and
//! later completes **flushed**, signalled or not. A destroyed queue pair
//! (a dropped [`SimPort`]) stops acknowledging: its peer's writes time out.
//!
//! Region memory lives inside the NIC and the port's local reads copy it
//! under the lock, so the simulation has no data races of its own; a
//! half-placed write is still observable between two calls, which is the
//! point.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::layout;
use crate::port::{
    Completion, OneSidedPort, PollError, PortCaps, PostError, SlotCount, Source, WcStatus,
    WriteRequest,
};

/// How one simulated queue pair behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Send-queue slots.
    pub sq_depth: u32,
    /// Receive-queue slots.
    pub rq_depth: u32,
    /// Largest inline write.
    pub max_inline: usize,
    /// As a target, place writes in address order (8-byte units at least).
    pub data_in_order: bool,
    /// Largest piece of a write placed at once (out-of-order placement).
    pub max_piece: usize,
    /// Engine steps per port call.
    pub steps_per_call: u32,
    /// Receiver-not-ready retries; 7 = forever (the verbs convention).
    pub rnr_retry: u8,
    /// Transport retries before retry-exceeded.
    pub retry_count: u8,
    /// Local ACK timeout (`4.096 µs × 2^ack_timeout` on real HCAs).
    pub ack_timeout: Duration,
    /// Seed of the placement order.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            sq_depth: 128,
            rq_depth: 128,
            max_inline: 256,
            data_in_order: false,
            max_piece: 64,
            steps_per_call: 4,
            rnr_retry: 7,
            retry_count: 7,
            ack_timeout: Duration::from_micros(4096 * 8),
            seed: 1,
        }
    }
}

/// A fault injected at one work request (counted from 0 per queue pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The path to the peer dies: this request times out (retry-exceeded).
    LinkDown,
    /// The peer answers receiver-not-ready this many times first.
    RnrStorm {
        /// NAKs before a receive counts as posted again.
        naks: u32,
    },
    /// The request's remote range is refused (bad rkey): remote access error.
    RemoteAccess,
    /// The queue pair enters the error state (an asynchronous error).
    QpError,
}

/// Counters of one simulated queue pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Work requests executed.
    pub executed: u64,
    /// Pieces placed at the peer.
    pub pieces: u64,
    /// Writes whose pieces were placed out of address order.
    pub reordered_writes: u64,
    /// Receiver-not-ready NAKs met.
    pub rnr_naks: u64,
    /// Posts refused with a full send queue.
    pub queue_full: u64,
    /// Completions flushed.
    pub flushed: u64,
}

/// Why a simulated queue pair could not connect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimConnectError {
    /// No queue pair with that number in this process.
    #[error(
        "simulated NIC: no queue pair {qpn} in this process (the simulated NIC connects queue pairs of one process only)"
    )]
    NoSuchQp {
        /// The number asked for.
        qpn: u32,
    },
    /// The peer's region is not the size it announced.
    #[error(
        "simulated NIC: queue pair {qpn} has a {actual}-byte region, peer announced {announced}"
    )]
    RegionMismatch {
        /// The peer.
        qpn: u32,
        /// Its real region size.
        actual: usize,
        /// What the connection parameters said.
        announced: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QpState {
    Init,
    Rts { peer: u32 },
    Error,
    Destroyed,
}

#[derive(Debug)]
struct Wqe {
    ordinal: u64,
    wr_id: u64,
    inline: Option<Vec<u8>>,
    staging: (usize, usize),
    remote_offset: usize,
    imm: Option<u32>,
    signaled: bool,
}

/// The request being placed.
#[derive(Debug)]
struct Active {
    wqe: Wqe,
    data: Vec<u8>,
    /// Pieces `(start, len)` in placement order, and how many are placed.
    pieces: Vec<(usize, usize)>,
    placed: usize,
    naks: u32,
    /// Set when the request met a dead path: it fails at this time.
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct Node {
    cfg: SimConfig,
    state: QpState,
    region: Vec<u8>,
    staging: Vec<u8>,
    sq: VecDeque<Wqe>,
    active: Option<Active>,
    slots: SlotCount,
    /// Completions with the ordinal of their send request.
    cq: VecDeque<(Completion, Option<u64>)>,
    rq_posted: u32,
    rnr_storm: u32,
    faults: BTreeMap<u64, Vec<Fault>>,
    link_down: bool,
    rng: u64,
    stats: SimStats,
}

impl Node {
    fn next_random(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_random() % n.max(1) as u64) as usize
    }

    /// Every outstanding request and receive completes flushed.
    fn flush(&mut self) {
        let active = self.active.take().map(|a| a.wqe);
        for w in active.into_iter().chain(self.sq.drain(..)) {
            self.cq.push_back((
                Completion::Send {
                    wr_id: w.wr_id,
                    status: WcStatus::Flushed,
                },
                Some(w.ordinal),
            ));
            self.stats.flushed += 1;
        }
        for _ in 0..self.rq_posted {
            self.cq.push_back((
                Completion::Recv {
                    imm: None,
                    status: WcStatus::Flushed,
                },
                None,
            ));
            self.stats.flushed += 1;
        }
        self.rq_posted = 0;
    }

    /// Fails the active request with `status` and moves to the error state.
    fn fail_active(&mut self, status: WcStatus) {
        if let Some(a) = self.active.take() {
            self.cq.push_back((
                Completion::Send {
                    wr_id: a.wqe.wr_id,
                    status,
                },
                Some(a.wqe.ordinal),
            ));
        }
        self.state = QpState::Error;
        self.flush();
    }
}

#[derive(Debug, Default)]
struct World {
    nodes: HashMap<u32, Node>,
    next_qpn: u32,
}

impl World {
    /// Lets the engine of `qpn` take one step.
    fn step(&mut self, qpn: u32) {
        let Some(node) = self.nodes.get_mut(&qpn) else {
            return;
        };
        let peer = match node.state {
            QpState::Error => {
                node.flush();
                return;
            }
            QpState::Rts { peer } => peer,
            QpState::Init | QpState::Destroyed => return,
        };
        if node.active.is_none() {
            let Some(wqe) = node.sq.pop_front() else {
                return;
            };
            node.stats.executed += 1;
            let mut remote_offset = wqe.remote_offset;
            let mut dead = node.link_down;
            let faults = node.faults.remove(&wqe.ordinal).unwrap_or_default();
            let mut storm = 0;
            for f in faults {
                match f {
                    Fault::LinkDown => {
                        node.link_down = true;
                        dead = true;
                    }
                    Fault::RnrStorm { naks } => storm = naks,
                    Fault::RemoteAccess => remote_offset = usize::MAX / 2,
                    Fault::QpError => {
                        node.sq.push_front(wqe);
                        node.state = QpState::Error;
                        node.flush();
                        return;
                    }
                }
            }
            let data = match &wqe.inline {
                Some(b) => b.clone(),
                None => node.staging[wqe.staging.0..wqe.staging.0 + wqe.staging.1].to_vec(),
            };
            let deadline = dead.then(|| {
                Instant::now() + node.cfg.ack_timeout * (u32::from(node.cfg.retry_count) + 1)
            });
            let wqe = Wqe {
                remote_offset,
                ..wqe
            };
            node.active = Some(Active {
                wqe,
                data,
                pieces: Vec::new(),
                placed: 0,
                naks: 0,
                deadline,
            });
            let cfg = node.cfg;
            let Some(target) = self
                .nodes
                .get_mut(&peer)
                .filter(|t| t.state != QpState::Destroyed)
            else {
                // No one answers: `place` times the request out.
                return;
            };
            target.rnr_storm += storm;
            let in_order = target.cfg.data_in_order;
            let target_len = target.region.len();
            let node = self.nodes.get_mut(&qpn).expect("node present");
            let Some(a) = node.active.as_ref() else {
                return;
            };
            let (len, remote_offset, dead) =
                (a.data.len(), a.wqe.remote_offset, a.deadline.is_some());
            if remote_offset
                .checked_add(len)
                .is_none_or(|e| e > target_len)
            {
                if !dead {
                    node.fail_active(WcStatus::RemoteAccess);
                }
                return;
            }
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < len {
                let take = if in_order {
                    // Whole aligned 8-byte units (relative to the region).
                    let off = remote_offset + at;
                    let unit_end = (off / 8 + 1) * 8 + 8 * (node.next_random() % 16) as usize;
                    (unit_end - off).min(len - at)
                } else {
                    1 + node.below(cfg.max_piece)
                }
                .min(len - at);
                pieces.push((at, take));
                at += take;
            }
            if !in_order && pieces.len() > 1 {
                for i in (1..pieces.len()).rev() {
                    let j = node.below(i + 1);
                    pieces.swap(i, j);
                }
                node.stats.reordered_writes += 1;
            }
            if let Some(a) = node.active.as_mut() {
                a.pieces = pieces;
            }
        }
        self.place(qpn, peer);
    }

    /// Places some pieces of the active request of `qpn` at `peer`; finishes it.
    fn place(&mut self, qpn: u32, peer: u32) {
        let peer_alive = matches!(
            self.nodes.get(&peer).map(|n| n.state),
            Some(QpState::Rts { .. } | QpState::Init)
        );
        let Some(node) = self.nodes.get_mut(&qpn) else {
            return;
        };
        let Some(mut a) = node.active.take() else {
            return;
        };
        if a.deadline.is_some() || !peer_alive {
            // No ACK comes: retried until the transport retry counter runs out.
            let deadline = *a.deadline.get_or_insert_with(|| {
                Instant::now() + node.cfg.ack_timeout * (u32::from(node.cfg.retry_count) + 1)
            });
            node.active = Some(a);
            if Instant::now() >= deadline {
                node.fail_active(WcStatus::RetryExceeded);
            }
            return;
        }
        let burst = 1 + node.below(4);
        let from = a.placed;
        let to = (from + burst).min(a.pieces.len());
        node.stats.pieces += (to - from) as u64;
        let Some(target) = self.nodes.get_mut(&peer) else {
            self.nodes.get_mut(&qpn).expect("node present").active = Some(a);
            return;
        };
        for &(start, len) in &a.pieces[from..to] {
            let dst = a.wqe.remote_offset + start;
            target.region[dst..dst + len].copy_from_slice(&a.data[start..start + len]);
        }
        a.placed = to;
        if a.placed < a.pieces.len() {
            self.nodes.get_mut(&qpn).expect("node present").active = Some(a);
            return;
        }
        if let Some(imm) = a.wqe.imm {
            if target.rnr_storm > 0 || target.rq_posted == 0 {
                target.rnr_storm = target.rnr_storm.saturating_sub(1);
                let node = self.nodes.get_mut(&qpn).expect("node present");
                node.stats.rnr_naks += 1;
                a.naks += 1;
                let limit = node.cfg.rnr_retry;
                node.active = Some(a);
                if limit != 7
                    && node
                        .active
                        .as_ref()
                        .is_some_and(|a| a.naks > u32::from(limit))
                {
                    node.fail_active(WcStatus::RnrRetryExceeded);
                }
                return;
            }
            target.rq_posted -= 1;
            target.cq.push_back((
                Completion::Recv {
                    imm: Some(imm),
                    status: WcStatus::Success,
                },
                None,
            ));
        }
        let node = self.nodes.get_mut(&qpn).expect("node present");
        if a.wqe.signaled {
            node.cq.push_back((
                Completion::Send {
                    wr_id: a.wqe.wr_id,
                    status: WcStatus::Success,
                },
                Some(a.wqe.ordinal),
            ));
        }
    }

    /// Engine steps for `qpn` and its peer.
    fn advance(&mut self, qpn: u32) {
        let Some(node) = self.nodes.get(&qpn) else {
            return;
        };
        let steps = node.cfg.steps_per_call;
        let peer = match node.state {
            QpState::Rts { peer } => Some(peer),
            _ => None,
        };
        for _ in 0..steps {
            self.step(qpn);
            if let Some(p) = peer {
                self.step(p);
            }
        }
    }
}

/// A simulated NIC: every queue pair created on it can connect to every other.
#[derive(Clone, Debug, Default)]
pub struct SimNic {
    world: Arc<Mutex<World>>,
}

impl SimNic {
    /// A NIC of its own (tests that must not share one).
    pub fn new() -> SimNic {
        SimNic::default()
    }

    /// The process-wide NIC behind `rdma.nic = "simulated"`.
    pub fn global() -> &'static SimNic {
        static GLOBAL: OnceLock<SimNic> = OnceLock::new();
        GLOBAL.get_or_init(SimNic::new)
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock leaves consistent-enough state for tests.
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a queue pair (INIT) with a receive region for a ring of
    /// `capacity` data bytes; returns its number.
    pub fn create_qp(&self, cfg: SimConfig, capacity: usize) -> SimQp {
        let mut w = self.lock();
        w.next_qpn += 1;
        let qpn = 0x100 + w.next_qpn;
        let mut region = vec![0u8; layout::region_len(capacity)];
        region[..16].copy_from_slice(&layout::header_prefix(capacity));
        w.nodes.insert(
            qpn,
            Node {
                cfg,
                state: QpState::Init,
                region,
                staging: Vec::new(),
                sq: VecDeque::new(),
                active: None,
                slots: SlotCount::default(),
                cq: VecDeque::new(),
                rq_posted: 0,
                rnr_storm: 0,
                faults: BTreeMap::new(),
                link_down: false,
                rng: cfg.seed ^ u64::from(qpn).wrapping_mul(0x9e37_79b9),
                stats: SimStats::default(),
            },
        );
        SimQp {
            nic: self.clone(),
            qpn,
            cfg,
            capacity,
        }
    }

    /// Two connected ports (rings of `capacity` bytes both ways).
    pub fn pair(&self, a: SimConfig, b: SimConfig, capacity: usize) -> (SimPort, SimPort) {
        let qa = self.create_qp(a, capacity);
        let qb = self.create_qp(b, capacity);
        let (na, nb) = (qa.qpn(), qb.qpn());
        let len = layout::region_len(capacity);
        let pa = qa.connect(nb, len, capacity).expect("fresh queue pair");
        let pb = qb.connect(na, len, capacity).expect("fresh queue pair");
        (pa, pb)
    }
}

/// A simulated queue pair not yet connected.
#[derive(Debug)]
pub struct SimQp {
    nic: SimNic,
    qpn: u32,
    cfg: SimConfig,
    capacity: usize,
}

impl SimQp {
    /// Its number (exchanged at connection setup).
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// Bytes of its receive region.
    pub fn region_len(&self) -> usize {
        layout::region_len(self.capacity)
    }

    /// Receives posted before connecting (a WRITE WITH IMMEDIATE may arrive
    /// as soon as the peer is connected).
    pub fn post_receives(&self, count: u32) -> Result<(), PostError> {
        let mut w = self.nic.lock();
        let node = w.nodes.get_mut(&self.qpn).expect("own node");
        post_receives(node, count)
    }

    /// Connects to `peer` (RTR, RTS), whose region is announced as
    /// `peer_region_len` bytes; the staging region gets `staging_len` bytes.
    pub fn connect(
        self,
        peer: u32,
        peer_region_len: usize,
        staging_len: usize,
    ) -> Result<SimPort, SimConnectError> {
        let mut w = self.nic.lock();
        let actual = w
            .nodes
            .get(&peer)
            .filter(|n| n.state != QpState::Destroyed)
            .map(|n| n.region.len())
            .ok_or(SimConnectError::NoSuchQp { qpn: peer })?;
        if actual != peer_region_len {
            return Err(SimConnectError::RegionMismatch {
                qpn: peer,
                actual,
                announced: peer_region_len,
            });
        }
        let node = w.nodes.get_mut(&self.qpn).expect("own node");
        node.state = QpState::Rts { peer };
        node.staging = vec![0; staging_len];
        drop(w);
        Ok(SimPort {
            nic: self.nic.clone(),
            qpn: self.qpn,
            peer,
            cfg: self.cfg,
            local_region_len: layout::region_len(self.capacity),
            remote_region_len: peer_region_len,
            staging_len,
            destroy: true,
        })
    }
}

impl Drop for SimQp {
    fn drop(&mut self) {
        // Connected queue pairs moved into their port; a dropped SimQp was never used.
        let mut w = self.nic.lock();
        if w.nodes
            .get(&self.qpn)
            .is_some_and(|n| n.state == QpState::Init)
        {
            w.nodes.remove(&self.qpn);
        }
    }
}

fn post_receives(node: &mut Node, count: u32) -> Result<(), PostError> {
    if node.rq_posted + count > node.cfg.rq_depth {
        return Err(PostError::QueueFull {
            queue: "receive",
            wanted: count as usize,
            used: node.rq_posted as usize,
            depth: node.cfg.rq_depth,
        });
    }
    if node.state == QpState::Error {
        for _ in 0..count {
            node.cq.push_back((
                Completion::Recv {
                    imm: None,
                    status: WcStatus::Flushed,
                },
                None,
            ));
        }
        return Ok(());
    }
    node.rq_posted += count;
    Ok(())
}

/// One connected simulated queue pair.
#[derive(Debug)]
pub struct SimPort {
    nic: SimNic,
    qpn: u32,
    peer: u32,
    cfg: SimConfig,
    local_region_len: usize,
    remote_region_len: usize,
    staging_len: usize,
    destroy: bool,
}

impl SimPort {
    fn with<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let mut w = self.nic.lock();
        w.advance(self.qpn);
        f(w.nodes.get_mut(&self.qpn).expect("own node"))
    }

    /// Its queue pair number.
    pub fn qpn(&self) -> u32 {
        self.qpn
    }

    /// The peer's queue pair number.
    pub fn peer_qpn(&self) -> u32 {
        self.peer
    }

    /// Injects `fault` at this queue pair's work request number `at` (0-based,
    /// counted over every request it executes).
    pub fn inject(&self, at: u64, fault: Fault) {
        let mut w = self.nic.lock();
        if let Some(n) = w.nodes.get_mut(&self.qpn) {
            n.faults.entry(at).or_default().push(fault);
        }
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        let w = self.nic.lock();
        w.nodes.get(&self.qpn).map(|n| n.stats).unwrap_or_default()
    }

    /// Work requests this queue pair executed (the index the next fault can use).
    pub fn executed(&self) -> u64 {
        self.stats().executed
    }

    /// Leaves the queue pair in place when dropped (a process that hangs
    /// instead of exiting: the peer sees nothing at all).
    pub fn leak_on_drop(&mut self) {
        self.destroy = false;
    }
}

impl Drop for SimPort {
    fn drop(&mut self) {
        let mut w = self.nic.lock();
        if self.destroy
            && let Some(n) = w.nodes.get_mut(&self.qpn)
        {
            n.state = QpState::Destroyed;
            n.region = Vec::new();
            n.staging = Vec::new();
            n.sq.clear();
            n.cq.clear();
        }
    }
}

impl OneSidedPort for SimPort {
    fn caps(&self) -> PortCaps {
        PortCaps {
            sq_depth: self.cfg.sq_depth,
            rq_depth: self.cfg.rq_depth,
            max_inline: self.cfg.max_inline,
            local_region_len: self.local_region_len,
            staging_len: self.staging_len,
            remote_region_len: self.remote_region_len,
            data_in_order: self.cfg.data_in_order,
        }
    }

    fn post_writes(&mut self, wrs: &[WriteRequest<'_>]) -> Result<(), PostError> {
        let mut w = self.nic.lock();
        let node = w.nodes.get_mut(&self.qpn).expect("own node");
        for wr in wrs {
            match wr.source {
                Source::Inline(b) if b.len() > node.cfg.max_inline => {
                    return Err(PostError::InlineTooLong {
                        len: b.len(),
                        max: node.cfg.max_inline,
                    });
                }
                Source::Staging { offset, len }
                    if offset
                        .checked_add(len)
                        .is_none_or(|e| e > node.staging.len()) =>
                {
                    return Err(PostError::BadStaging {
                        offset,
                        len,
                        region: node.staging.len(),
                    });
                }
                _ => {}
            }
        }
        let first = match node.slots.reserve(wrs.len(), node.cfg.sq_depth) {
            Ok(first) => first,
            Err(e) => {
                node.stats.queue_full += 1;
                return Err(e);
            }
        };
        for (i, wr) in wrs.iter().enumerate() {
            let (inline, staging) = match wr.source {
                Source::Inline(b) => (Some(b.to_vec()), (0, 0)),
                Source::Staging { offset, len } => (None, (offset, len)),
            };
            node.sq.push_back(Wqe {
                ordinal: first + i as u64,
                wr_id: wr.wr_id,
                inline,
                staging,
                remote_offset: wr.remote_offset,
                imm: wr.imm,
                signaled: wr.signaled,
            });
        }
        Ok(())
    }

    fn post_receives(&mut self, count: u32) -> Result<(), PostError> {
        self.with(|node| post_receives(node, count))
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, PollError> {
        Ok(self.with(|node| {
            let mut n = 0;
            while n < max {
                let Some((c, ordinal)) = node.cq.pop_front() else {
                    break;
                };
                if let Some(o) = ordinal {
                    node.slots.complete(o);
                }
                out.push(c);
                n += 1;
            }
            n
        }))
    }

    fn write_staging(&mut self, offset: usize, src: &[u8]) {
        let mut w = self.nic.lock();
        let node = w.nodes.get_mut(&self.qpn).expect("own node");
        node.staging[offset..offset + src.len()].copy_from_slice(src);
    }

    fn read_local(&self, offset: usize, dst: &mut [u8]) {
        let w = self.nic.lock();
        let node = w.nodes.get(&self.qpn).expect("own node");
        dst.copy_from_slice(&node.region[offset..offset + dst.len()]);
    }

    fn load_local_u64(&self, offset: usize) -> u64 {
        self.with(|node| {
            let b: [u8; 8] = node.region[offset..offset + 8].try_into().expect("8 bytes");
            u64::from_le_bytes(b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            sq_depth: 8,
            rq_depth: 4,
            ..SimConfig::default()
        }
    }

    fn write(
        wr_id: u64,
        data: &[u8],
        off: usize,
        imm: Option<u32>,
        signaled: bool,
    ) -> WriteRequest<'_> {
        WriteRequest {
            wr_id,
            source: Source::Inline(data),
            remote_offset: off,
            imm,
            signaled,
        }
    }

    fn drain(p: &mut SimPort, rounds: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..rounds {
            p.poll(&mut out, 64).unwrap();
        }
        out
    }

    #[test]
    fn a_queue_that_is_never_signalled_fills_and_stays_full() {
        let nic = SimNic::new();
        let (mut a, _b) = nic.pair(cfg(), cfg(), 4096);
        let d = [7u8; 8];
        for i in 0..8 {
            a.post_writes(&[write(i, &d, 400, None, false)]).unwrap();
        }
        assert!(
            drain(&mut a, 50).is_empty(),
            "unsignalled writes complete silently"
        );
        let err = a
            .post_writes(&[write(8, &d, 400, None, false)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                PostError::QueueFull {
                    used: 8,
                    depth: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(a.stats().queue_full, 1);
    }

    #[test]
    fn a_signalled_completion_frees_every_slot_before_it() {
        let nic = SimNic::new();
        let (mut a, _b) = nic.pair(cfg(), cfg(), 4096);
        let d = [7u8; 8];
        for i in 0..7 {
            a.post_writes(&[write(i, &d, 400, None, false)]).unwrap();
        }
        a.post_writes(&[write(7, &d, 400, None, true)]).unwrap();
        let c = drain(&mut a, 100);
        assert_eq!(
            c,
            [Completion::Send {
                wr_id: 7,
                status: WcStatus::Success
            }]
        );
        a.post_writes(&[write(8, &d, 400, None, false); 8]).unwrap();
    }

    #[test]
    fn pieces_land_out_of_order_and_only_the_immediate_says_done() {
        let nic = SimNic::new();
        let c = SimConfig {
            steps_per_call: 1,
            max_piece: 16,
            ..cfg()
        };
        let (mut a, mut b) = nic.pair(c, c, 4096);
        b.post_receives(1).unwrap();
        let data: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8 + 1).collect();
        a.post_writes(&[WriteRequest {
            wr_id: 1,
            source: Source::Inline(&[]),
            remote_offset: 384,
            imm: None,
            signaled: false,
        }])
        .unwrap();
        // Non-inline: the bytes are read from staging when the write starts.
        a.write_staging(0, &data);
        a.post_writes(&[WriteRequest {
            wr_id: 2,
            source: Source::Staging {
                offset: 0,
                len: 200,
            },
            remote_offset: 384,
            imm: Some(42),
            signaled: true,
        }])
        .unwrap();
        let mut seen_partial = false;
        let mut out = Vec::new();
        for _ in 0..200 {
            b.poll(&mut out, 8).unwrap();
            if !out.is_empty() {
                break;
            }
            let mut now = vec![0u8; 200];
            b.read_local(384, &mut now);
            let placed = now.iter().zip(&data).filter(|(x, y)| x == y).count();
            if placed > 0 && placed < 200 {
                seen_partial = true;
            }
        }
        assert_eq!(
            out,
            [Completion::Recv {
                imm: Some(42),
                status: WcStatus::Success
            }]
        );
        let mut now = vec![0u8; 200];
        b.read_local(384, &mut now);
        assert_eq!(now, data, "all bytes landed by the immediate");
        assert!(seen_partial, "a half-placed write was never observable");
        assert!(a.stats().reordered_writes >= 1);
    }

    #[test]
    fn no_receive_posted_is_rnr_then_retry_exceeded_then_flush() {
        let nic = SimNic::new();
        let c = SimConfig {
            rnr_retry: 3,
            ..cfg()
        };
        let (mut a, _b) = nic.pair(c, c, 4096);
        let d = [1u8; 8];
        a.post_writes(&[
            write(0, &d, 400, Some(8), false),
            write(1, &d, 400, None, false),
        ])
        .unwrap();
        let out = drain(&mut a, 100);
        assert_eq!(
            out,
            [
                Completion::Send {
                    wr_id: 0,
                    status: WcStatus::RnrRetryExceeded
                },
                Completion::Send {
                    wr_id: 1,
                    status: WcStatus::Flushed
                },
            ],
            "errors complete even when unsignalled"
        );
        assert_eq!(a.stats().rnr_naks, 4);
        // The queue pair stays in error: later posts flush.
        a.post_writes(&[write(2, &d, 400, None, false)]).unwrap();
        assert_eq!(
            drain(&mut a, 10),
            [Completion::Send {
                wr_id: 2,
                status: WcStatus::Flushed
            }]
        );
    }

    #[test]
    fn a_dead_peer_times_out_with_retry_exceeded() {
        let nic = SimNic::new();
        let c = SimConfig {
            ack_timeout: Duration::from_millis(2),
            retry_count: 2,
            ..cfg()
        };
        let (mut a, b) = nic.pair(c, c, 4096);
        drop(b);
        let d = [1u8; 8];
        let start = Instant::now();
        a.post_writes(&[write(0, &d, 400, None, true)]).unwrap();
        let mut out = Vec::new();
        while out.is_empty() {
            a.poll(&mut out, 8).unwrap();
            assert!(start.elapsed() < Duration::from_secs(5));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(6),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            out,
            [Completion::Send {
                wr_id: 0,
                status: WcStatus::RetryExceeded
            }]
        );
    }

    #[test]
    fn remote_access_and_qp_error_faults() {
        let nic = SimNic::new();
        let (mut a, _b) = nic.pair(cfg(), cfg(), 4096);
        a.inject(1, Fault::RemoteAccess);
        let d = [1u8; 8];
        a.post_writes(&[
            write(0, &d, 400, None, true),
            write(1, &d, 400, None, false),
        ])
        .unwrap();
        let out = drain(&mut a, 50);
        assert_eq!(
            out,
            [
                Completion::Send {
                    wr_id: 0,
                    status: WcStatus::Success
                },
                Completion::Send {
                    wr_id: 1,
                    status: WcStatus::RemoteAccess
                },
            ]
        );
        // Out of range without a fault is refused the same way.
        let (mut c, _d) = nic.pair(cfg(), cfg(), 4096);
        c.post_writes(&[write(0, &d, 4096 + 384 - 4, None, false)])
            .unwrap();
        assert_eq!(
            drain(&mut c, 10),
            [Completion::Send {
                wr_id: 0,
                status: WcStatus::RemoteAccess
            }]
        );
        let (mut e, mut f) = nic.pair(cfg(), cfg(), 4096);
        f.post_receives(2).unwrap();
        e.inject(0, Fault::QpError);
        e.post_writes(&[write(0, &d, 400, None, false)]).unwrap();
        assert_eq!(
            drain(&mut e, 10),
            [Completion::Send {
                wr_id: 0,
                status: WcStatus::Flushed
            }]
        );
        e.post_receives(1).unwrap();
        assert_eq!(
            drain(&mut e, 10),
            [Completion::Recv {
                imm: None,
                status: WcStatus::Flushed
            }]
        );
    }

    #[test]
    fn connect_checks_the_peer() {
        let nic = SimNic::new();
        let q = nic.create_qp(cfg(), 4096);
        let err = q.connect(0xdead, 4480, 4096).unwrap_err();
        assert!(
            err.to_string()
                .contains("no queue pair 57005 in this process"),
            "{err}"
        );
        let q = nic.create_qp(cfg(), 4096);
        let r = nic.create_qp(cfg(), 8192);
        let rq = r.qpn();
        let err = q.connect(rq, 4480, 4096).unwrap_err();
        assert_eq!(
            err,
            SimConnectError::RegionMismatch {
                qpn: rq,
                actual: 8576,
                announced: 4480
            }
        );
    }
}

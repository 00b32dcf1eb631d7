//! The one-sided port over a shared mapping: what the shm transport does,
//! expressed as the verbs the RDMA path uses.
//!
//! One `memfd` holds both ends' receive regions (formatted with
//! [`ftvm_ring::pipe::init`], so each is a pipe region) and, per end, a
//! queue of immediates standing in for the receive queue. Each end maps the
//! memfd on its own (distinct addresses, as in two processes). A "write" is
//! executed by the poster itself, at once:
//!
//! 1. data bytes are copied into the peer's region (`copy_nonoverlapping`,
//!    as the pipe does: the peer never reads bytes it was not told about);
//!    header words (trailer, credit) are stored as whole aligned `u64`s with
//!    Release, the shared-memory form of an aligned 8-byte PCIe write;
//! 2. an immediate is pushed onto the peer's queue: slot store, then the
//!    queue head with Release (pairs with the Acquire load in `poll`, so the
//!    data copied before it is visible to the peer's reads after it). A full
//!    queue (no receive posted) is receiver-not-ready: the write waits and is
//!    retried on every `poll`, ahead of anything posted after it (rnr_retry
//!    7: forever);
//! 3. a signalled write queues its completion locally.
//!
//! Trailer mode is therefore exactly the pipe protocol: data, then one
//! Release store of the end position where the reader loads it (a test reads
//! such a stream with [`ftvm_ring::pipe::PipeReader`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::layout::{self, DATA_OFFSET};
use crate::port::{
    Completion, OneSidedPort, PollError, PortCaps, PostError, SlotCount, Source, WcStatus,
    WriteRequest,
};

/// Sizes of a shm port pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// Ring data bytes per direction (power of two, 4096..=2^30).
    pub capacity: usize,
    /// Send-queue slots.
    pub sq_depth: u32,
    /// Immediates queued per end (a power of two).
    pub rq_depth: u32,
    /// Largest inline write.
    pub max_inline: usize,
}

impl Default for ShmConfig {
    fn default() -> ShmConfig {
        ShmConfig {
            capacity: 256 << 10,
            sq_depth: 128,
            rq_depth: 128,
            max_inline: 256,
        }
    }
}

/// Queue header: head (written by the producer), tail and posted (by the consumer).
const Q_HEAD: usize = 0;
const Q_TAIL: usize = 128;
const Q_POSTED: usize = 256;
const Q_SLOTS: usize = 384;

fn queue_len(depth: u32) -> usize {
    (Q_SLOTS + 4 * depth as usize).next_multiple_of(128)
}

/// One end of a shm port pair.
#[derive(Debug)]
pub struct ShmPort {
    map: MmapMut,
    cfg: ShmConfig,
    /// Region offsets in the mapping: ours, the peer's.
    local: usize,
    remote: usize,
    /// Queue offsets: ours (we consume), the peer's (we produce).
    local_q: usize,
    remote_q: usize,
    staging: Vec<u8>,
    slots: SlotCount,
    pending: VecDeque<(u64, Wqe)>,
    cq: VecDeque<(Completion, Option<u64>)>,
    failed: bool,
    /// Our consumer index, and the head we last published as producer.
    tail: u64,
    head: u64,
    posted: u64,
    /// Receiver-not-ready retries met.
    pub rnr_waits: u64,
}

#[derive(Debug)]
struct Wqe {
    wr_id: u64,
    bytes: Vec<u8>,
    remote_offset: usize,
    imm: Option<u32>,
    signaled: bool,
}

impl ShmPort {
    /// Two connected ends over a fresh memfd.
    pub fn pair(cfg: ShmConfig) -> io::Result<(ShmPort, ShmPort)> {
        if !layout::valid_capacity(cfg.capacity) || !cfg.rq_depth.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "shm port: capacity {} must be a power of two in 4096..=2^30 and rq_depth {} a power of two",
                    cfg.capacity, cfg.rq_depth
                ),
            ));
        }
        let region = layout::region_len(cfg.capacity);
        let q = queue_len(cfg.rq_depth);
        let total = 2 * region + 2 * q;
        // SAFETY: memfd_create with a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"ftvm-rdma-shm".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(total as u64)?;
        // SAFETY: a shared mapping of a memfd only this function has; the
        // other end's mapping is the only other alias, and all shared access
        // goes through atomics or the protocol's ranges (module doc).
        let mut a = unsafe { MmapMut::map_mut(&file)? };
        // SAFETY: as above.
        let b = unsafe { MmapMut::map_mut(&file)? };
        for i in 0..2 {
            // SAFETY: region i lies inside the fresh mapping (2 * region <=
            // total), starts at a multiple of 128 of a page-aligned mapping,
            // and nothing is attached yet.
            unsafe { ftvm_ring::pipe::init(a.as_mut_ptr().add(i * region), region) }
                .map_err(io::Error::other)?;
        }
        let end = |map, local: usize, remote: usize, lq: usize, rq: usize| ShmPort {
            map,
            cfg,
            local,
            remote,
            local_q: lq,
            remote_q: rq,
            staging: vec![0; cfg.capacity],
            slots: SlotCount::default(),
            pending: VecDeque::new(),
            cq: VecDeque::new(),
            failed: false,
            tail: 0,
            head: 0,
            posted: 0,
            rnr_waits: 0,
        };
        let (q0, q1) = (2 * region, 2 * region + q);
        Ok((end(a, 0, region, q0, q1), end(b, region, 0, q1, q0)))
    }

    /// Start of our receive region in our mapping (for a pipe reader in tests).
    pub fn local_region_ptr(&self) -> *const u8 {
        // SAFETY: `local` is inside the mapping (set by `pair`).
        unsafe { self.map.as_ptr().add(self.local) }
    }

    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.map.len(),
            "u64 at {offset}"
        );
        // SAFETY: in bounds and 8-aligned (checked; the mapping is
        // page-aligned); any bit pattern is a valid AtomicU64; the mapping
        // lives as long as `self`.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset.is_multiple_of(4) && offset + 4 <= self.map.len(),
            "u32 at {offset}"
        );
        // SAFETY: as in `atomic_u64`, for 4 bytes.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Executes one write; false when the peer has no receive for its immediate.
    fn execute(&mut self, ordinal: u64, w: &Wqe) -> bool {
        let region = layout::region_len(self.cfg.capacity);
        if w.remote_offset
            .checked_add(w.bytes.len())
            .is_none_or(|e| e > region)
        {
            self.cq.push_back((
                Completion::Send {
                    wr_id: w.wr_id,
                    status: WcStatus::RemoteAccess,
                },
                Some(ordinal),
            ));
            self.failed = true;
            return true;
        }
        if w.imm.is_some() {
            // Acquire: pairs with the peer's Release store of `posted` in
            // `post_receives`: its receive is really there.
            let posted = self
                .atomic_u64(self.remote_q + Q_POSTED)
                .load(Ordering::Acquire);
            if posted <= self.head {
                self.rnr_waits += 1;
                return false;
            }
        }
        let at = self.remote + w.remote_offset;
        if w.remote_offset < DATA_OFFSET {
            for (i, word) in w.bytes.chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(word.try_into().expect("8 bytes"));
                // Release: pairs with the peer's Acquire `load_local_u64`: the
                // data written before this header word is visible with it.
                self.atomic_u64(at + 8 * i).store(v, Ordering::Release);
            }
        } else {
            // SAFETY: `at..at + len` lies in the peer's region (checked
            // above); the peer reads these bytes only after the immediate or
            // trailer that follows, so nobody accesses them concurrently.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    w.bytes.as_ptr(),
                    self.map.as_mut_ptr().add(at),
                    w.bytes.len(),
                );
            }
        }
        if let Some(imm) = w.imm {
            let depth = u64::from(self.cfg.rq_depth);
            // Truncation intended: the slot index is below `depth`.
            let slot = self.remote_q + Q_SLOTS + 4 * (self.head % depth) as usize;
            // Relaxed: published by the Release store of the head below.
            self.atomic_u32(slot).store(imm, Ordering::Relaxed);
            self.head += 1;
            // Release: pairs with the peer's Acquire load of the head in
            // `poll`: the data and slot written above are visible with it.
            self.atomic_u64(self.remote_q + Q_HEAD)
                .store(self.head, Ordering::Release);
        }
        if w.signaled {
            self.cq.push_back((
                Completion::Send {
                    wr_id: w.wr_id,
                    status: WcStatus::Success,
                },
                Some(ordinal),
            ));
        }
        true
    }

    fn flush(&mut self) {
        for (ordinal, w) in self.pending.drain(..) {
            self.cq.push_back((
                Completion::Send {
                    wr_id: w.wr_id,
                    status: WcStatus::Flushed,
                },
                Some(ordinal),
            ));
        }
    }

    fn run_pending(&mut self) {
        while let Some((ordinal, w)) = self.pending.pop_front() {
            if self.failed {
                self.pending.push_front((ordinal, w));
                self.flush();
                return;
            }
            if !self.execute(ordinal, &w) {
                self.pending.push_front((ordinal, w));
                return;
            }
        }
    }
}

impl OneSidedPort for ShmPort {
    fn caps(&self) -> PortCaps {
        PortCaps {
            sq_depth: self.cfg.sq_depth,
            rq_depth: self.cfg.rq_depth,
            max_inline: self.cfg.max_inline,
            local_region_len: layout::region_len(self.cfg.capacity),
            staging_len: self.staging.len(),
            remote_region_len: layout::region_len(self.cfg.capacity),
            data_in_order: true,
        }
    }

    fn post_writes(&mut self, wrs: &[WriteRequest<'_>]) -> Result<(), PostError> {
        for wr in wrs {
            let len = wr.source.len();
            match wr.source {
                Source::Inline(b) if b.len() > self.cfg.max_inline => {
                    return Err(PostError::InlineTooLong {
                        len: b.len(),
                        max: self.cfg.max_inline,
                    });
                }
                Source::Staging { offset, len }
                    if offset
                        .checked_add(len)
                        .is_none_or(|e| e > self.staging.len()) =>
                {
                    return Err(PostError::BadStaging {
                        offset,
                        len,
                        region: self.staging.len(),
                    });
                }
                _ => {}
            }
            if wr.remote_offset < DATA_OFFSET
                && (!wr.remote_offset.is_multiple_of(8) || !len.is_multiple_of(8))
            {
                return Err(PostError::Unaligned {
                    offset: wr.remote_offset,
                    len,
                });
            }
        }
        let first = self.slots.reserve(wrs.len(), self.cfg.sq_depth)?;
        for (i, wr) in wrs.iter().enumerate() {
            let bytes = match wr.source {
                Source::Inline(b) => b.to_vec(),
                Source::Staging { offset, len } => self.staging[offset..offset + len].to_vec(),
            };
            self.pending.push_back((
                first + i as u64,
                Wqe {
                    wr_id: wr.wr_id,
                    bytes,
                    remote_offset: wr.remote_offset,
                    imm: wr.imm,
                    signaled: wr.signaled,
                },
            ));
        }
        self.run_pending();
        Ok(())
    }

    fn post_receives(&mut self, count: u32) -> Result<(), PostError> {
        let outstanding = self.posted - self.tail;
        if outstanding + u64::from(count) > u64::from(self.cfg.rq_depth) {
            return Err(PostError::QueueFull {
                queue: "receive",
                wanted: count as usize,
                used: outstanding as usize,
                depth: self.cfg.rq_depth,
            });
        }
        self.posted += u64::from(count);
        // Release: pairs with the peer's Acquire load of `posted` in
        // `execute`: the slots it may now fill were read out by us before.
        self.atomic_u64(self.local_q + Q_POSTED)
            .store(self.posted, Ordering::Release);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, PollError> {
        self.run_pending();
        let mut n = 0;
        // Acquire: pairs with the peer's Release store of the head in `execute`.
        let head = self
            .atomic_u64(self.local_q + Q_HEAD)
            .load(Ordering::Acquire);
        let depth = u64::from(self.cfg.rq_depth);
        while n < max && self.tail < head {
            // Truncation intended: the slot index is below `depth`.
            let slot = self.local_q + Q_SLOTS + 4 * (self.tail % depth) as usize;
            // Relaxed: ordered by the Acquire load of the head above.
            let imm = self.atomic_u32(slot).load(Ordering::Relaxed);
            out.push(Completion::Recv {
                imm: Some(imm),
                status: WcStatus::Success,
            });
            self.tail += 1;
            n += 1;
        }
        // Relaxed: informative only (the peer reads `posted`, not `tail`).
        self.atomic_u64(self.local_q + Q_TAIL)
            .store(self.tail, Ordering::Relaxed);
        while n < max {
            let Some((c, ordinal)) = self.cq.pop_front() else {
                break;
            };
            if let Some(o) = ordinal {
                self.slots.complete(o);
            }
            out.push(c);
            n += 1;
        }
        Ok(n)
    }

    fn write_staging(&mut self, offset: usize, src: &[u8]) {
        self.staging[offset..offset + src.len()].copy_from_slice(src);
    }

    fn read_local(&self, offset: usize, dst: &mut [u8]) {
        let region = layout::region_len(self.cfg.capacity);
        assert!(
            offset + dst.len() <= region,
            "read {offset}+{} of {region}",
            dst.len()
        );
        // SAFETY: in our region (asserted); the protocol reads only bytes an
        // immediate or trailer (Acquire) announced, which the peer no longer writes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(self.local + offset),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
    }

    fn load_local_u64(&self, offset: usize) -> u64 {
        // Acquire: pairs with the peer's Release header store in `execute`.
        self.atomic_u64(self.local + offset).load(Ordering::Acquire)
    }
}

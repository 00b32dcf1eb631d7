//! Buffers shared with the kernel: the registered send buffer (a byte ring)
//! and the receive side (multishot over a provided-buffer ring, or a single
//! re-armed `RECV`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types;
use memmap2::MmapMut;

/// Buffers in the provided-buffer ring (power of two, at most 32768).
pub(super) const RECV_BUFFERS: u16 = 64;
/// Bytes per provided buffer (and of the single-recv fallback buffer).
pub(super) const RECV_BUFFER_BYTES: usize = 64 << 10;

/// Which operation carries sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SendOp {
    /// `IORING_OP_SEND` with `IORING_RECVSEND_FIXED_BUF` (Linux 6.10+).
    SendFixed,
    /// `IORING_OP_WRITE_FIXED` (any io_uring kernel).
    WriteFixed,
}

/// The registered send buffer: a byte ring of pending bytes `[head, tail)`.
#[derive(Debug)]
pub(super) struct SendBuffer {
    pub(super) mem: MmapMut,
    /// Bytes handed to the kernel so far (counter, not an index).
    pub(super) head: u64,
    /// Bytes accepted from callers so far.
    pub(super) tail: u64,
    /// Length of the send in flight; 0 when none.
    pub(super) inflight: u32,
    pub(super) op: SendOp,
}

impl SendBuffer {
    pub(super) fn free(&self) -> usize {
        self.mem.len() - (self.tail - self.head) as usize
    }

    pub(super) fn pending(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Copies a prefix of `bufs` into free space; returns its length.
    pub(super) fn push(&mut self, bufs: &[&[u8]]) -> usize {
        let cap = self.mem.len();
        let mut accepted = 0;
        for buf in bufs {
            let n = buf.len().min(self.free());
            let mut done = 0;
            while done < n {
                let at = (self.tail as usize) & (cap - 1);
                let run = (n - done).min(cap - at);
                self.mem[at..at + run].copy_from_slice(&buf[done..done + run]);
                done += run;
                self.tail += run as u64;
            }
            accepted += n;
            if n < buf.len() {
                break;
            }
        }
        accepted
    }

    /// The contiguous run of pending bytes starting at `head`.
    pub(super) fn next_run(&self) -> (*const u8, u32) {
        let cap = self.mem.len();
        let at = (self.head as usize) & (cap - 1);
        let len = self.pending().min(cap - at);
        (self.mem[at..].as_ptr(), len as u32)
    }
}

/// The receive side: multishot over a provided-buffer ring, or single recv.
#[derive(Debug)]
pub(super) enum RecvSide {
    Multi(MultiRecv),
    Single(SingleRecv),
}

/// Multishot receive over a provided-buffer ring.
#[derive(Debug)]
pub(super) struct MultiRecv {
    /// The ring of `io_uring_buf` entries shared with the kernel.
    pub(super) ring: MmapMut,
    /// The buffers the entries point into.
    pub(super) bufs: MmapMut,
    /// Our copy of the ring tail (entries published to the kernel).
    pub(super) tail: u16,
    /// Filled buffers in arrival order: (buffer id, consumed, length).
    pub(super) ready: VecDeque<(u16, usize, usize)>,
    pub(super) armed: bool,
}

impl MultiRecv {
    pub(super) fn new() -> io::Result<MultiRecv> {
        let entry = std::mem::size_of::<types::BufRingEntry>();
        let mut ring = MmapMut::map_anon((RECV_BUFFERS as usize * entry).max(4096))?;
        let bufs = MmapMut::map_anon(RECV_BUFFERS as usize * RECV_BUFFER_BYTES)?;
        let base = ring.as_mut_ptr().cast::<types::BufRingEntry>();
        for bid in 0..RECV_BUFFERS {
            // SAFETY: `ring` holds RECV_BUFFERS entries (sized above) and is
            // page-aligned by mmap, so `base + bid` is an aligned entry in bounds;
            // the kernel does not see the ring until it is registered.
            let e = unsafe { &mut *base.add(bid as usize) };
            e.set_addr(bufs.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64);
            e.set_len(RECV_BUFFER_BYTES as u32);
            e.set_bid(bid);
        }
        let mut m = MultiRecv {
            ring,
            bufs,
            tail: 0,
            ready: VecDeque::new(),
            armed: false,
        };
        m.publish_tail(RECV_BUFFERS);
        Ok(m)
    }

    pub(super) fn tail_atomic(&self) -> &AtomicU16 {
        let base = self.ring.as_ptr().cast::<types::BufRingEntry>();
        // SAFETY: `base` is the first entry of the mapped ring, which lives as
        // long as `self`; the tail is the u16 `resv` field of that entry, at an
        // even offset, so it is aligned for AtomicU16. The kernel only reads it.
        unsafe { &*BufRingEntry_tail(base).cast::<AtomicU16>() }
    }

    pub(super) fn publish_tail(&mut self, tail: u16) {
        self.tail = tail;
        // Release: makes the entry written before this store (addr/len/bid)
        // visible to the kernel, which reads the tail with an acquire load
        // before reading entries up to it.
        self.tail_atomic().store(tail, Ordering::Release);
    }

    /// Hands buffer `bid` back to the kernel.
    pub(super) fn recycle(&mut self, bid: u16) {
        let slot = (self.tail & (RECV_BUFFERS - 1)) as usize;
        let base = self.ring.as_mut_ptr().cast::<types::BufRingEntry>();
        // SAFETY: `slot < RECV_BUFFERS`, so the entry is inside the mapped
        // ring; the kernel does not read slots at or past the published tail,
        // and this slot's previous buffer was consumed by the kernel already
        // (at most RECV_BUFFERS buffers exist and `bid` is one we hold).
        let e = unsafe { &mut *base.add(slot) };
        e.set_addr(self.bufs.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64);
        e.set_len(RECV_BUFFER_BYTES as u32);
        e.set_bid(bid);
        self.publish_tail(self.tail.wrapping_add(1));
    }
}

/// The tail of a buffer ring (wrapper keeping the unsafe call in one place).
#[allow(non_snake_case)]
pub(super) fn BufRingEntry_tail(base: *const types::BufRingEntry) -> *const u16 {
    // SAFETY: callers pass the page-aligned start of a mapped buffer ring;
    // `tail` only computes the address of a field of its first entry.
    unsafe { types::BufRingEntry::tail(base) }
}

/// Single receive into a private buffer, re-armed when emptied.
#[derive(Debug)]
pub(super) struct SingleRecv {
    pub(super) buf: Box<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) armed: bool,
}

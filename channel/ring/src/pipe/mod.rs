//! The byte pipe: an SPSC byte stream in a caller-given region, for two processes.
//!
//! The region is typically a `MAP_SHARED` mapping (memfd, /dev/shm file): one
//! process attaches a [`PipeWriter`], the other a [`PipeReader`]. The shm
//! transport uses two pipes, one per direction.
//!
//! # Region layout (x86_64 / aarch64, where a cache line pair is 128 bytes)
//!
//! ```text
//!   offset 0    magic     u64  "FTVMPIPE" (LE), stored last by `init` (Release)
//!   offset 8    capacity  u64  data bytes, a power of two
//!   offset 128  write_pos u64  bytes ever written   -- written only by the writer
//!   offset 256  read_pos  u64  bytes ever read      -- written only by the reader
//!   offset 384  data[capacity]; byte at position p lives at data[p & (capacity-1)]
//! ```
//!
//! Each position owns a 128-byte block (`CachePadded`), so the two sides never
//! write the same cache line. [`HEADER_LEN`] and [`REGION_ALIGN`] give the
//! values for the build target.
//!
//! # The one-sided protocol
//!
//! Neither side ever writes the other's position or reads its private state;
//! each side's only remote action is a write into the region:
//!
//! 1. The **writer** knows `write_pos` (its own) and a cached `read_pos`. Free
//!    space is `capacity - (write_pos - read_pos)`; only when that is too small
//!    does it reload `read_pos` (the reader's credit).
//! 2. It copies bytes into `data` at `write_pos & mask` (two pieces across the
//!    end), then stores `write_pos + n` with Release. Over RDMA (`ftvm-rdma`)
//!    this is an RDMA WRITE of the data followed by an RDMA WRITE of the
//!    8-byte position, where the reader's queue pair places data in order;
//!    elsewhere the position travels as the data's WRITE WITH IMMEDIATE.
//! 3. The **reader** loads `write_pos` (Acquire), checks
//!    `write_pos - read_pos <= capacity` (anything else is [`RingError::Corrupt`]),
//!    copies bytes out and stores its new `read_pos` (Release): the credit. Over
//!    RDMA the credit is an RDMA WRITE back into the writer's copy (with a
//!    check word against torn reads: see `ftvm_rdma::layout`).
//!
//! # Trust
//!
//! The peer may be buggy or hostile. Neither side keeps trusting values from
//! the region after checking them: each keeps its own position privately and
//! only *stores* it; the capacity is read once at attach; every index is masked
//! into the data area, and the reader validates `write_pos` before using it.
//! So a peer can corrupt the stream's bytes (which the wire CRC catches) but
//! never make this process touch memory outside the region. Data bytes are
//! only ever copied with raw pointers, never borrowed as Rust references,
//! because the peer may write them at any time.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

pub use reader::PipeReader;
pub use writer::PipeWriter;

use crate::RingError;

/// Magic word at offset 0 of a formatted region: `b"FTVMPIPE"` little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FTVMPIPE");

/// The header at the start of the region.
#[repr(C)]
pub(crate) struct Header {
    magic: AtomicU64,
    capacity: AtomicU64,
    write_pos: CachePadded<AtomicU64>,
    read_pos: CachePadded<AtomicU64>,
}

/// Bytes of header before the data area (384 on x86_64 and aarch64).
pub const HEADER_LEN: usize = size_of::<Header>();

/// Offset of `write_pos` in the region (128 on x86_64 and aarch64): where a
/// remote writer (the RDMA transport's trailer mode) stores the position.
pub const WRITE_POS_OFFSET: usize = std::mem::offset_of!(Header, write_pos);

/// Offset of `read_pos` in the region (256 on x86_64 and aarch64): where a
/// remote reader stores its credit. The position owns a whole padded block, so
/// the bytes after it (up to [`HEADER_LEN`]) are free for a transport's use.
pub const READ_POS_OFFSET: usize = std::mem::offset_of!(Header, read_pos);

/// Alignment the region start needs (128 on x86_64 and aarch64; a page-aligned
/// mmap always satisfies it).
pub const REGION_ALIGN: usize = align_of::<Header>();

/// Region bytes for a pipe of `capacity` data bytes: header plus data.
pub const fn region_len(capacity: usize) -> usize {
    HEADER_LEN + capacity
}

/// Formats the region at `ptr` as an empty pipe and returns its capacity: the
/// largest power of two (at most [`MAX_CAPACITY`](crate::MAX_CAPACITY)) that
/// fits after the header.
///
/// Errors: [`RingError::Misaligned`] if `ptr` is not [`REGION_ALIGN`]-aligned;
/// [`RingError::RegionTooSmall`] if `len < region_len(MIN_CAPACITY)`.
///
/// # Safety
///
/// `ptr` must be valid for reads and writes of `len` bytes, and no writer or
/// reader may be attached to the region while it is formatted.
pub unsafe fn init(ptr: *mut u8, len: usize) -> Result<usize, RingError> {
    check_align(ptr)?;
    let need = region_len(crate::MIN_CAPACITY);
    if len < need {
        return Err(RingError::RegionTooSmall { len, need });
    }
    let room = len - HEADER_LEN;
    // Largest power of two <= room: the top set bit.
    let capacity = (1usize << (usize::BITS - 1 - room.leading_zeros())).min(crate::MAX_CAPACITY);
    // SAFETY: `ptr` is aligned for `Header` (checked above) and valid for
    // `len >= HEADER_LEN` bytes (caller's contract); the header holds only
    // atomics, for which any bit pattern is valid and shared access is allowed.
    let header = unsafe { &*ptr.cast::<Header>() };
    // Relaxed: published by the Release store of `magic` below.
    header.magic.store(0, Ordering::Relaxed);
    header.capacity.store(capacity as u64, Ordering::Relaxed);
    header.write_pos.store(0, Ordering::Relaxed);
    header.read_pos.store(0, Ordering::Relaxed);
    // Release: pairs with the Acquire load of `magic` in `attach`: an attacher
    // that sees the magic sees the capacity and zeroed positions too.
    header.magic.store(MAGIC, Ordering::Release);
    Ok(capacity)
}

fn check_align(ptr: *mut u8) -> Result<(), RingError> {
    let addr = ptr as usize;
    if addr == 0 || !addr.is_multiple_of(REGION_ALIGN) {
        return Err(RingError::Misaligned { addr });
    }
    Ok(())
}

/// A checked view of a formatted region, shared by the writer and the reader.
#[derive(Debug)]
pub(crate) struct Region {
    header: NonNull<Header>,
    data: NonNull<u8>,
    /// Read once at attach and checked; never reloaded from the region.
    capacity: usize,
}

impl Region {
    /// Checks alignment, magic and capacity.
    ///
    /// # Safety
    ///
    /// `ptr` valid for reads and writes of `len` bytes for as long as the
    /// returned value (and whatever holds it) lives.
    unsafe fn attach(ptr: *mut u8, len: usize) -> Result<Self, RingError> {
        check_align(ptr)?;
        let need = region_len(crate::MIN_CAPACITY);
        if len < need {
            return Err(RingError::RegionTooSmall { len, need });
        }
        // SAFETY: aligned (checked), non-null, valid for `len >= HEADER_LEN`
        // bytes (caller's contract); the header is all atomics, valid for any bits.
        let header = unsafe { &*ptr.cast::<Header>() };
        // Acquire: pairs with the Release store of `magic` in `init`.
        let found = header.magic.load(Ordering::Acquire);
        if found != MAGIC {
            return Err(RingError::BadMagic { found });
        }
        // Relaxed: ordered by the Acquire load of `magic` above.
        let raw = header.capacity.load(Ordering::Relaxed);
        let capacity = usize::try_from(raw).unwrap_or(usize::MAX);
        crate::check_capacity(capacity)?;
        let need = region_len(capacity);
        if len < need {
            return Err(RingError::RegionTooSmall { len, need });
        }
        // SAFETY: `HEADER_LEN < len`, so the data pointer is inside the region
        // and non-null.
        let data = unsafe { NonNull::new_unchecked(ptr.add(HEADER_LEN)) };
        Ok(Self {
            header: NonNull::from(header),
            data,
            capacity,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: checked aligned and valid at attach; the attach contract keeps
        // the region mapped while `self` lives; atomics tolerate the peer's writes.
        unsafe { self.header.as_ref() }
    }

    fn index(&self, position: u64) -> usize {
        // Truncation is intended: the mask (capacity - 1) keeps low bits only.
        (position as usize) & (self.capacity - 1)
    }

    /// Copies `src` into the data area starting at `position` (wrapping).
    /// `src.len() <= capacity`.
    fn copy_in(&self, position: u64, src: &[u8]) {
        // A real check (one branch per copy): it is what keeps the copies below in bounds.
        assert!(
            src.len() <= self.capacity,
            "copy of {} bytes into a {}-byte pipe",
            src.len(),
            self.capacity
        );
        let index = self.index(position);
        let first = src.len().min(self.capacity - index);
        // SAFETY: `index < capacity` (masked), `first <= capacity - index` and
        // `src.len() - first <= capacity` (asserted above) keep both copies inside the data area (valid per the attach
        // contract); `src` is our own memory, so the ranges cannot overlap.
        // These bytes are outside `read_pos..write_pos`, so a well-behaved reader
        // does not read them now; a misbehaving one only sees torn bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(index), first);
            std::ptr::copy_nonoverlapping(
                src.as_ptr().add(first),
                self.data.as_ptr(),
                src.len() - first,
            );
        }
    }

    /// Copies `dst.len()` bytes out of the data area starting at `position`
    /// (wrapping). `dst.len() <= capacity`.
    fn copy_out(&self, position: u64, dst: &mut [u8]) {
        // A real check (one branch per copy): it is what keeps the copies below in bounds.
        assert!(
            dst.len() <= self.capacity,
            "copy of {} bytes out of a {}-byte pipe",
            dst.len(),
            self.capacity
        );
        let index = self.index(position);
        let first = dst.len().min(self.capacity - index);
        // SAFETY: as in `copy_in` (masked index, asserted length), both source
        // ranges lie in the data area and
        // `dst` is our own exclusive buffer. A well-behaved writer does not write
        // `read_pos..write_pos`; a misbehaving one only gives us wrong bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data.as_ptr().add(index), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data.as_ptr(),
                dst.as_mut_ptr().add(first),
                dst.len() - first,
            );
        }
    }
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Relaxed: a diagnostic snapshot; nothing is read through these values.
        f.debug_struct("Header")
            .field("magic", &self.magic.load(Ordering::Relaxed))
            .field("capacity", &self.capacity.load(Ordering::Relaxed))
            .field("write_pos", &self.write_pos.load(Ordering::Relaxed))
            .field("read_pos", &self.read_pos.load(Ordering::Relaxed))
            .finish()
    }
}

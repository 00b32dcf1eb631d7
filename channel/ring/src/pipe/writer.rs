//! The writing end of a byte pipe.

use std::sync::atomic::Ordering;

use super::Region;
use crate::RingError;

/// Writing end of a [byte pipe](super). `Send`, not `Sync`.
#[derive(Debug)]
pub struct PipeWriter {
    region: Region,
    /// Own position; the region's `write_pos` mirrors it (only we store it).
    write_pos: u64,
    /// Last credit seen from the reader.
    cached_read_pos: u64,
}

// SAFETY: the writer touches the region only through atomics and raw copies
// into bytes the protocol gives it, from whichever single thread owns it; the
// attach contract keeps the region valid while it lives. Not `Sync` (the raw
// pointers in `Region` keep it so).
unsafe impl Send for PipeWriter {}

impl PipeWriter {
    /// Attaches to a region formatted by [`init`](super::init), continuing at
    /// the `write_pos` stored there.
    ///
    /// Errors: [`RingError::Misaligned`], [`RingError::BadMagic`],
    /// [`RingError::BadCapacity`], [`RingError::RegionTooSmall`].
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes while the writer
    /// lives (keep the mapping alive), and at most one writer may be attached.
    pub unsafe fn attach(ptr: *mut u8, len: usize) -> Result<PipeWriter, RingError> {
        // SAFETY: forwarded contract.
        let region = unsafe { Region::attach(ptr, len)? };
        let header = region.header();
        // Relaxed: our own position (no other writer is attached), ordered
        // after `init` by the Acquire load of the magic in `Region::attach`.
        let write_pos = header.write_pos.load(Ordering::Relaxed);
        // Acquire: pairs with the reader's Release store of `read_pos`.
        let cached_read_pos = header.read_pos.load(Ordering::Acquire);
        Ok(Self {
            region,
            write_pos,
            cached_read_pos,
        })
    }

    /// Copies as much of the concatenation of `bufs` as fits (a prefix),
    /// publishes it, and returns the bytes written (0 when full).
    pub fn write(&mut self, bufs: &[&[u8]]) -> usize {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return 0;
        }
        let mut free = self.cached_free();
        if free < total {
            free = self.free();
        }
        let mut left = total.min(free);
        let mut position = self.write_pos;
        for buf in bufs {
            if left == 0 {
                break;
            }
            let piece = &buf[..buf.len().min(left)];
            self.region.copy_in(position, piece);
            position += piece.len() as u64;
            left -= piece.len();
        }
        let written = (position - self.write_pos) as usize;
        if written > 0 {
            // Release: pairs with the reader's Acquire load of `write_pos` in
            // `PipeReader::read`/`available`: the data copied above is visible
            // before the position that covers it (one-sided: data, then position).
            self.region
                .header()
                .write_pos
                .store(position, Ordering::Release);
            self.write_pos = position;
        }
        written
    }

    /// Free bytes now (reloads the reader's credit). A garbage `read_pos`
    /// (ahead of `write_pos`, or more than the capacity behind) counts as no
    /// free space: the writer never overwrites data it cannot prove was read.
    pub fn free(&mut self) -> usize {
        // Acquire: pairs with the reader's Release store of `read_pos` in
        // `PipeReader::read`: its copies out of the bytes we may now overwrite
        // happen before our writes.
        let read_pos = self.region.header().read_pos.load(Ordering::Acquire);
        if read_pos <= self.write_pos && self.write_pos - read_pos <= self.region.capacity as u64 {
            self.cached_read_pos = read_pos;
        }
        self.cached_free()
    }

    /// Bytes written so far (the stream position).
    pub fn position(&self) -> u64 {
        self.write_pos
    }

    /// Data bytes in the pipe.
    pub fn capacity(&self) -> usize {
        self.region.capacity
    }

    fn cached_free(&self) -> usize {
        // `cached_read_pos` only takes validated values (<= write_pos, within capacity).
        self.region.capacity - (self.write_pos - self.cached_read_pos) as usize
    }
}

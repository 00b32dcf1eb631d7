//! The reading end of a byte pipe.

use std::sync::atomic::Ordering;

use super::Region;
use crate::RingError;

/// Reading end of a [byte pipe](super). `Send`, not `Sync`.
#[derive(Debug)]
pub struct PipeReader {
    region: Region,
    /// Own position; the region's `read_pos` mirrors it (only we store it).
    read_pos: u64,
    /// Last validated `write_pos` seen (`read_pos <= cached_write_pos <= read_pos + capacity`).
    cached_write_pos: u64,
}

// SAFETY: the reader touches the region only through atomics and raw copies
// out of bytes the protocol gives it, from whichever single thread owns it; the
// attach contract keeps the region valid while it lives. Not `Sync` (the raw
// pointers in `Region` keep it so).
unsafe impl Send for PipeReader {}

impl PipeReader {
    /// Attaches to a region formatted by [`init`](super::init), continuing at
    /// the `read_pos` stored there.
    ///
    /// Errors: [`RingError::Misaligned`], [`RingError::BadMagic`],
    /// [`RingError::BadCapacity`], [`RingError::RegionTooSmall`].
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of `len` bytes while the reader
    /// lives (keep the mapping alive), and at most one reader may be attached.
    pub unsafe fn attach(ptr: *mut u8, len: usize) -> Result<PipeReader, RingError> {
        // SAFETY: forwarded contract.
        let region = unsafe { Region::attach(ptr, len)? };
        // Relaxed: our own position (no other reader is attached), ordered
        // after `init` by the Acquire load of the magic in `Region::attach`.
        let read_pos = region.header().read_pos.load(Ordering::Relaxed);
        Ok(Self {
            region,
            read_pos,
            cached_write_pos: read_pos,
        })
    }

    /// Copies out up to `out.len()` available bytes, publishes the new
    /// `read_pos` (credit for the writer) and returns the bytes read (0: none).
    ///
    /// Errors: [`RingError::Corrupt`] if the writer published a `write_pos`
    /// behind `read_pos` or more than the capacity ahead; nothing is read, and
    /// every later call that reloads the position reports it again while the
    /// published value stays invalid.
    pub fn read(&mut self, out: &mut [u8]) -> Result<usize, RingError> {
        let mut available = self.cached_available();
        if available < out.len() {
            available = self.available()?;
        }
        let n = available.min(out.len());
        if n == 0 {
            return Ok(0);
        }
        self.region.copy_out(self.read_pos, &mut out[..n]);
        self.read_pos += n as u64;
        // Release: pairs with the writer's Acquire load of `read_pos` in
        // `PipeWriter::free`/`write`: our copies out of these bytes happen
        // before the writer reuses them (the credit of the one-sided protocol).
        self.region
            .header()
            .read_pos
            .store(self.read_pos, Ordering::Release);
        Ok(n)
    }

    /// Bytes available now (reloads and validates the writer's `write_pos`).
    ///
    /// Errors: [`RingError::Corrupt`], as for [`read`](Self::read).
    pub fn available(&mut self) -> Result<usize, RingError> {
        // Acquire: pairs with the writer's Release store of `write_pos` in
        // `PipeWriter::write`: the data below it is visible to our copies.
        let write_pos = self.region.header().write_pos.load(Ordering::Acquire);
        let ahead = write_pos.wrapping_sub(self.read_pos);
        if write_pos < self.read_pos || ahead > self.region.capacity as u64 {
            return Err(RingError::Corrupt {
                write_pos,
                read_pos: self.read_pos,
                capacity: self.region.capacity,
            });
        }
        self.cached_write_pos = write_pos;
        Ok(self.cached_available())
    }

    /// Bytes read so far (the stream position).
    pub fn position(&self) -> u64 {
        self.read_pos
    }

    /// Data bytes in the pipe.
    pub fn capacity(&self) -> usize {
        self.region.capacity
    }

    fn cached_available(&self) -> usize {
        // Validated in `available`: 0 <= cached_write_pos - read_pos <= capacity.
        (self.cached_write_pos - self.read_pos) as usize
    }
}

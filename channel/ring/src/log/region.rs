//! The heap buffer and the two positions shared by a producer and a consumer.

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use crossbeam_utils::CachePadded;

use crate::RingError;

/// Alignment of the data buffer: a page, so records never straddle more cache
/// lines than needed and the buffer could be registered for DMA as it is.
const BUFFER_ALIGN: usize = 4096;

/// Buffer plus positions; owned jointly (through `Arc`) by both ends.
pub(super) struct Region {
    /// Consumer position: bytes released so far (padding included).
    /// Written only by the consumer.
    pub(super) head: CachePadded<AtomicU64>,
    /// Producer position: bytes committed so far (padding included).
    /// Written only by the producer.
    pub(super) tail: CachePadded<AtomicU64>,
    /// Start of `capacity` bytes from `alloc_zeroed`, freed in `Drop`.
    buffer: NonNull<u8>,
    capacity: usize,
}

// SAFETY: `Region` owns its allocation (freed once, in `Drop`) and its safe
// methods only hand out raw pointers or touch atomics; every access to buffer
// bytes goes through the `unsafe` word functions or the producer/consumer,
// whose ring protocol keeps the two threads on disjoint bytes.
unsafe impl Send for Region {}
// SAFETY: as above: shared use is through atomics and protocol-guarded raw access.
unsafe impl Sync for Region {}

impl Region {
    /// Allocates a zeroed buffer of `capacity` bytes (checked by `check_capacity`).
    pub(super) fn new(capacity: usize) -> Result<Self, RingError> {
        crate::check_capacity(capacity)?;
        let layout = Self::layout(capacity);
        // SAFETY: `layout` has a non-zero size (capacity >= MIN_CAPACITY, checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(buffer) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Ok(Self {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            buffer,
            capacity,
        })
    }

    fn layout(capacity: usize) -> Layout {
        Layout::from_size_align(capacity, BUFFER_ALIGN)
            .expect("a power of two <= 2 GiB with page alignment is a valid layout")
    }

    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pointer to the byte at `index & (capacity - 1)`: always inside the buffer.
    ///
    /// Accessing `len` bytes from it is in bounds when `index + len <= capacity`
    /// for an `index < capacity`. Which end may touch which bytes is the ring
    /// protocol's business (see the producer and consumer).
    pub(super) fn at(&self, index: usize) -> *mut u8 {
        debug_assert!(
            index < self.capacity,
            "index {index} >= capacity {}",
            self.capacity
        );
        // SAFETY: the mask keeps the offset below `capacity` (a power of two),
        // so the result stays inside the allocation made in `new`.
        unsafe { self.buffer.as_ptr().add(index & (self.capacity - 1)) }
    }

    /// Reads the little-endian length word at `index` (a record start).
    ///
    /// # Safety
    ///
    /// `index + 4 <= capacity`, and the 4 bytes are not being written
    /// concurrently (they belong to a committed, unreleased record).
    pub(super) unsafe fn read_word(&self, index: usize) -> u32 {
        let mut word = [0u8; 4];
        // SAFETY: in bounds and free of concurrent writes per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(self.at(index), word.as_mut_ptr(), 4) };
        u32::from_le_bytes(word)
    }

    /// Writes the little-endian length word `word` at `index`.
    ///
    /// # Safety
    ///
    /// `index + 4 <= capacity`, and the bytes belong to the producer (beyond
    /// the published tail, inside the space it has checked to be free).
    pub(super) unsafe fn write_word(&self, index: usize, word: u32) {
        // SAFETY: in bounds and owned by the caller per this function's contract.
        unsafe { std::ptr::copy_nonoverlapping(word.to_le_bytes().as_ptr(), self.at(index), 4) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `buffer` came from `alloc_zeroed` with this very layout in
        // `new`, and `Drop` runs once, when the last `Arc` (producer or consumer) goes.
        unsafe { alloc::dealloc(self.buffer.as_ptr(), Self::layout(self.capacity)) };
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a diagnostic snapshot; nothing is read through these values.
        f.debug_struct("Region")
            .field("capacity", &self.capacity)
            .field(
                "head",
                &self.head.load(std::sync::atomic::Ordering::Relaxed),
            )
            .field(
                "tail",
                &self.tail.load(std::sync::atomic::Ordering::Relaxed),
            )
            .finish()
    }
}

//! The producer end: claim space, write the record in place, commit.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::region::Region;
use super::{ClaimError, PADDING_FLAG, RECORD_ALIGN};

/// Producer end of a record ring (the vCPU thread). `Send`, not `Sync`, not `Clone`.
pub struct Producer {
    region: Arc<Region>,
    /// Own position; mirrors `region.tail` (only this end writes it).
    tail: u64,
    /// Last consumer position seen; may lag the real one (then space looks smaller).
    cached_head: u64,
    /// One thread per end: `Cell` is `Send` but not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl Producer {
    pub(super) fn new(region: Arc<Region>) -> Self {
        Self {
            region,
            tail: 0,
            cached_head: 0,
            _not_sync: PhantomData,
        }
    }

    /// Reserves `len` contiguous bytes for one record.
    ///
    /// Errors: [`ClaimError::BadLength`] if `len < 8` or `len % 8 != 0`;
    /// [`ClaimError::TooLarge`] if `len > max_record_len()`;
    /// [`ClaimError::Full`] if the ring lacks `len` bytes (plus the padding up
    /// to the buffer end when the record must wrap) — retry later.
    pub fn claim(&mut self, len: usize) -> Result<Claim<'_>, ClaimError> {
        if len < RECORD_ALIGN || !len.is_multiple_of(RECORD_ALIGN) {
            return Err(ClaimError::BadLength { len });
        }
        let max = self.max_record_len();
        if len > max {
            return Err(ClaimError::TooLarge { len, max });
        }
        let capacity = self.capacity();
        let index = self.index(self.tail);
        let to_end = capacity - index;
        // The record wraps: pad to the buffer end, start it at index 0.
        let padding = if len <= to_end { 0 } else { to_end };
        let needed = padding + len;
        if needed > self.cached_free() {
            // Acquire: pairs with the consumer's Release store of `head` in
            // `ReadChunk::release_*`: its reads of the bytes we are about to
            // reuse happen before our writes into them.
            self.cached_head = self.region.head.load(Ordering::Acquire);
            let free = self.cached_free();
            if needed > free {
                return Err(ClaimError::Full { needed, free });
            }
        }
        let start = if padding == 0 { index } else { 0 };
        Ok(Claim {
            producer: self,
            start,
            len,
            padding,
        })
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> usize {
        self.region.capacity()
    }

    /// Largest record a claim accepts: `capacity / 2`.
    pub fn max_record_len(&self) -> usize {
        self.capacity() / 2
    }

    /// Free bytes now (reloads the consumer position). A claim of `len` needs
    /// `len` bytes, or more when it wraps (see [`ClaimError::Full`]).
    pub fn free_bytes(&self) -> usize {
        // Acquire: pairs with the consumer's Release store of `head`, like in `claim`.
        let head = self.region.head.load(Ordering::Acquire);
        self.capacity() - self.used(head)
    }

    /// Producer position: bytes ever committed, padding included.
    pub fn position(&self) -> u64 {
        self.tail
    }

    fn index(&self, position: u64) -> usize {
        // Truncation is intended: the capacity is a power of two <= 2^31,
        // so the mask keeps only bits that fit any usize.
        (position as usize) & (self.capacity() - 1)
    }

    fn used(&self, head: u64) -> usize {
        let used = self.tail - head;
        debug_assert!(
            used <= self.capacity() as u64,
            "tail {} head {head}",
            self.tail
        );
        // Cannot truncate: tail - head <= capacity <= 2^31 (the producer never
        // claims past head + capacity).
        used as usize
    }

    fn cached_free(&self) -> usize {
        self.capacity() - self.used(self.cached_head)
    }
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

/// Space reserved by [`Producer::claim`]; commit it or drop it to abandon it.
///
/// Dropping a claim without [`commit`](Claim::commit) publishes nothing; the
/// next claim reuses the space.
pub struct Claim<'a> {
    producer: &'a mut Producer,
    /// Index of the record's first byte (0 when it wraps).
    start: usize,
    len: usize,
    /// Bytes of padding written at the tail index on commit (0: no wrap).
    padding: usize,
}

impl Claim<'_> {
    /// The whole record, `len` bytes, length word included. The contents are
    /// unspecified (old records): overwrite every byte. `commit` overwrites
    /// bytes `0..4` with the length.
    pub fn buf(&mut self) -> &mut [u8] {
        // SAFETY: `claim` checked `start + len <= capacity` (a record either fits
        // before the buffer end or starts at 0 with len <= capacity / 2) and that
        // the bytes lie in the free space between the published tail and
        // `head + capacity`, which the consumer never reads until a later Release
        // store of `tail` covers them. The buffer is initialised (alloc_zeroed)
        // and `&mut self` makes this the only live reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.producer.region.at(self.start), self.len) }
    }

    /// Length of the record in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a claim holds at least 8 bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shortens the record to `len` bytes before it is committed (a record
    /// claimed at its largest size and found shorter once written, e.g. a
    /// batch of datagrams). The space after the new end stays free for the
    /// next claim. Errors: [`ClaimError::BadLength`] if `len < 8`,
    /// `len % 8 != 0` or `len` exceeds the claimed length (nothing changes).
    pub fn truncate(&mut self, len: usize) -> Result<(), ClaimError> {
        if len < RECORD_ALIGN || !len.is_multiple_of(RECORD_ALIGN) || len > self.len {
            return Err(ClaimError::BadLength { len });
        }
        self.len = len;
        Ok(())
    }

    /// Writes the length word (`len`, little-endian) into bytes `0..4`, and the
    /// padding record if this claim wraps, then publishes the record.
    pub fn commit(self) {
        let producer = self.producer;
        let region = &producer.region;
        // Cannot truncate: len <= capacity / 2 <= 2^30.
        let word = self.len as u32;
        // SAFETY: bytes start..start+4 are inside the claimed record (len >= 8),
        // owned by the producer until the store below (see `buf`).
        unsafe { region.write_word(self.start, word) };
        if self.padding > 0 {
            let pad_index = producer.index(producer.tail);
            // Cannot truncate: padding < capacity <= 2^31, so the flag bit is free.
            let pad_word = self.padding as u32 | PADDING_FLAG;
            // SAFETY: the padding spans pad_index..capacity (>= 8 bytes, positions
            // are multiples of 8), free space checked by `claim`, unpublished yet.
            unsafe { region.write_word(pad_index, pad_word) };
        }
        let tail = producer.tail + (self.padding + self.len) as u64;
        // Release: pairs with the consumer's Acquire load of `tail` in
        // `Consumer::read` / `is_empty`: the record bytes, its length word and
        // the padding word are visible before the position that covers them.
        region.tail.store(tail, Ordering::Release);
        producer.tail = tail;
    }
}

impl fmt::Debug for Claim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("start", &self.start)
            .field("len", &self.len)
            .field("padding", &self.padding)
            .finish()
    }
}

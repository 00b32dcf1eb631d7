//! The consumer end: see committed records, release them when sent.

use std::cell::Cell;
use std::fmt;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::region::Region;
use super::{PADDING_FLAG, RECORD_ALIGN};

/// A padding record found between the consumer and producer positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Padding {
    /// Position of the padding record's length word.
    position: u64,
    /// Its length (to the buffer end).
    len: u64,
}

/// Consumer end of a record ring (the channel sender). `Send`, not `Sync`, not `Clone`.
pub struct Consumer {
    pub(super) region: Arc<Region>,
    /// Own position; mirrors `region.head` (only this end writes it).
    head: u64,
    /// Last producer position seen.
    cached_tail: u64,
    /// The padding record in `head..cached_tail`, once found (at most one can
    /// be there: two would span more than the capacity).
    padding: Option<Padding>,
    /// Record boundary up to which the current lap was walked without finding
    /// padding, so each length word is read once however often `read` is called.
    scanned: u64,
    /// One thread per end: `Cell` is `Send` but not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl Consumer {
    pub(super) fn new(region: Arc<Region>) -> Self {
        Self {
            region,
            head: 0,
            cached_tail: 0,
            padding: None,
            scanned: 0,
            _not_sync: PhantomData,
        }
    }

    /// Everything committed now, padding excluded. Releasing is explicit
    /// ([`ReadChunk::release_up_to`], [`ReadChunk::release_all`]); dropping the
    /// chunk releases nothing.
    pub fn read(&mut self) -> ReadChunk<'_> {
        // Acquire: pairs with the producer's Release store of `tail` in
        // `Claim::commit`: every byte below it (records, length and padding
        // words) is visible to the reads below.
        self.cached_tail = self.region.tail.load(Ordering::Acquire);
        self.find_padding();
        if let Some(padding) = self.padding.filter(|p| p.position == self.head) {
            // Nothing before the padding (its records were released before the
            // producer wrapped): step over it so `first` starts at index 0.
            self.padding = None;
            self.publish_head(self.head + padding.len);
        }
        let capacity = self.region.capacity();
        let start = self.index(self.head);
        let available = self.available();
        let (first, second, padding_len) = match self.padding {
            Some(padding) => {
                let first = self.distance(self.head, padding.position);
                (
                    first,
                    available - first - padding.len as usize,
                    padding.len as usize,
                )
            }
            None if start + available > capacity => {
                // Records ended exactly at the buffer end and continue at 0.
                (capacity - start, start + available - capacity, 0)
            }
            None => (available, 0, 0),
        };
        ReadChunk {
            consumer: self,
            start,
            first,
            second,
            padding_len,
        }
    }

    /// True if nothing is committed (reloads the producer position only when
    /// the cached one says empty).
    pub fn is_empty(&mut self) -> bool {
        if self.head == self.cached_tail {
            // Acquire: pairs with the producer's Release store of `tail` in
            // `Claim::commit` (as in `read`).
            self.cached_tail = self.region.tail.load(Ordering::Acquire);
        }
        self.head == self.cached_tail
    }

    /// Consumer position: bytes ever released, padding included.
    pub fn position(&self) -> u64 {
        self.head
    }

    fn index(&self, position: u64) -> usize {
        // Truncation is intended: the mask (capacity - 1 < 2^31) keeps low bits only.
        (position as usize) & (self.region.capacity() - 1)
    }

    /// `to - from` for two positions within one capacity of each other.
    fn distance(&self, from: u64, to: u64) -> usize {
        let distance = to - from;
        debug_assert!(distance <= self.region.capacity() as u64);
        // Cannot truncate: bounded by the capacity (<= 2^31).
        distance as usize
    }

    fn available(&self) -> usize {
        self.distance(self.head, self.cached_tail)
    }

    /// Finds the padding record in `head..cached_tail`, if the committed bytes
    /// cross the buffer end, by walking length words from where the last walk
    /// stopped.
    fn find_padding(&mut self) {
        if self.padding.is_some_and(|p| p.position >= self.head) {
            return;
        }
        self.padding = None;
        let capacity = self.region.capacity();
        let start = self.index(self.head);
        if start + self.available() <= capacity {
            return; // No wrap, so no padding.
        }
        // Position of the buffer end in this lap; the tail is past it, so every
        // byte up to it is committed.
        let lap_end = self.head + (capacity - start) as u64;
        let mut position = self.scanned.max(self.head);
        while position < lap_end {
            let index = self.index(position);
            // SAFETY: `index < capacity` and positions are multiples of 8, so the
            // word is in bounds; `position < lap_end < cached_tail`, so it is a
            // committed length word (the producer writes no byte below the tail).
            let word = unsafe { self.region.read_word(index) };
            let len = u64::from(word & !PADDING_FLAG);
            // Only `Claim::commit` writes length words: a record is 8..=capacity/2
            // bytes, a multiple of 8, and a padding record runs to the buffer end.
            assert!(
                len >= RECORD_ALIGN as u64
                    && len.is_multiple_of(RECORD_ALIGN as u64)
                    && position + len <= lap_end,
                "ftvm-ring invariant broken: length word {word:#x} at position {position}"
            );
            if word & PADDING_FLAG != 0 {
                assert!(
                    position + len == lap_end,
                    "ftvm-ring invariant broken: padding at {position} of {len} bytes does not reach the buffer end"
                );
                self.padding = Some(Padding { position, len });
                break;
            }
            position += len;
        }
        self.scanned = position;
    }

    /// Publishes a new consumer position (after every read of the bytes below it).
    fn publish_head(&mut self, head: u64) {
        // Release: pairs with the producer's Acquire load of `head` in
        // `Producer::claim` / `free_bytes`: our reads of the released bytes
        // happen before the producer overwrites them.
        self.region.head.store(head, Ordering::Release);
        self.head = head;
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.region.capacity())
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .field("padding", &self.padding)
            .finish()
    }
}

/// The committed bytes seen by one [`Consumer::read`]: up to two slices of
/// whole records, padding excluded.
///
/// The slices and records borrow the chunk: they cannot outlive a release,
/// after which the producer may overwrite the bytes.
pub struct ReadChunk<'a> {
    pub(super) consumer: &'a mut Consumer,
    /// Index of the first byte.
    start: usize,
    /// Bytes from `start` up to the commit point or the padding record.
    first: usize,
    /// Bytes from index 0 after a wrap.
    second: usize,
    /// Length of the padding record between the two slices (0: none).
    padding_len: usize,
}

impl<'a> ReadChunk<'a> {
    /// `(first, second)`: `first` from the consumer position up to the commit
    /// point or the padding record; `second` from index 0 after a wrap (else
    /// empty). Both hold whole records only.
    pub fn slices(&self) -> (&[u8], &[u8]) {
        let region = &self.consumer.region;
        // SAFETY: `start + first <= capacity` and `second <= capacity` by the
        // construction in `Consumer::read` (first stops at the buffer end or at
        // the padding). Both ranges are committed (below the Acquire-loaded
        // tail, so initialised and visible) and not yet released, so the
        // producer writes none of these bytes while the chunk — which these
        // borrows cannot outlive — exists; releasing consumes the chunk.
        unsafe {
            (
                std::slice::from_raw_parts(region.at(self.start), self.first),
                std::slice::from_raw_parts(region.at(0), self.second),
            )
        }
    }

    /// Bytes in both slices (padding excluded).
    pub fn len(&self) -> usize {
        self.first + self.second
    }

    /// True if nothing was committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Like [`records`](Self::records), for as long as the consumer stays
    /// borrowed: the chunk is given up (nothing is released), so the
    /// records can be lent on — and since releasing takes the consumer
    /// mutably, nothing can release them while they are borrowed.
    pub fn into_records(self) -> Records<'a> {
        let consumer: &'a Consumer = self.consumer;
        let region = &consumer.region;
        // SAFETY: the ranges are those of `slices` (in bounds, committed and
        // unreleased, see there). They live for 'a, the exclusive borrow of
        // the consumer this chunk held, now a shared one: every release and
        // every later `read` needs `&mut Consumer`, so neither can happen
        // while these slices exist, and the producer writes only released
        // bytes.
        let (first, second) = unsafe {
            (
                std::slice::from_raw_parts(region.at(self.start), self.first),
                std::slice::from_raw_parts(region.at(0), self.second),
            )
        };
        Records { first, second }
    }

    /// Each record's whole bytes (length word first), in order, padding skipped.
    pub fn records(&self) -> Records<'_> {
        let (first, second) = self.slices();
        Records { first, second }
    }

    /// Releases the longest prefix of whole records totalling at most `bytes`
    /// (counted over [`slices`](Self::slices), padding excluded) and returns the
    /// bytes released. Releasing the last record before the padding record
    /// releases the padding too.
    pub fn release_up_to(self, bytes: usize) -> usize {
        let released = if bytes >= self.len() {
            self.len()
        } else {
            let mut released = 0;
            for record in self.records() {
                if released + record.len() > bytes {
                    break;
                }
                released += record.len();
            }
            released
        };
        self.release(released);
        released
    }

    /// Releases everything in the chunk (and the padding record, if any).
    pub fn release_all(self) {
        let all = self.len();
        self.release(all);
    }

    /// Releases `bytes` over the slices (a record boundary), skipping the padding
    /// when the release reaches it.
    fn release(self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let skip = if bytes >= self.first {
            self.padding_len
        } else {
            0
        };
        let head = self.consumer.head + (bytes + skip) as u64;
        self.consumer.publish_head(head);
    }
}

impl fmt::Debug for ReadChunk<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadChunk")
            .field("start", &self.start)
            .field("first", &self.first)
            .field("second", &self.second)
            .field("padding_len", &self.padding_len)
            .finish()
    }
}

/// Iterator over the records of a [`ReadChunk`]; see [`ReadChunk::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    first: &'a [u8],
    second: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.first.is_empty() {
            std::mem::swap(&mut self.first, &mut self.second);
        }
        let word = self.first.first_chunk::<4>()?;
        // The slices hold whole records written by `Claim::commit` (checked in
        // `Consumer::find_padding` for the lap it walks): the length word is the
        // record length, at most the slice length.
        // The clamp only keeps a corrupted word from looping or reading past the slice.
        let floor = RECORD_ALIGN.min(self.first.len());
        let len = (u32::from_le_bytes(*word) as usize).clamp(floor, self.first.len());
        let (record, rest) = self.first.split_at(len);
        self.first = rest;
        Some(record)
    }
}

impl FusedIterator for Records<'_> {}

//! The record ring: SPSC, claim → write in place → commit.
//!
//! # Records
//!
//! A record is `len` bytes with `len % 8 == 0` and `8 <= len <= capacity / 2`;
//! its first 4 bytes are the little-endian length word (an ftvm wire frame
//! satisfies this as it is). Positions are `u64` byte counters that only grow;
//! the byte at position `p` lives at index `p & (capacity - 1)`.
//!
//! ```text
//!            head (consumer)                 tail (producer)
//!              |                               |
//!  index 0     v                               v                 capacity
//!  +-----------+-------+-----------+-----------+-------------------------+
//!  |   free    | rec A |   rec B   |   rec C   |          free           |
//!  +-----------+-------+-----------+-----------+-------------------------+
//! ```
//!
//! A record that does not fit between the tail index and the buffer end
//! becomes a **padding record** plus a fresh start at index 0 (Aeron's
//! `handleEndOfLog`): the length word at the tail index is
//! `remaining | 0x8000_0000` and the record follows at offset 0.
//!
//! ```text
//!  index 0                  head                   tail'        capacity
//!  +-----------+------------+--------+--------+-----+-----------------+
//!  |  rec D    |    free    | rec A  | rec B  | rec C | PAD (to end)   |
//!  +-----------+------------+--------+--------+-------+----------------+
//!   ^ the record that did not fit        slices(): first = A..C, second = D
//! ```
//!
//! Because a record is at most `capacity / 2`, it always fits after padding
//! once the consumer has drained the ring.
//!
//! # Commit is a position, not a length word
//!
//! [`Claim::commit`] writes the length word, then publishes the new producer
//! position with one Release store; the consumer learns what is committed from
//! that position alone (one Acquire load), never by polling length words. So
//! the one-sided form of this ring (shared memory, RDMA) is "write the record
//! bytes, then write the 8-byte tail" — no per-record flag to write and no
//! zeroing of consumed space to let a reader distinguish "not yet written"
//! from "written".
//!
//! # Orderings
//!
//! * Producer `tail.store(Release)` in [`Claim::commit`] pairs with the
//!   consumer's `tail.load(Acquire)` in [`Consumer::read`] /
//!   [`Consumer::is_empty`]: the record bytes and length words are visible
//!   before the position that covers them.
//! * Consumer `head.store(Release)` in [`ReadChunk::release_up_to`] /
//!   [`ReadChunk::release_all`] (and when skipping a leading padding record)
//!   pairs with the producer's `head.load(Acquire)` in [`Producer::claim`] /
//!   [`Producer::free_bytes`]: the consumer's reads of released bytes happen
//!   before the producer overwrites them.
//!
//! Each side caches the other's position and reloads it only when the cached
//! value says it possibly lacks room (producer) or data (consumer), as in rtrb;
//! positions sit in separate cache lines (`CachePadded`).
//!
//! # Borrow rules the compiler enforces
//!
//! The ends are `Send` but not `Sync`: one thread per end.
//!
//! ```compile_fail
//! fn shared_between_threads<T: Sync>() {}
//! shared_between_threads::<ftvm_ring::log::Producer>();
//! ```
//!
//! Slices and records borrow the [`ReadChunk`], so none can be used after the
//! release that lets the producer overwrite them:
//!
//! ```compile_fail
//! let (mut producer, mut consumer) = ftvm_ring::log::with_capacity(4096).unwrap();
//! producer.claim(8).unwrap().commit();
//! let chunk = consumer.read();
//! let (first, _) = chunk.slices();
//! chunk.release_all();
//! assert_eq!(first.len(), 8); // error: `chunk` moved while borrowed
//! ```

mod consumer;
mod producer;
mod region;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use consumer::{Consumer, ReadChunk, Records};
pub use producer::{Claim, Producer};

use crate::RingError;

/// Alignment and granularity of records: every record length is a multiple.
pub const RECORD_ALIGN: usize = 8;

/// Bit set in the length word of a padding record.
pub const PADDING_FLAG: u32 = 0x8000_0000;

/// Why [`Producer::claim`] gave no space.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Not enough free space now (flow control: retry after the consumer releases).
    /// `needed` includes the padding record when the claim would wrap.
    #[error("ring full: claim needs {needed} bytes, {free} free")]
    Full {
        /// Bytes the claim needs, padding included.
        needed: usize,
        /// Bytes free after reloading the consumer position.
        free: usize,
    },
    /// The record can never fit: longer than half the capacity.
    #[error("record length {len} exceeds maximum {max}")]
    TooLarge {
        /// Length asked for.
        len: usize,
        /// [`Producer::max_record_len`].
        max: usize,
    },
    /// The length is below 8 or not a multiple of 8.
    #[error("bad record length {len} (must be a multiple of 8, at least 8)")]
    BadLength {
        /// Length asked for.
        len: usize,
    },
}

/// Creates a record ring of `capacity` bytes on the heap (4096-byte aligned).
///
/// `capacity` must be a power of two in
/// [`MIN_CAPACITY`](crate::MIN_CAPACITY)`..=`[`MAX_CAPACITY`](crate::MAX_CAPACITY),
/// else [`RingError::BadCapacity`].
pub fn with_capacity(capacity: usize) -> Result<(Producer, Consumer), RingError> {
    let region = Arc::new(region::Region::new(capacity)?);
    Ok((Producer::new(Arc::clone(&region)), Consumer::new(region)))
}

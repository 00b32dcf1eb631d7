//! ftvm-ring: the lock-free core of the logging channel.
//!
//! Contract: single producer, single consumer; no locks, no allocation after
//! construction, no system calls on the data path. This crate holds the
//! channel's memory-model `unsafe` (shared ring memory, atomics); the
//! transports' system calls are `unsafe` in their `sys.rs` files
//! (`transport/sys.rs`: `setsockopt`, `poll`; `transport/shm/sys.rs`: the
//! mapping, the memfd, fd passing), and io_uring's memory contract in
//! `transport/uring/`. Every `unsafe` block states
//! the invariant it relies on and where that invariant is established, and
//! every atomic ordering names the operation it pairs with. Design notes with
//! layout diagrams: `docs/ring.md`.
//!
//! Three parts:
//!
//! * [`log`] — the **record ring** between the vCPU thread and the channel
//!   sender. Records are ftvm wire frames (`ftvm-wire`), written in place.
//! * [`pipe`] — a **byte pipe** whose header and data live in a caller-given
//!   region (a shared mmap between two processes). Its protocol is one-sided:
//!   the writer copies data then publishes one 8-byte position, the reader
//!   publishes its own position back as credit — the shape the RDMA transport
//!   reuses with RDMA WRITEs.
//! * [`idle`] — what a polling thread does when a poll found no work.
//!
//! # The main flow (record ring)
//!
//! 1. [`log::with_capacity`] allocates the buffer and returns a
//!    [`log::Producer`] and a [`log::Consumer`], each moved to its thread.
//! 2. The producer calls [`log::Producer::claim`]`(len)`: it gets a
//!    [`log::Claim`] whose [`buf`](log::Claim::buf) is `len` contiguous bytes
//!    inside the ring (a record that would cross the buffer end is preceded by
//!    a padding record and starts at offset 0). A full ring is not an error of
//!    the system: `claim` returns [`log::ClaimError::Full`] and the caller
//!    backs off (the primary pauses).
//! 3. The producer writes the frame into `buf()` and calls
//!    [`commit`](log::Claim::commit): the length word is written and the
//!    producer position is published with one Release store.
//! 4. The consumer calls [`log::Consumer::read`]: a [`log::ReadChunk`] shows
//!    every committed byte as at most two slices (padding excluded) and as
//!    [`records`](log::ReadChunk::records); the sender ships the slices as they
//!    are (one `writev`, one SQE, one RDMA write).
//! 5. The consumer releases what was sent with
//!    [`release_up_to`](log::ReadChunk::release_up_to) or
//!    [`release_all`](log::ReadChunk::release_all): one Release store of the
//!    consumer position gives the space back to the producer.
//!
//! ```
//! let (mut producer, mut consumer) = ftvm_ring::log::with_capacity(4096)?;
//! let mut claim = producer.claim(16).expect("an empty ring has room");
//! claim.buf()[4..16].copy_from_slice(b"hello, ring!");
//! claim.commit();
//!
//! let chunk = consumer.read();
//! let record = chunk.records().next().expect("one record");
//! assert_eq!(&record[0..4], &16u32.to_le_bytes()); // the length word
//! assert_eq!(&record[4..], b"hello, ring!");
//! chunk.release_all();
//! assert!(consumer.is_empty());
//! # Ok::<(), ftvm_ring::RingError>(())
//! ```

mod error;
pub mod idle;
pub mod log;
pub mod pipe;

pub use error::RingError;

/// Smallest ring capacity in bytes (record ring and byte pipe).
pub const MIN_CAPACITY: usize = 4096;

/// Largest ring capacity in bytes (2 GiB): a record-ring padding length must
/// fit the 31 low bits of a length word.
pub const MAX_CAPACITY: usize = 1 << 31;

/// Checks that `capacity` is a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
fn check_capacity(capacity: usize) -> Result<(), RingError> {
    if capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        Ok(())
    } else {
        Err(RingError::BadCapacity { capacity })
    }
}

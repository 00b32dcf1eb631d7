//! ftvm-kvproto: the kv reference service shared by the kv guest and the host.
//!
//! Contract: the datagram codec ([`Request`], [`Reply`]) and the store
//! ([`Store`]) are `no_std`, allocation-free and free of dependencies but
//! `ftvm-guest-abi` (the shared hash), so the kv
//! guest runs exactly this code; every malformed datagram is a
//! [`KvDecodeError`] naming the field and value, never a panic. With feature
//! `std` the crate adds the host side: a UDP client (`client`), a
//! self-checking load generator (`load`) and a host-side server
//! (`server`) running the same [`Store`]. The normative description is
//! `docs/kv.md`.
//!
//! # The main flow
//!
//! 1. A client encodes a [`Request`] (`op`, `client_id`, `request_no`, key,
//!    values) with [`Request::encode`] and sends it as one UDP datagram.
//! 2. The service (the kv guest behind the NIC, or `server`) calls
//!    [`Store::serve`]: [`Request::decode`], then [`Store::apply`], which
//!    answers a retry (same client, same `request_no`) from the client table
//!    without applying it again, refuses an older `request_no` as
//!    [`Status::Stale`], and otherwise applies the op and remembers the reply.
//! 3. The reply is encoded with [`Reply::encode`] and sent back to the
//!    datagram's source; the client matches it by `client_id`/`request_no`
//!    and retries with the same number on timeout.
//!
//! ```
//! use ftvm_kvproto::{ClientSlot, KeySlot, MAX_DATAGRAM, Op, Reply, Request, Status, Store};
//!
//! let mut store = Store::new([KeySlot::EMPTY; 16], [ClientSlot::EMPTY; 4]);
//! let req = Request { op: Op::Append, client_id: 7, request_no: 1, key: b"k", value: b"ab", new_value: b"" };
//! let mut datagram = [0u8; MAX_DATAGRAM];
//! let n = req.encode(&mut datagram).unwrap();
//! let mut out = [0u8; MAX_DATAGRAM];
//! let m = store.serve(&datagram[..n], &mut out).unwrap();
//! let first = out[..m].to_vec();
//! assert_eq!(Reply::decode(&first).unwrap().value, b"ab");
//! // A retry is answered identically and not applied again.
//! let m = store.serve(&datagram[..n], &mut out).unwrap();
//! assert_eq!(&out[..m], &first[..]);
//! assert_eq!(store.get(b"k"), Some(&b"ab"[..]));
//! # let _ = Status::Ok;
//! ```

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

mod error;
mod format;
mod store;

#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "std")]
pub mod load;
#[cfg(feature = "std")]
pub mod server;

pub use error::{KvDecodeError, KvEncodeError};
pub use format::{
    HEADER_LEN, MAX_DATAGRAM, MAX_KEY, MAX_VALUE, Op, REPLY_MAGIC, REQUEST_MAGIC, Reply, Request,
    Status,
};
pub use store::{ClientSlot, KeySlot, Store, StoreStats};

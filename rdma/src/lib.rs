//! ftvm-rdma: the logging channel's RDMA transport, below the channel.
//!
//! Contract: a [`Session`] is an ordered, reliable byte stream in both
//! directions over one RC queue pair, moved one-sided: each end's bytes are
//! RDMA WRITEs into the other end's registered receive ring, made visible by
//! a WRITE WITH IMMEDIATE (or, where the reader's queue pair places data in
//! order, a trailer), with the reader's position written back one-sided and
//! lazily as credit. No byte is ever delivered that an immediate or trailer
//! did not announce; every value the peer writes is validated; every
//! transport fault (retry-exceeded, receiver-not-ready exhausted, flush,
//! remote access) is an error, never corrupt data. Design:
//! `docs/channel.md` ("The rdma transport"), operator guide:
//! `docs/deploy-rdma.md`.
//!
//! # Layers
//!
//! | module | role |
//! |---|---|
//! | [`layout`] | the receive region (the [`ftvm_ring::pipe`] layout), credit triple, immediate encoding |
//! | [`port`] | [`OneSidedPort`]: post writes, post receives, poll completions, read local memory — the verbs, nothing more |
//! | [`link`] | [`Link`]: the one-sided ring protocol over any port (flow control, signalling, inline, doorbell batching, lazy credit) |
//! | [`sim`] | a simulated NIC with real failure modes, for machines without RDMA |
//! | [`shm`] | the port over a shared mapping (the shm transport's medium) |
//! | `verbs` (feature `rdma`) | the port over libibverbs (`rdma-sys`) |
//! | [`sysfs`] | devices, ports, GIDs from `/sys/class/infiniband` (`ftvm rdma probe`) |
//! | [`params`], [`nic`], [`session`] | connection setup over a TCP hello; the session byte stream |
//!
//! # Main flow
//!
//! 1. [`SessionListener::bind`] / [`connect`] open the NIC ([`Nic::open`]:
//!    sysfs first, then the feature, then libibverbs), connect over TCP and
//!    exchange [`ConnParams`] (QPN, PSN, LID/GID, MTU, rkey, region address
//!    and size, receive depth, visibility mode).
//! 2. Each end takes its queue pair INIT → RTR → RTS and starts a [`Link`]
//!    on the port; one ready byte each way, then data flows.
//! 3. [`Session::send`] / [`Session::recv`] run the protocol (see
//!    [`link`]); [`Session::progress`] reaps completions and writes due
//!    credit; the TCP connection stays open to carry the orderly close
//!    (`B` + final position) and to show a crashed peer (EOF).
//!
//! # Dependencies
//!
//! This crate depends on `ftvm-ring` (the pipe layout it writes) and not on
//! the channel: `ftvm-channel` owns the `Transport` trait and adapts a
//! [`Session`] to it in `channel/src/transport/rdma.rs`, so
//! `transport::connect` dispatches `--transport rdma` like every other
//! transport without a dependency cycle. The verbs port needs native
//! libraries and lives behind the cargo feature `rdma` (off by default):
//! without it everything here builds and tests with rustup alone, and a host
//! with a device is told to rebuild. `rdma-sys`'s bindgen needs clang ≤ 15
//! (Debian 12's clang 14 works).
//!
//! ```
//! use ftvm_rdma::sim::{SimConfig, SimNic};
//! use ftvm_rdma::{Link, LinkParams, Visibility};
//!
//! let (a, b) = SimNic::new().pair(SimConfig::default(), SimConfig::default(), 4096);
//! let params = LinkParams {
//!     local_capacity: 4096,
//!     remote_capacity: 4096,
//!     local_visibility: Visibility::Immediate,
//!     remote_visibility: Visibility::Immediate,
//!     remote_rq_depth: 128,
//!     signal_every: 16,
//!     max_inline: 128,
//!     completion_ack: false,
//! };
//! let (mut a, mut b) = (Link::new(a, params)?, Link::new(b, params)?);
//! assert_eq!(a.send(&[b"hello, ", b"backup"])?, 13);
//! let mut got = Vec::new();
//! while got.len() < 13 {
//!     let mut buf = [0u8; 64];
//!     let n = b.recv(&mut buf)?; // 0 until the immediate lands
//!     got.extend_from_slice(&buf[..n]);
//! }
//! assert_eq!(got, b"hello, backup");
//! # Ok::<(), ftvm_rdma::TransferError>(())
//! ```

pub mod layout;
pub mod link;
pub mod nic;
pub mod params;
pub mod port;
pub mod session;
pub mod shm;
pub mod sim;
pub mod sysfs;
#[cfg(feature = "rdma")]
pub mod verbs;

pub use link::{Link, LinkParams, LinkStats, TransferError, Visibility};
pub use nic::{Nic, RdmaConfig, SetupError};
pub use params::{ConnParams, ParamsError};
pub use port::{Completion, OneSidedPort, PortCaps, PostError, Source, WcStatus, WriteRequest};
pub use session::{Session, SessionError, SessionListener, connect};

/// Whether the RDMA transport can run here with `cfg` (the NIC opens);
/// `Err` names the first missing piece.
pub fn probe_available(cfg: &RdmaConfig) -> Result<(), SetupError> {
    Nic::open(cfg).map(drop)
}

/// True when this build has the verbs port (cargo feature `rdma`).
pub const VERBS_BUILT: bool = cfg!(feature = "rdma");

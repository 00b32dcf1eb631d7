//! ftvm-channel: the logging channel between a primary and a backup.
//!
//! Contract: every log entry appended on the primary reaches the backup's
//! `on_entry` exactly once, in sequence order, CRC-checked; nothing from a
//! corrupt, truncated, oversized or out-of-sequence frame on is delivered; an
//! output is released by the [`AckGate`] only once the backup's cumulative
//! ACK covers its entry; a silent peer is reported within `peer_timeout_ms`.
//! The normative wire format is `docs/protocol.md` (crate `ftvm-wire`).
//!
//! # The main flow
//!
//! 1. Both ends connect a [`transport`] (`tcp`, `shm`, `uring`) with
//!    [`transport::connect`] / [`transport::listen`], then
//!    [`Primary::establish`] and [`Backup::establish`] exchange Hellos
//!    (format version, settings fingerprint, guest image digest) and refuse
//!    a mismatched peer, naming what differs.
//! 2. The recording thread appends entries with the [`Appender`]: claim,
//!    write the payload in place, commit (`ftvm-ring`'s log ring). A full
//!    ring is `AppendError::Full`: flow control, the primary pauses.
//! 3. [`Primary::poll`] (one run-to-completion round) ships every committed
//!    byte in one `send` when the batch holds an OUTPUT entry, else at
//!    `batch_bytes` or `max_delay_us`; takes ACKs; ticks when idle.
//! 4. [`Backup::poll`] validates frames and sequence continuity, hands each
//!    entry to the caller, and ACKs at once for an OUTPUT entry, else every
//!    `ack_every` entries or `ack_delay_us`; ACKs carry the replay position.
//! 5. The primary's [`AckGate`] releases held outputs in order once
//!    [`Primary::acked_seq`] covers them.
//! 6. Optionally each end runs on its own pinned thread ([`Primary::spawn`],
//!    [`Backup::spawn`]); the recording/replaying thread then talks to it
//!    through the rings and atomics only.

mod appender;
mod backup;
mod error;
mod gate;
mod link;
mod primary;
mod rx;
mod threaded;
pub mod transport;

pub use appender::{AppendError, Appender, EntryClaim};
pub use backup::{Backup, BackupStats};
pub use error::{ChannelError, error_chain};
pub use gate::{AckGate, HoldError};
pub use link::{HelloParams, LinkStats};
pub use primary::{Primary, PrimaryStats, RECEIVE_EVERY, lease_margin};
pub use threaded::{
    BackupHandle, PrimaryHandle, PrimaryShared, ReplayFeed, STOP_SEND_WAIT, idler_for,
    pin_current_thread,
};

//! State transfer: a running VM's memory, devices and vCPU sent to a new VM
//! by live pre-copy, over any byte stream (`docs/transfer.md`; format:
//! `docs/protocol.md`, "State transfer").
//!
//! Contract: when [`receive()`] returns `Ok`, the receiving VM holds exactly
//! the sender's state at the join point (an exit boundary): same memory,
//! same vCPU, same devices, same state digest (both sides compute it; the
//! receiver refuses a mismatch). Run it, or replay the sender's log from
//! the exit after the join point, and it continues as the sender does.
//! Anything wrong — a stream cut at any point, a page beyond guest memory,
//! another version or guest, a digest mismatch — is an error naming it; the
//! sender's VM keeps running and the receiver can take the next attempt.
//!
//! # A transfer
//!
//! ```text
//!  sender (transfer thread)            vCPU thread           receiver
//!  ------------------------            -----------           --------
//!  Begin{guest, mem, version} --------------------------->  AwaitBegin
//!  subscribe to the dirty tracker
//!  round 0: every page  ---- Pages / ZeroPages ----------->  Precopy
//!  round r: dirty pages ---- Pages / ZeroPages ----------->  Precopy
//!    ... until dirty <= stop_pages or r = max_rounds
//!  at_next_exit(capture) ---->  exit N boundary:
//!                               complete port I/O
//!                               save vcpu, devices, timer,
//!                               journal; last dirty pages;
//!                               join digest; on_join
//!                               (e.g. start the new log)
//!                               guest resumes ---> exit N+1 (pause ends)
//!  last Pages, VcpuState, DeviceState*, VmState ---------->  Joining
//!  End{ordinal N, digest} -------------------------------->  all pages? digest?
//!                                                            restore -> Done
//! ```
//!
//! The engine is transport-agnostic: records go to a `std::io::Write` and
//! come from a `std::io::Read` (a TCP stream, a channel adapter, the
//! in-process [`pipe()`]).

pub mod pipe;
pub mod receive;
pub mod record;
pub mod send;

pub use pipe::{PipeReader, PipeWriter, pipe};
pub use receive::{ReceiveReport, ReceiveStateError, receive};
pub use record::{ReadRecordError, Record, RecordKind, RecordReader, RecordWriter};
pub use send::{PrecopyConfig, RoundReport, SendReport, SendStateError, send_live, write_snapshot};

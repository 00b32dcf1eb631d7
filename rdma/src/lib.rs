//! ftvm-rdma: the logging channel's RDMA transport, below the channel.
//!
//! (Full crate documentation: see the sections below.)

pub mod layout;
pub mod link;
pub mod port;
pub mod shm;
pub mod sim;

pub use link::{Link, LinkParams, LinkStats, TransferError, Visibility};
pub use port::{Completion, OneSidedPort, PortCaps, PostError, Source, WcStatus, WriteRequest};

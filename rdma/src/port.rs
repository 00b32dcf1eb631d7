//! [`OneSidedPort`]: what the ring protocol needs from a NIC, and nothing more.
//!
//! A port is one end of a connected reliable queue pair with a registered
//! receive region (the peer writes into it, see [`crate::layout`]) and a
//! local send staging region (the NIC reads from it). Its operations are the
//! verbs the protocol uses, at the verbs' level of abstraction (kvm-ioctls
//! style: no policy here):
//!
//! | operation | verbs |
//! |---|---|
//! | [`post_writes`](OneSidedPort::post_writes) | one `ibv_post_send` of a chained list of `IBV_WR_RDMA_WRITE[_WITH_IMM]`, flags `SIGNALED`/`INLINE` |
//! | [`post_receives`](OneSidedPort::post_receives) | `ibv_post_recv` of zero-length receives (a WRITE WITH IMMEDIATE consumes one) |
//! | [`poll`](OneSidedPort::poll) | `ibv_poll_cq` |
//! | [`read_local`](OneSidedPort::read_local), [`load_local_u64`](OneSidedPort::load_local_u64) | CPU loads from the registered receive region |
//! | [`write_staging`](OneSidedPort::write_staging) | CPU stores into the registered send region |
//!
//! The rules a port keeps are the RC rules the protocol relies on:
//!
//! * Writes execute in the order posted; a write's bytes may be placed in
//!   any order, and only its completion (at the writer) or its immediate (at
//!   the target) says they all landed. Every earlier write has landed by then.
//! * A send-queue slot is freed only when a *signaled* work request at or
//!   after it completes and that completion is polled. A caller that never
//!   signals fills the queue: [`PostError::QueueFull`].
//! * A WRITE WITH IMMEDIATE needs a posted receive at the target; without
//!   one the target answers receiver-not-ready and the writer retries
//!   (`rnr_retry`, 7 = forever) or fails with
//!   [`WcStatus::RnrRetryExceeded`].
//! * After any failed completion the queue pair is in the error state: every
//!   outstanding and later work request completes with
//!   [`WcStatus::Flushed`], signaled or not.

use std::fmt;

/// Where the bytes of a write come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// Copied into the work request when posted (`IBV_SEND_INLINE`): at most
    /// [`PortCaps::max_inline`] bytes, reusable as soon as `post_writes` returns.
    Inline(&'a [u8]),
    /// `len` bytes of the staging region at `offset`. The NIC reads them at
    /// some time before the completion; they must not change until the write
    /// has landed.
    Staging {
        /// Offset in the staging region.
        offset: usize,
        /// Bytes.
        len: usize,
    },
}

impl Source<'_> {
    /// Bytes the write carries.
    pub fn len(&self) -> usize {
        match self {
            Source::Inline(b) => b.len(),
            Source::Staging { len, .. } => *len,
        }
    }

    /// True for a zero-length write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One RDMA WRITE (or WRITE WITH IMMEDIATE) of a post list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteRequest<'a> {
    /// Returned in the completion. The protocol numbers work requests 0, 1, 2, ...
    pub wr_id: u64,
    /// The bytes.
    pub source: Source<'a>,
    /// Where they go: an offset in the peer's receive region.
    pub remote_offset: usize,
    /// `Some`: WRITE WITH IMMEDIATE; the target's receive completion carries it.
    pub imm: Option<u32>,
    /// Ask for a completion (`IBV_SEND_SIGNALED`).
    pub signaled: bool,
}

/// What a connected port offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortCaps {
    /// Send-queue slots.
    pub sq_depth: u32,
    /// Our receive-queue slots.
    pub rq_depth: u32,
    /// Largest inline write (the queue pair's `max_inline_data`).
    pub max_inline: usize,
    /// Bytes of our receive region.
    pub local_region_len: usize,
    /// Bytes of our staging region.
    pub staging_len: usize,
    /// Bytes of the peer's receive region.
    pub remote_region_len: usize,
    /// Our queue pair places RDMA WRITE data in order, whole aligned 8-byte
    /// words at a time (`ibv_query_qp_data_in_order` reports it), so the
    /// peer may make bytes visible with a trailer instead of an immediate.
    pub data_in_order: bool,
}

/// How a work request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    /// Done: for a write, the bytes are in the peer's memory.
    Success,
    /// The peer did not acknowledge within `ack_timeout` after `retry_count`
    /// retries (`IBV_WC_RETRY_EXC_ERR`): the peer or the path is gone.
    RetryExceeded,
    /// The peer answered receiver-not-ready more than `rnr_retry` times
    /// (`IBV_WC_RNR_RETRY_EXC_ERR`).
    RnrRetryExceeded,
    /// The queue pair was in the error state (`IBV_WC_WR_FLUSH_ERR`).
    Flushed,
    /// The peer refused the access: bad rkey or range (`IBV_WC_REM_ACCESS_ERR`).
    RemoteAccess,
    /// A local buffer was not registered or out of range (`IBV_WC_LOC_PROT_ERR`).
    LocalProtection,
    /// Any other status, by its verbs number.
    Other(u32),
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WcStatus::Success => f.write_str("success"),
            WcStatus::RetryExceeded => {
                f.write_str("transport retry counter exceeded (the peer stopped acknowledging)")
            }
            WcStatus::RnrRetryExceeded => f.write_str(
                "receiver-not-ready retry counter exceeded (no receive posted at the peer)",
            ),
            WcStatus::Flushed => f.write_str("flushed (the queue pair is in the error state)"),
            WcStatus::RemoteAccess => {
                f.write_str("remote access error (rkey or range refused by the peer)")
            }
            WcStatus::LocalProtection => {
                f.write_str("local protection error (unregistered local buffer)")
            }
            WcStatus::Other(n) => write!(f, "work completion status {n}"),
        }
    }
}

/// One polled completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// A posted write ended.
    Send {
        /// The write's `wr_id`.
        wr_id: u64,
        /// How.
        status: WcStatus,
    },
    /// A posted receive was consumed by the peer's WRITE WITH IMMEDIATE (or flushed).
    Recv {
        /// The immediate, for a successful WRITE WITH IMMEDIATE.
        imm: Option<u32>,
        /// How.
        status: WcStatus,
    },
}

/// Why a post was refused. Except for `QueueFull`, the port is unusable after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// Not enough free slots for the whole list; nothing was posted.
    #[error("{queue} queue full: {wanted} work requests posted on {used} of {depth} slots in use")]
    QueueFull {
        /// `send` or `receive`.
        queue: &'static str,
        /// Requests in the refused list.
        wanted: usize,
        /// Slots in use.
        used: usize,
        /// Slots in all.
        depth: u32,
    },
    /// An inline write longer than the queue pair allows.
    #[error("inline write of {len} bytes exceeds max_inline_data {max}")]
    InlineTooLong {
        /// Bytes asked for.
        len: usize,
        /// The queue pair's limit.
        max: usize,
    },
    /// A staging range outside the staging region.
    #[error("staging range {offset}+{len} outside the {region}-byte staging region")]
    BadStaging {
        /// Offset asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
        /// Region size.
        region: usize,
    },
    /// A write into the peer's header (below the data area) that is not whole
    /// aligned 8-byte words: header words must be stored whole.
    #[error("write of {len} bytes at header offset {offset} is not whole aligned 8-byte words")]
    Unaligned {
        /// Offset asked for.
        offset: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// The NIC library refused the post (`ibv_post_send`/`ibv_post_recv` errno).
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: i32,
    },
}

/// Why polling the completion queue failed (the port is unusable after it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ibv_poll_cq returned {rc}")]
pub struct PollError {
    /// The negative return value.
    pub rc: i32,
}

/// One end of a connected queue pair, as the ring protocol drives it.
///
/// Offsets passed to the local accessors are validated by the implementation
/// (an out-of-range offset panics: it is a bug of the protocol, never a value
/// from the peer, which the protocol masks into range first).
pub trait OneSidedPort: Send + fmt::Debug {
    /// Limits and sizes.
    fn caps(&self) -> PortCaps;

    /// Posts `wrs` as one list (one doorbell). `Err(QueueFull)` posts nothing.
    fn post_writes(&mut self, wrs: &[WriteRequest<'_>]) -> Result<(), PostError>;

    /// Posts `count` zero-length receives for incoming immediates.
    fn post_receives(&mut self, count: u32) -> Result<(), PostError>;

    /// Moves up to `max` completions into `out` (appended); returns how many.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, PollError>;

    /// Copies `src` into the staging region at `offset`.
    fn write_staging(&mut self, offset: usize, src: &[u8]);

    /// Copies bytes of our receive region at `offset` into `dst`.
    fn read_local(&self, offset: usize, dst: &mut [u8]);

    /// One aligned 8-byte load (Acquire) from our receive region: header words
    /// the peer stores (trailer, credit) are read with this.
    fn load_local_u64(&self, offset: usize) -> u64;
}

impl<P: OneSidedPort + ?Sized> OneSidedPort for Box<P> {
    fn caps(&self) -> PortCaps {
        (**self).caps()
    }
    fn post_writes(&mut self, wrs: &[WriteRequest<'_>]) -> Result<(), PostError> {
        (**self).post_writes(wrs)
    }
    fn post_receives(&mut self, count: u32) -> Result<(), PostError> {
        (**self).post_receives(count)
    }
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, PollError> {
        (**self).poll(out, max)
    }
    fn write_staging(&mut self, offset: usize, src: &[u8]) {
        (**self).write_staging(offset, src)
    }
    fn read_local(&self, offset: usize, dst: &mut [u8]) {
        (**self).read_local(offset, dst)
    }
    fn load_local_u64(&self, offset: usize) -> u64 {
        (**self).load_local_u64(offset)
    }
}

/// Send-queue slot accounting shared by the software ports (shm, simulated
/// NIC), with the verbs rule: a slot is freed when a completion of a request
/// at or after it is polled.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SlotCount {
    /// Work requests ever posted.
    pub posted: u64,
    /// Work requests whose slot was freed.
    pub freed: u64,
}

impl SlotCount {
    pub fn used(&self) -> usize {
        (self.posted - self.freed) as usize
    }

    /// Reserves `n` slots of `depth`, or says why not.
    pub fn reserve(&mut self, n: usize, depth: u32) -> Result<u64, PostError> {
        if self.used() + n > depth as usize {
            return Err(PostError::QueueFull {
                queue: "send",
                wanted: n,
                used: self.used(),
                depth,
            });
        }
        let first = self.posted;
        self.posted += n as u64;
        Ok(first)
    }

    /// A completion of the request with ordinal `ordinal` was polled.
    pub fn complete(&mut self, ordinal: u64) {
        self.freed = self.freed.max(ordinal + 1);
    }
}

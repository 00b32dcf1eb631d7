//! Transports: one trait, chosen by configuration.
//!
//! A transport is a reliable, ordered, bidirectional byte stream between the
//! two ends of a channel, driven without blocking: [`Transport::send`] and
//! [`Transport::recv`] never wait, so one thread can poll a transport and
//! everything else in a run-to-completion loop. Framing, CRCs and sequence
//! checks live above, in the channel; a transport only moves bytes.
//!
//! | name  | module   | how                                                     |
//! |-------|----------|---------------------------------------------------------|
//! | tcp   | [`tcp`]  | std sockets, TCP_NODELAY, nonblocking                   |
//! | shm   | [`shm`]  | two one-sided byte rings in a shared mapping (one host) |
//! | uring | [`uring`]| io_uring over a TCP socket                              |
//! | rdma  | [`rdma`] | RC queue pairs, one-sided into the peer's ring (`ftvm-rdma`) |

use std::io;
use std::time::Duration;

pub mod rdma;
pub mod shm;
mod sys;
pub mod tcp;
pub mod uring;

/// Why a transport operation failed. After any error the transport is dead.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection in order.
    #[error("peer closed the connection")]
    Closed,
    /// The peer vanished (reset, crashed process, dead mapping owner).
    #[error("peer lost: {0}")]
    PeerLost(String),
    /// An operating-system error, with what was being done.
    #[error("{op}")]
    Io {
        /// The operation, e.g. "send to 127.0.0.1:7000".
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// The transport cannot work here; the message names the cause and a way out.
    #[error("{0}")]
    Unavailable(String),
}

impl TransportError {
    /// Wraps an `io::Error` with the operation that failed.
    pub fn io(op: impl Into<String>, source: io::Error) -> TransportError {
        TransportError::Io {
            op: op.into(),
            source,
        }
    }
}

/// What [`Transport::wait`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// Bytes to receive.
    Readable,
    /// Room to send.
    Writable,
    /// Either.
    Both,
}

/// A connected, nonblocking byte stream.
pub trait Transport: Send + std::fmt::Debug {
    /// Short name for logs and reports (`tcp`, `shm`, `uring`).
    fn name(&self) -> &'static str;

    /// Sends a prefix of the concatenation of `bufs` without blocking and
    /// returns its length; 0 means no room now (flow control). Bytes counted
    /// as sent are owned by the transport: the caller may reuse its buffers.
    fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransportError>;

    /// Moves received bytes into `buf` without blocking and returns how many;
    /// 0 means nothing has arrived. An orderly close is `Err(Closed)` once all
    /// bytes before it were returned.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError>;

    /// Makes progress on work the transport queued internally (io_uring
    /// completions, a partially sent batch). Called by polling loops every
    /// round; returns true if anything moved. Default: nothing to do.
    fn progress(&mut self) -> Result<bool, TransportError> {
        Ok(false)
    }

    /// Bytes accepted by `send` but not yet handed to the kernel or peer.
    fn pending_send(&self) -> usize {
        0
    }

    /// Blocks for at most `timeout` until `interest` may be satisfied (a
    /// spurious early return is allowed). Used by the `park` idle strategy.
    fn wait(&mut self, interest: Interest, timeout: Duration) -> Result<(), TransportError>;

    /// Human-readable peer address (for error messages).
    fn peer(&self) -> String;

    /// A file descriptor that becomes readable when `recv` may return bytes,
    /// for callers that sleep in their own `poll(2)` (the VMM's wait port).
    /// `None` when readiness cannot be seen on an fd (shm, io_uring): such
    /// callers must poll instead. Default: `None`.
    fn readable_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Stream bytes sent so far that the transport knows are in the peer's
    /// memory, when it can tell (rdma with `rdma.completion_ack`: the RC
    /// completion of the write); the primary then counts them as ACKed.
    /// Default: `None` (only the peer's ACK says so).
    fn delivered(&self) -> Option<u64> {
        None
    }
}

/// Accepts connections for one transport; keeps listening after a connection ends.
pub trait Listener: Send + std::fmt::Debug {
    /// Waits up to `timeout` for the next connection; `Ok(None)` on timeout.
    fn accept(&mut self, timeout: Duration) -> Result<Option<Box<dyn Transport>>, TransportError>;

    /// The address peers connect to (e.g. `127.0.0.1:7100` or `shm:NAME`).
    fn local_addr(&self) -> String;
}

/// How long `connect` keeps trying before it reports the peer unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `addr` over the transport named by `settings.transport`.
///
/// `addr` is `host:port` for tcp, uring and rdma (its TCP hello), a name
/// (letters, digits, `-_.`) for shm.
pub fn connect(
    settings: &ftvm_tuning::ChannelSettings,
    addr: &str,
) -> Result<Box<dyn Transport>, TransportError> {
    use ftvm_tuning::TransportKind;
    Ok(match settings.transport {
        TransportKind::Tcp => Box::new(tcp::TcpTransport::connect(
            addr,
            settings.socket_buffer_bytes,
            CONNECT_TIMEOUT,
        )?),
        TransportKind::Shm => Box::new(shm::ShmTransport::connect(addr, CONNECT_TIMEOUT)?),
        TransportKind::Uring => uring::connect(settings, addr)?,
        TransportKind::Rdma => rdma::connect(settings, addr)?,
    })
}

/// Listens on `addr` over the transport named by `settings.transport`.
pub fn listen(
    settings: &ftvm_tuning::ChannelSettings,
    addr: &str,
) -> Result<Box<dyn Listener>, TransportError> {
    use ftvm_tuning::TransportKind;
    Ok(match settings.transport {
        TransportKind::Tcp => Box::new(tcp::TcpListenerTransport::bind(
            addr,
            settings.socket_buffer_bytes,
        )?),
        TransportKind::Shm => Box::new(shm::ShmListener::bind(addr, settings.socket_buffer_bytes)?),
        TransportKind::Uring => uring::listen(settings, addr)?,
        TransportKind::Rdma => rdma::listen(settings, addr)?,
    })
}

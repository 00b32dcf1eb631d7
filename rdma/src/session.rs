//! [`Session`]: one RDMA connection, set up over a TCP hello and kept alive
//! by it; the byte stream the channel's transport adapter drives.
//!
//! Setup ([`connect`], [`SessionListener::accept`]):
//!
//! 1. [`Nic::open`] before any socket: a host without a device fails at
//!    once with the sysfs error, on both ends.
//! 2. TCP connect/accept to the channel address (`host:port`).
//! 3. Each end makes an endpoint (queue pair in INIT, receive region
//!    registered, receives posted) and sends its [`ConnParams`] (80 bytes);
//!    each reads and checks the peer's.
//! 4. Each end connects its queue pair (RTR with the peer's QPN, PSN,
//!    LID/GID and the smaller MTU; RTS with `ack_timeout`, `retry_count`,
//!    `rnr_retry`), starts the [`Link`] and sends one byte `R`; data flows
//!    only after the peer's `R`, so no write meets a queue pair not yet in RTR.
//!
//! After setup the TCP connection stays open and silent, like the shm
//! transport's Unix socket: an orderly close drains every posted write
//! (bounded by `close_timeout`), then sends `B` and the final stream
//! position (9 bytes) and shuts the socket down; the peer delivers every
//! byte up to that position, then reports [`SessionError::Closed`]. EOF
//! without `B` (a crashed process: the kernel closes the socket) is
//! [`SessionError::PeerLost`]; so is a write failing with retry-exceeded
//! (a dead host: no socket tells).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::link::{Link, LinkParams, LinkStats, TransferError, Visibility};
use crate::nic::{Nic, RdmaConfig, SetupError};
use crate::params::{self, ConnParams};
use crate::port::{OneSidedPort, WcStatus};

/// Empty polls between two looks at the TCP connection (a read is a syscall).
const PEEK_EVERY: u32 = 4096;
/// Longest sleep of [`Session::wait`] (completions cannot be waited on here).
const WAIT_SLICE: Duration = Duration::from_micros(100);

/// Why a session operation failed. After any error the session is dead.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The peer closed in order and every byte before the close was returned.
    #[error("peer closed the connection")]
    Closed,
    /// The peer is gone (crashed, unreachable, its queue pair failed).
    #[error("peer lost: {0}")]
    PeerLost(String),
    /// The peer broke the protocol (a value outside its window).
    #[error("protocol violation by {peer}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What it did.
        source: TransferError,
    },
    /// The local NIC failed a post or a poll.
    #[error("RDMA connection to {peer}")]
    Local {
        /// The peer.
        peer: String,
        /// What failed.
        source: TransferError,
    },
}

/// One connected RDMA session.
#[derive(Debug)]
pub struct Session {
    // Field order is drop order: the link (queue pair) first, then the socket.
    link: Link<Box<dyn OneSidedPort>>,
    tcp: TcpStream,
    peer: String,
    describe: String,
    close_timeout: Duration,
    empty_polls: u32,
    /// The peer's final position once its bye arrived.
    bye_at: Option<u64>,
    bye_seen: Option<Instant>,
    /// EOF without bye.
    lost: bool,
    bye_buf: Vec<u8>,
    completion_ack: bool,
}

/// Connects to the session listener at `addr`.
pub fn connect(addr: &str, cfg: &RdmaConfig) -> Result<Session, SetupError> {
    let nic = Nic::open(cfg)?;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| SetupError::Io {
            op: format!("resolve rdma address {addr:?}"),
            source,
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, cfg.connect_timeout) {
            Ok(tcp) => return handshake(&nic, tcp, cfg),
            Err(e) => last = Some(e),
        }
    }
    Err(SetupError::Io {
        op: format!("connect to rdma hello address {addr}"),
        source: last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address resolved")),
    })
}

/// Accepts sessions on a TCP address.
#[derive(Debug)]
pub struct SessionListener {
    nic: Nic,
    listener: TcpListener,
    cfg: RdmaConfig,
    local: String,
}

impl SessionListener {
    /// Opens the NIC, then listens on `addr` (`host:port`; port 0 picks one).
    pub fn bind(addr: &str, cfg: &RdmaConfig) -> Result<SessionListener, SetupError> {
        let nic = Nic::open(cfg)?;
        let io = |op: String| move |source| SetupError::Io { op, source };
        let listener =
            TcpListener::bind(addr).map_err(io(format!("listen on rdma hello address {addr}")))?;
        listener
            .set_nonblocking(true)
            .map_err(io(format!("set nonblocking on {addr}")))?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_owned());
        Ok(SessionListener {
            nic,
            listener,
            cfg: cfg.clone(),
            local,
        })
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> &str {
        &self.local
    }

    /// The NIC sessions run on, for logs.
    pub fn describe(&self) -> String {
        self.nic.describe()
    }

    /// Waits up to `timeout` for a peer; `Ok(None)` on timeout.
    pub fn accept(&mut self, timeout: Duration) -> Result<Option<Session>, SetupError> {
        let start = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((tcp, _)) => return handshake(&self.nic, tcp, &self.cfg).map(Some),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if start.elapsed() >= timeout {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_millis(1).min(timeout));
                }
                Err(source) => {
                    return Err(SetupError::Io {
                        op: format!("accept on {}", self.local),
                        source,
                    });
                }
            }
        }
    }
}

fn handshake(nic: &Nic, mut tcp: TcpStream, cfg: &RdmaConfig) -> Result<Session, SetupError> {
    let peer = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let io = |what: &str| {
        let op = format!("rdma hello with {peer}: {what}");
        move |source| SetupError::Io { op, source }
    };
    tcp.set_nodelay(true).map_err(io("set TCP_NODELAY"))?;
    tcp.set_nonblocking(false).map_err(io("set blocking"))?;
    tcp.set_read_timeout(Some(cfg.connect_timeout))
        .map_err(io("set timeout"))?;
    let endpoint = nic.endpoint(cfg)?;
    let ours = endpoint.params();
    tcp.write_all(&ours.encode())
        .map_err(io("send parameters"))?;
    let mut buf = [0u8; params::LEN];
    tcp.read_exact(&mut buf).map_err(io("read parameters"))?;
    let theirs = ConnParams::decode(&buf, ours.simulated).map_err(|source| SetupError::Params {
        peer: peer.clone(),
        source,
    })?;
    let port = endpoint.connect(&theirs)?;
    let link = Link::new(
        port,
        LinkParams {
            local_capacity: ours.capacity as usize,
            remote_capacity: theirs.capacity as usize,
            local_visibility: ours.visibility,
            remote_visibility: theirs.visibility,
            remote_rq_depth: theirs.rq_depth,
            signal_every: cfg.signal_every,
            max_inline: cfg.max_inline as usize,
            completion_ack: cfg.completion_ack,
        },
    )
    .map_err(|source| SetupError::Start {
        peer: peer.clone(),
        source,
    })?;
    tcp.write_all(b"R").map_err(io("send ready"))?;
    let mut ready = [0u8; 1];
    tcp.read_exact(&mut ready).map_err(io("read ready"))?;
    if ready != *b"R" {
        return Err(SetupError::Io {
            op: format!("rdma hello with {peer}"),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ready byte {:#04x}, expected 'R'", ready[0]),
            ),
        });
    }
    tcp.set_nonblocking(true).map_err(io("set nonblocking"))?;
    let p = link.params();
    let describe = format!(
        "rdma {} to {peer}: rings {} KiB in / {} KiB out, visibility {} in / {} out, inline <= {} bytes, signal every {}{}",
        nic.describe(),
        p.local_capacity >> 10,
        p.remote_capacity >> 10,
        p.local_visibility.name(),
        p.remote_visibility.name(),
        p.max_inline,
        p.signal_every,
        if cfg.completion_ack {
            ", completion is the ACK"
        } else {
            ""
        },
    );
    Ok(Session {
        link,
        tcp,
        peer: format!("rdma:{peer}"),
        describe,
        close_timeout: cfg.close_timeout,
        empty_polls: 0,
        bye_at: None,
        bye_seen: None,
        lost: false,
        bye_buf: Vec::new(),
        completion_ack: cfg.completion_ack,
    })
}

impl Session {
    /// `rdma:host:port` of the peer.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// One line saying what the session runs on and with which settings.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Protocol counters.
    pub fn stats(&self) -> LinkStats {
        self.link.stats()
    }

    /// How written bytes become visible: (into us, into the peer).
    pub fn visibility(&self) -> (Visibility, Visibility) {
        let p = self.link.params();
        (p.local_visibility, p.remote_visibility)
    }

    /// Stream bytes the RC completions prove are in the peer's memory, when
    /// `completion_ack` is on.
    pub fn delivered(&self) -> Option<u64> {
        self.completion_ack.then(|| self.link.delivered())
    }

    fn map(&self, e: TransferError) -> SessionError {
        match &e {
            TransferError::Completion {
                status: WcStatus::RetryExceeded | WcStatus::RnrRetryExceeded | WcStatus::Flushed,
                ..
            } => SessionError::PeerLost(format!("{}: {e}", self.peer)),
            TransferError::BadImmediate { .. }
            | TransferError::BadTrailer { .. }
            | TransferError::BadCredit { .. }
            | TransferError::Unexpected { .. }
            | TransferError::Completion {
                status: WcStatus::RemoteAccess,
                ..
            } => SessionError::Protocol {
                peer: self.peer.clone(),
                source: e,
            },
            _ => SessionError::Local {
                peer: self.peer.clone(),
                source: e,
            },
        }
    }

    /// Reads the silent TCP connection: the peer's bye, or EOF.
    fn check_peer(&mut self) {
        if self.bye_at.is_some() || self.lost {
            return;
        }
        let mut b = [0u8; 16];
        loop {
            match self.tcp.read(&mut b) {
                Ok(0) => {
                    self.lost = true;
                    return;
                }
                Ok(n) => {
                    self.bye_buf.extend_from_slice(&b[..n]);
                    if self.bye_buf.len() >= 9 {
                        if self.bye_buf[0] == b'B' {
                            let mut w = [0u8; 8];
                            w.copy_from_slice(&self.bye_buf[1..9]);
                            self.bye_at = Some(u64::from_le_bytes(w));
                            self.bye_seen = Some(Instant::now());
                        } else {
                            self.lost = true;
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lost = true;
                    return;
                }
            }
        }
    }

    fn gone(&self) -> Option<SessionError> {
        if self.lost {
            return Some(SessionError::PeerLost(format!(
                "{} exited without closing the connection",
                self.peer
            )));
        }
        None
    }

    fn idle_poll(&mut self) {
        self.empty_polls += 1;
        if self.empty_polls.is_multiple_of(PEEK_EVERY) {
            self.check_peer();
        }
    }

    /// Sends a prefix of `bufs` (0: no room now).
    pub fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, SessionError> {
        if let Some(e) = self.gone() {
            return Err(e);
        }
        if self.bye_at.is_some() {
            return Err(SessionError::Closed);
        }
        let n = self.link.send(bufs).map_err(|e| self.map(e))?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            self.idle_poll();
        }
        Ok(n)
    }

    /// Receives bytes (0: none yet); `Closed` once every byte before the
    /// peer's orderly close was returned.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<usize, SessionError> {
        let n = self.link.recv(buf).map_err(|e| self.map(e))?;
        if n > 0 {
            self.empty_polls = 0;
            return Ok(n);
        }
        if let Some(end) = self.bye_at {
            if self.link.received() >= end {
                return Err(SessionError::Closed);
            }
            if self
                .bye_seen
                .is_some_and(|t| t.elapsed() > self.close_timeout)
            {
                return Err(SessionError::PeerLost(format!(
                    "{} closed at stream position {end}, but only {} bytes arrived",
                    self.peer,
                    self.link.received()
                )));
            }
            return Ok(0);
        }
        if let Some(e) = self.gone() {
            return Err(e);
        }
        self.idle_poll();
        Ok(0)
    }

    /// Polls completions and writes a due credit; true if anything moved.
    pub fn progress(&mut self) -> Result<bool, SessionError> {
        self.link.progress().map_err(|e| self.map(e))
    }

    /// Sleeps up to `timeout` (at most 100 µs at a time) unless bytes are
    /// readable (`readable`) or there is room to send (`writable`).
    pub fn wait(
        &mut self,
        readable: bool,
        writable: bool,
        timeout: Duration,
    ) -> Result<(), SessionError> {
        let ready = (readable && self.link.readable().map_err(|e| self.map(e))? > 0)
            || (writable && self.link.writable().map_err(|e| self.map(e))?);
        if !ready && !timeout.is_zero() {
            std::thread::sleep(timeout.min(WAIT_SLICE));
            self.check_peer();
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.lost {
            return;
        }
        // Orderly close: every posted write completed, then the bye.
        let drained = self.link.quiesce(self.close_timeout).is_ok();
        if drained {
            let mut bye = [0u8; 9];
            bye[0] = b'B';
            bye[1..].copy_from_slice(&self.link.sent().to_le_bytes());
            let _ = self.tcp.set_nonblocking(false);
            let _ = self.tcp.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = self.tcp.write_all(&bye);
        }
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
    }
}

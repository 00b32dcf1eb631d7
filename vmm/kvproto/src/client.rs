//! A blocking UDP client for single requests (`ftvm client put/get/...`).
//!
//! One [`KvClient`] is one `client_id`: each call takes the next request
//! number and resends the same datagram on timeout, up to `max_attempts`
//! times, so a retried request is applied once by the server.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use crate::{KvDecodeError, KvEncodeError, MAX_DATAGRAM, Op, Reply, Request, Status};

/// A request that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum KvCallError {
    /// A socket operation failed.
    #[error("{what} (server {server})")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The server.
        server: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request could not be encoded (key or value too long).
    #[error("cannot encode request: {0}")]
    Encode(KvEncodeError),
    /// The server answered with a datagram that is not a reply.
    #[error("bad reply from {server}")]
    Decode {
        /// The server.
        server: SocketAddr,
        /// What was wrong.
        source: KvDecodeError,
    },
    /// No reply after every attempt.
    #[error(
        "no reply from {server} to client {client_id:#x} request {request_no} after {attempts} attempts of {timeout_ms} ms"
    )]
    NoReply {
        /// The server.
        server: SocketAddr,
        /// Our client id.
        client_id: u64,
        /// The request number.
        request_no: u64,
        /// Sends made.
        attempts: u32,
        /// Per-attempt timeout.
        timeout_ms: u64,
    },
}

/// A reply that owns its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedReply {
    /// The outcome.
    pub status: Status,
    /// The op answered.
    pub op: Option<Op>,
    /// The client id echoed.
    pub client_id: u64,
    /// The request number echoed.
    pub request_no: u64,
    /// The reply value.
    pub value: Vec<u8>,
    /// Sends it took (1 = no retry).
    pub attempts: u32,
}

/// A client id with its own request numbering.
#[derive(Debug)]
pub struct KvClient {
    socket: UdpSocket,
    server: SocketAddr,
    /// The addresses tried in turn on a timeout (`server` first).
    servers: Vec<SocketAddr>,
    client_id: u64,
    next_request_no: u64,
    timeout: Duration,
    max_attempts: u32,
}

impl KvClient {
    /// Binds an ephemeral UDP socket for talking to `server`. The first
    /// request gets number `first_request_no` (>= 1).
    pub fn new(
        server: SocketAddr,
        client_id: u64,
        first_request_no: u64,
        timeout: Duration,
        max_attempts: u32,
    ) -> Result<KvClient, KvCallError> {
        let io = |what| {
            move |source| KvCallError::Io {
                what,
                server,
                source,
            }
        };
        let bind: SocketAddr = if server.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).map_err(io("bind client socket"))?;
        socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(io("set read timeout"))?;
        Ok(KvClient {
            socket,
            server,
            servers: vec![server],
            client_id,
            next_request_no: first_request_no.max(1),
            timeout,
            max_attempts: max_attempts.max(1),
        })
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// More addresses of the same service: a timed-out request is resent
    /// to the next one (the side that went live after a failover).
    pub fn with_fallbacks(mut self, fallbacks: &[SocketAddr]) -> KvClient {
        self.servers.extend_from_slice(fallbacks);
        self
    }

    /// Sends one request and waits for its reply, retrying with the same
    /// request number on timeout. Replies to other request numbers (late
    /// answers to earlier attempts) are skipped.
    pub fn call(
        &mut self,
        op: Op,
        key: &[u8],
        value: &[u8],
        new_value: &[u8],
    ) -> Result<OwnedReply, KvCallError> {
        let mut server = self.server;
        let request_no = self.next_request_no;
        let req = Request {
            op,
            client_id: self.client_id,
            request_no,
            key,
            value,
            new_value,
        };
        let mut out = [0u8; MAX_DATAGRAM];
        let len = req.encode(&mut out).map_err(KvCallError::Encode)?;
        self.next_request_no += 1;
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        for attempt in 1..=self.max_attempts {
            if attempt > 1 {
                let at = self.servers.iter().position(|s| *s == server).unwrap_or(0);
                server = self.servers[(at + 1) % self.servers.len()];
            }
            self.socket
                .send_to(&out[..len], server)
                .map_err(|source| KvCallError::Io {
                    what: "send request",
                    server,
                    source,
                })?;
            let deadline = std::time::Instant::now() + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                self.socket
                    .set_read_timeout(Some(left))
                    .map_err(|source| KvCallError::Io {
                        what: "set read timeout",
                        server,
                        source,
                    })?;
                let n = match self.socket.recv_from(&mut buf) {
                    Ok((n, from)) if from == server => n,
                    Ok(_) => continue,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break;
                    }
                    Err(source) => {
                        return Err(KvCallError::Io {
                            what: "receive reply",
                            server,
                            source,
                        });
                    }
                };
                let reply = Reply::decode(&buf[..n])
                    .map_err(|source| KvCallError::Decode { server, source })?;
                if reply.client_id != self.client_id || reply.request_no != request_no {
                    continue;
                }
                // The next request starts where this one was answered.
                self.server = server;
                return Ok(OwnedReply {
                    status: reply.status,
                    op: reply.op,
                    client_id: reply.client_id,
                    request_no: reply.request_no,
                    value: reply.value.to_vec(),
                    attempts: attempt,
                });
            }
        }
        Err(KvCallError::NoReply {
            server,
            client_id: self.client_id,
            request_no,
            attempts: self.max_attempts,
            timeout_ms: self.timeout.as_millis() as u64,
        })
    }
}

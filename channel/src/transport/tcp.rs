//! `tcp`: std TCP sockets, `TCP_NODELAY`, nonblocking; the baseline transport.
//!
//! Busy-polling or blocking is the caller's idle strategy: the socket is
//! always nonblocking and [`Transport::wait`] is a `poll(2)` for the park case.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use super::sys::{poll_fd, set_buffer};
use super::{Interest, Listener, Transport, TransportError};

/// A connected TCP stream.
#[derive(Debug)]
pub struct TcpTransport {
    stream: TcpStream,
    peer: String,
}

fn interest_events(interest: Interest) -> libc::c_short {
    match interest {
        Interest::Readable => libc::POLLIN,
        Interest::Writable => libc::POLLOUT,
        Interest::Both => libc::POLLIN | libc::POLLOUT,
    }
}

/// Sets `SO_SNDBUF` and `SO_RCVBUF` of `stream` to `bytes` (the channel's
/// `socket_buffer_bytes`; a state transfer's connection, which becomes the
/// channel, gets them from its start).
pub fn set_socket_buffers(stream: &TcpStream, bytes: usize) -> io::Result<()> {
    set_buffer(stream.as_fd(), libc::SO_SNDBUF, bytes)?;
    set_buffer(stream.as_fd(), libc::SO_RCVBUF, bytes)
}

impl TcpTransport {
    /// Wraps a connected stream: nonblocking, `TCP_NODELAY`, buffers of `buffer_bytes`.
    pub fn from_stream(
        stream: TcpStream,
        buffer_bytes: usize,
    ) -> Result<TcpTransport, TransportError> {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let ctx = |what: &str| format!("{what} on tcp connection to {peer}");
        stream
            .set_nodelay(true)
            .map_err(|e| TransportError::io(ctx("set TCP_NODELAY"), e))?;
        stream
            .set_nonblocking(true)
            .map_err(|e| TransportError::io(ctx("set nonblocking"), e))?;
        let fd = stream.as_fd();
        set_buffer(fd, libc::SO_SNDBUF, buffer_bytes)
            .map_err(|e| TransportError::io(ctx("set SO_SNDBUF"), e))?;
        set_buffer(fd, libc::SO_RCVBUF, buffer_bytes)
            .map_err(|e| TransportError::io(ctx("set SO_RCVBUF"), e))?;
        Ok(TcpTransport { stream, peer })
    }

    /// Connects to `addr` (host:port), trying each resolved address for up to `timeout`.
    pub fn connect(
        addr: &str,
        buffer_bytes: usize,
        timeout: Duration,
    ) -> Result<TcpTransport, TransportError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| TransportError::io(format!("resolve tcp address {addr:?}"), e))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(s) => return TcpTransport::from_stream(s, buffer_bytes),
                Err(e) => last = Some(e),
            }
        }
        Err(TransportError::io(
            format!("connect tcp to {addr}"),
            last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address resolved")),
        ))
    }

    fn lost(&self, op: &str, e: io::Error) -> TransportError {
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => {
                TransportError::PeerLost(format!("{op} on tcp connection to {}: {e}", self.peer))
            }
            _ => TransportError::io(format!("{op} on tcp connection to {}", self.peer), e),
        }
    }
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransportError> {
        let mut slices = [IoSlice::new(&[]); 8];
        let n = bufs.len().min(slices.len());
        for (s, b) in slices.iter_mut().zip(bufs) {
            *s = IoSlice::new(b);
        }
        loop {
            match self.stream.write_vectored(&slices[..n]) {
                Ok(0) if bufs.iter().any(|b| !b.is_empty()) => {
                    return Err(TransportError::PeerLost(format!(
                        "tcp connection to {} accepts no more bytes",
                        self.peer
                    )));
                }
                Ok(sent) => return Ok(sent),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.lost("send", e)),
            }
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.lost("recv", e)),
            }
        }
    }

    fn wait(&mut self, interest: Interest, timeout: Duration) -> Result<(), TransportError> {
        poll_fd(self.stream.as_fd(), interest_events(interest), timeout)
            .map(|_| ())
            .map_err(|e| self.lost("poll", e))
    }

    fn peer(&self) -> String {
        format!("tcp:{}", self.peer)
    }

    fn readable_fd(&self) -> Option<RawFd> {
        Some(self.stream.as_raw_fd())
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // An orderly FIN lets the peer tell a close from a crash.
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// A listening TCP socket.
#[derive(Debug)]
pub struct TcpListenerTransport {
    listener: TcpListener,
    buffer_bytes: usize,
    local: String,
}

impl TcpListenerTransport {
    /// Binds `addr` (e.g. `127.0.0.1:7100`; port 0 picks a free port).
    pub fn bind(addr: &str, buffer_bytes: usize) -> Result<TcpListenerTransport, TransportError> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| TransportError::io(format!("listen on tcp {addr}"), e))?;
        listener.set_nonblocking(true).map_err(|e| {
            TransportError::io(format!("set nonblocking on tcp listener {addr}"), e)
        })?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        Ok(TcpListenerTransport {
            listener,
            buffer_bytes,
            local,
        })
    }
}

impl Listener for TcpListenerTransport {
    fn accept(&mut self, timeout: Duration) -> Result<Option<Box<dyn Transport>>, TransportError> {
        let op = || format!("accept on tcp {}", self.local);
        match self.listener.accept() {
            Ok((s, _)) => {
                return Ok(Some(Box::new(TcpTransport::from_stream(
                    s,
                    self.buffer_bytes,
                )?)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(TransportError::io(op(), e)),
        }
        if !poll_fd(self.listener.as_fd(), libc::POLLIN, timeout)
            .map_err(|e| TransportError::io(op(), e))?
        {
            return Ok(None);
        }
        match self.listener.accept() {
            Ok((s, _)) => Ok(Some(Box::new(TcpTransport::from_stream(
                s,
                self.buffer_bytes,
            )?))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(TransportError::io(op(), e)),
        }
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }
}

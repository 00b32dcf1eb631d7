//! Connecting and listening: std TCP sockets handed to new rings.

use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ftvm_tuning::ChannelSettings;
use io_uring::IoUring;

use super::UringTransport;
use super::setup::unavailable;
use crate::transport::{Listener, Transport, TransportError};

/// Checks that this process can create io_uring instances.
///
/// Listeners call it before accepting so that a machine without io_uring
/// fails at start-up, not at the first connection.
pub fn probe_available() -> Result<(), TransportError> {
    IoUring::new(2).map(drop).map_err(unavailable)
}

/// Connects to `addr` (`host:port`) and runs the connection over io_uring.
///
/// A refused connection is retried until [`crate::transport::CONNECT_TIMEOUT`], so a
/// source may start before its sink.
pub fn connect(
    settings: &ChannelSettings,
    addr: &str,
) -> Result<Box<dyn Transport>, TransportError> {
    probe_available()?;
    let deadline = Instant::now() + crate::transport::CONNECT_TIMEOUT;
    let stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(TransportError::io(format!("connect to {addr}"), e)),
        }
    };
    Ok(Box::new(UringTransport::from_stream(settings, stream)?))
}

/// Listens on `addr` (`host:port`; port 0 picks a free port).
pub fn listen(settings: &ChannelSettings, addr: &str) -> Result<Box<dyn Listener>, TransportError> {
    Ok(Box::new(UringListener::bind(settings, addr)?))
}

/// Accepts TCP connections and runs each over io_uring.
#[derive(Debug)]
pub struct UringListener {
    listener: TcpListener,
    settings: ChannelSettings,
    local: String,
}

impl UringListener {
    /// Binds `addr` after checking that io_uring is usable here.
    pub fn bind(settings: &ChannelSettings, addr: &str) -> Result<UringListener, TransportError> {
        probe_available()?;
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| TransportError::io(format!("resolve listen address {addr:?}"), e))?
            .collect();
        let listener = TcpListener::bind(&addrs[..])
            .map_err(|e| TransportError::io(format!("listen on {addr}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TransportError::io(format!("set nonblocking on listener {addr}"), e))?;
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.to_string());
        Ok(UringListener {
            listener,
            settings: settings.clone(),
            local,
        })
    }
}

impl Listener for UringListener {
    fn accept(&mut self, timeout: Duration) -> Result<Option<Box<dyn Transport>>, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(|e| {
                        TransportError::io(format!("set blocking on accepted {}", self.local), e)
                    })?;
                    let t = UringTransport::from_stream(&self.settings, stream)?;
                    return Ok(Some(Box::new(t)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TransportError::io(format!("accept on {}", self.local), e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // An interrupted poll is a spurious wake-up: the loop accepts again.
            crate::transport::sys::poll_fd(self.listener.as_fd(), libc::POLLIN, left)
                .map_err(|e| TransportError::io(format!("poll listener {}", self.local), e))?;
        }
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }
}

//! `shm`: both ends on one host; bytes move through two one-sided byte pipes
//! (`ftvm_ring::pipe`) in a shared mapping, without system calls.
//!
//! Rendezvous and liveness go through a Unix socket in the abstract namespace
//! (`ftvm-shm/NAME`), which leaves nothing in the filesystem:
//!
//! 1. The listener binds the socket. Per accepted connection it creates a
//!    `memfd`, sizes it for two pipes of `capacity` bytes, formats them and
//!    passes the fd to the connector with `SCM_RIGHTS`, with a 16-byte
//!    message (magic, capacity).
//! 2. Both map the memfd. Pipe A carries connector -> listener, pipe B
//!    listener -> connector; each side writes only the pipe it sends on (data,
//!    then one 8-byte position) and publishes its read position on the other:
//!    the same one-sided protocol the RDMA transport performs with RDMA WRITE.
//! 3. The Unix socket stays open and idle. An orderly close writes one byte
//!    (`B`) then shuts it down; a crashed process closes it through the
//!    kernel. When its pipe is empty, a side peeks at the socket now and then:
//!    EOF after `B` is [`TransportError::Closed`], EOF without it is
//!    [`TransportError::PeerLost`].

mod sys;

use std::io;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use ftvm_ring::pipe::{self, PipeReader, PipeWriter};

use super::sys::poll_fd;
use super::{Interest, Listener, Transport, TransportError};
use sys::Mapping;

const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"FTVMSHM1");
/// Empty polls between two liveness peeks at the socket (a peek is a syscall).
const PEEK_EVERY: u32 = 4096;
/// Longest sleep of `wait` (shared memory cannot be waited on without futexes).
const WAIT_SLICE: Duration = Duration::from_micros(100);

fn check_name(name: &str) -> Result<&str, TransportError> {
    let name = name.strip_prefix("shm:").unwrap_or(name);
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(TransportError::io(
            format!("shm name {name:?}"),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "use 1-64 characters of letters, digits, '-', '_', '.'",
            ),
        ));
    }
    Ok(name)
}

fn socket_addr(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("ftvm-shm/{name}").as_bytes())
}

/// One end of a shm connection.
#[derive(Debug)]
pub struct ShmTransport {
    writer: PipeWriter,
    reader: PipeReader,
    sock: UnixStream,
    peer: String,
    empty_polls: u32,
    peer_gone: Option<bool>,
    // Dropped last: the pipes point into it.
    _map: Mapping,
}

impl ShmTransport {
    fn new(
        map: Mapping,
        capacity: usize,
        listener_side: bool,
        sock: UnixStream,
        peer: String,
    ) -> Result<ShmTransport, TransportError> {
        let bad = |e: ftvm_ring::RingError| {
            TransportError::io(format!("attach shm pipe of {peer}"), io::Error::other(e))
        };
        let (writer, reader) = map.attach(capacity, listener_side).map_err(bad)?;
        sock.set_nonblocking(true)
            .map_err(|e| TransportError::io(format!("set nonblocking on {peer}"), e))?;
        Ok(ShmTransport {
            writer,
            reader,
            sock,
            peer,
            empty_polls: 0,
            peer_gone: None,
            _map: map,
        })
    }

    /// Connects to the listener `name` (waits up to `timeout` for it to appear).
    pub fn connect(name: &str, timeout: Duration) -> Result<ShmTransport, TransportError> {
        let name = check_name(name)?;
        let peer = format!("shm:{name}");
        let addr =
            socket_addr(name).map_err(|e| TransportError::io(format!("address of {peer}"), e))?;
        let start = Instant::now();
        let sock = loop {
            match UnixStream::connect_addr(&addr) {
                Ok(s) => break s,
                Err(e)
                    if start.elapsed() < timeout
                        && e.kind() == io::ErrorKind::ConnectionRefused =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(TransportError::io(
                        format!("connect to {peer} (is a listener running?)"),
                        e,
                    ));
                }
            }
        };
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| TransportError::io(format!("set timeout on {peer}"), e))?;
        let (fd, msg) = sys::recv_fd(sock.as_fd())
            .map_err(|e| TransportError::io(format!("rendezvous with {peer}"), e))?;
        let magic = u64::from_le_bytes(msg[..8].try_into().unwrap_or_default());
        let capacity = u64::from_le_bytes(msg[8..].try_into().unwrap_or_default()) as usize;
        if magic != HELLO_MAGIC || !capacity.is_power_of_two() || capacity > 1 << 30 {
            return Err(TransportError::io(
                format!("rendezvous with {peer}"),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad rendezvous: magic {magic:#x}, capacity {capacity}"),
                ),
            ));
        }
        let len = 2 * pipe::region_len(capacity);
        let size = sys::file_size(fd.as_fd())
            .map_err(|e| TransportError::io(format!("rendezvous with {peer}"), e))?;
        if size < len as u64 {
            return Err(TransportError::io(
                format!("rendezvous with {peer}"),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("shared memory of {size} bytes, smaller than the {len} announced"),
                ),
            ));
        }
        let map = Mapping::map(&fd, len)
            .map_err(|e| TransportError::io(format!("map shared memory of {peer}"), e))?;
        ShmTransport::new(map, capacity, false, sock, peer)
    }

    /// Peeks at the rendezvous socket: has the peer gone, and how?
    fn check_peer(&mut self) -> Result<(), TransportError> {
        if self.peer_gone.is_none() {
            let mut b = [0u8; 2];
            let n = sys::peek(self.sock.as_fd(), &mut b);
            match n {
                Ok(0) => self.peer_gone = Some(false),
                // The bye byte arrives before EOF; EOF is not needed to trust it.
                Ok(_) if b[0] == b'B' => self.peer_gone = Some(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.peer_gone = Some(false),
            }
        }
        Ok(())
    }

    fn gone_error(&self) -> Option<TransportError> {
        match self.peer_gone {
            Some(true) => Some(TransportError::Closed),
            Some(false) => Some(TransportError::PeerLost(format!(
                "{} exited without closing the channel",
                self.peer
            ))),
            None => None,
        }
    }
}

fn ring_err(peer: &str, e: ftvm_ring::RingError) -> TransportError {
    TransportError::PeerLost(format!("{peer} corrupted the shared pipe: {e}"))
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransportError> {
        if let Some(e) = self.gone_error() {
            return Err(e);
        }
        let n = self.writer.write(bufs);
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            self.empty_polls += 1;
            if self.empty_polls.is_multiple_of(PEEK_EVERY) {
                self.check_peer()?;
                if let Some(e) = self.gone_error() {
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let n = self.reader.read(buf).map_err(|e| ring_err(&self.peer, e))?;
        if n > 0 {
            self.empty_polls = 0;
            return Ok(n);
        }
        if self.peer_gone.is_some() {
            // Bytes written before the close were returned above; now report it.
            let n = self.reader.read(buf).map_err(|e| ring_err(&self.peer, e))?;
            return if n > 0 {
                Ok(n)
            } else {
                Err(self.gone_error().unwrap_or(TransportError::Closed))
            };
        }
        self.empty_polls += 1;
        if self.empty_polls.is_multiple_of(PEEK_EVERY) {
            self.check_peer()?;
        }
        Ok(0)
    }

    fn wait(&mut self, interest: Interest, timeout: Duration) -> Result<(), TransportError> {
        let ready = match interest {
            Interest::Readable => {
                self.reader
                    .available()
                    .map_err(|e| ring_err(&self.peer, e))?
                    > 0
            }
            Interest::Writable => self.writer.free() > 0,
            Interest::Both => {
                self.writer.free() > 0
                    || self
                        .reader
                        .available()
                        .map_err(|e| ring_err(&self.peer, e))?
                        > 0
            }
        };
        if !ready && !timeout.is_zero() {
            std::thread::sleep(timeout.min(WAIT_SLICE));
            self.check_peer()?;
        }
        Ok(())
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        // Orderly close: the bye byte, then EOF. A full socket buffer or a
        // gone peer loses only the distinction Closed / PeerLost.
        let _ = sys::send_nonblocking(self.sock.as_fd(), b"B");
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Accepts shm connections on an abstract Unix socket.
#[derive(Debug)]
pub struct ShmListener {
    listener: UnixListener,
    name: String,
    capacity: usize,
}

impl ShmListener {
    /// Listens on `name`; each connection gets two pipes of `capacity`
    /// bytes (rounded up to a power of two, at least 64 KiB).
    pub fn bind(name: &str, capacity: usize) -> Result<ShmListener, TransportError> {
        let name = check_name(name)?.to_string();
        let addr = socket_addr(&name)
            .map_err(|e| TransportError::io(format!("address of shm:{name}"), e))?;
        let listener = UnixListener::bind_addr(&addr).map_err(|e| {
            TransportError::io(format!("listen on shm:{name} (another listener?)"), e)
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| TransportError::io(format!("set nonblocking on shm:{name}"), e))?;
        Ok(ShmListener {
            listener,
            name,
            capacity: capacity.max(64 << 10).next_power_of_two(),
        })
    }

    fn setup(&self, sock: UnixStream) -> Result<ShmTransport, TransportError> {
        let peer = format!("shm:{}", self.name);
        let op = |what: &str| format!("{what} for a connection on {peer}");
        let len = 2 * pipe::region_len(self.capacity);
        let fd = sys::memfd(c"ftvm-shm", len)
            .map_err(|e| TransportError::io(op("make shared memory (memfd)"), e))?;
        let map =
            Mapping::map(&fd, len).map_err(|e| TransportError::io(op("map shared memory"), e))?;
        map.init(self.capacity)
            .map_err(|e| TransportError::io(op("format pipe"), io::Error::other(e)))?;
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        msg[8..].copy_from_slice(&(self.capacity as u64).to_le_bytes());
        sock.set_nonblocking(false)
            .map_err(|e| TransportError::io(op("configure socket"), e))?;
        sys::send_fd(sock.as_fd(), fd.as_fd(), &msg)
            .map_err(|e| TransportError::io(op("pass shared memory"), e))?;
        ShmTransport::new(map, self.capacity, true, sock, peer)
    }
}

impl Listener for ShmListener {
    fn accept(&mut self, timeout: Duration) -> Result<Option<Box<dyn Transport>>, TransportError> {
        let op = || format!("accept on shm:{}", self.name);
        let sock = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !poll_fd(self.listener.as_fd(), libc::POLLIN, timeout)
                    .map_err(|e| TransportError::io(op(), e))?
                {
                    return Ok(None);
                }
                match self.listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) => return Err(TransportError::io(op(), e)),
                }
            }
            Err(e) => return Err(TransportError::io(op(), e)),
        };
        Ok(Some(Box::new(self.setup(sock)?)))
    }

    fn local_addr(&self) -> String {
        format!("shm:{}", self.name)
    }
}

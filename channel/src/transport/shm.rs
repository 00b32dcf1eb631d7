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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use ftvm_ring::pipe::{self, PipeReader, PipeWriter};

use super::tcp::poll_fd;
use super::{Interest, Listener, Transport, TransportError};

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

/// A shared mapping of a memfd, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through
// the pipe reader/writer, which synchronise with atomics.
unsafe impl Send for Mapping {}

impl Mapping {
    fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of an fd we own; the
        // kernel picks the address, so no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap in `Mapping::map`
        // and the pipes that point into it are dropped before the mapping
        // (field order of `ShmTransport`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Sends `fd` and `msg` over a Unix stream with SCM_RIGHTS.
fn send_fd(sock: RawFd, fd: RawFd, msg: &[u8; 16]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    // SAFETY: zeroed msghdr is a valid "empty" value; fields set below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: `mh` points at `cbuf`, which holds at least CMSG_SPACE(4)
    // bytes (64 >= 24), so CMSG_FIRSTHDR is non-null and CMSG_DATA has room
    // for one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: `mh` and everything it points to live until the call returns.
    let n = unsafe { libc::sendmsg(sock, &raw const mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short shm rendezvous message",
        ));
    }
    Ok(())
}

/// Receives an fd and a 16-byte message sent by [`send_fd`] (blocking socket).
fn recv_fd(sock: RawFd) -> io::Result<(OwnedFd, [u8; 16])> {
    let mut msg = [0u8; 16];
    let mut iov = libc::iovec {
        iov_base: msg.as_mut_ptr().cast(),
        iov_len: msg.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: zeroed msghdr is a valid "empty" value; fields set below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = size_of_val(&cbuf);
    // SAFETY: `mh` points at live buffers of the sizes it states.
    let n = unsafe { libc::recvmsg(sock, &raw mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("shm rendezvous message of {n} bytes, expected 16"),
        ));
    }
    // SAFETY: the kernel filled `mh.msg_control*`; CMSG_FIRSTHDR checks the
    // length before returning a header, and we read the fd only from an
    // SCM_RIGHTS message long enough to hold one.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const mh);
        if c.is_null()
            || (*c).cmsg_level != libc::SOL_SOCKET
            || (*c).cmsg_type != libc::SCM_RIGHTS
            || (*c).cmsg_len < libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shm rendezvous carried no fd",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok((OwnedFd::from_raw_fd(fd), msg))
    }
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
        let plen = pipe::region_len(capacity);
        // Pipe A (connector -> listener) at 0, pipe B (listener -> connector) at plen.
        // SAFETY: both regions lie inside the mapping (size checked by the
        // caller: 2 * plen <= map.len), which outlives the pipes (field order).
        let (a, b) = unsafe { (map.ptr, map.ptr.add(plen)) };
        let (w, r) = if listener_side { (b, a) } else { (a, b) };
        let bad = |e: ftvm_ring::RingError| {
            TransportError::io(format!("attach shm pipe of {peer}"), io::Error::other(e))
        };
        // SAFETY: `w`/`r` point at formatted pipe regions of `plen` bytes in
        // the mapping, valid while `_map` lives.
        let writer = unsafe { PipeWriter::attach(w, plen) }.map_err(bad)?;
        // SAFETY: as above.
        let reader = unsafe { PipeReader::attach(r, plen) }.map_err(bad)?;
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
        let (fd, msg) = recv_fd(sock.as_raw_fd())
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
        // SAFETY: fstat on an fd we own, into a zeroed stat on the stack.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 || (st.st_size as usize) < len {
            return Err(TransportError::io(
                format!("rendezvous with {peer}"),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "shared memory smaller than announced",
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
            // SAFETY: `b` is a live 2-byte buffer; the socket fd is open.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    b.as_mut_ptr().cast(),
                    b.len(),
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                self.peer_gone = Some(false);
            } else if n > 0 && b[0] == b'B' {
                // The bye byte arrives before EOF; EOF is not needed to trust it.
                self.peer_gone = Some(true);
            } else if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.peer_gone = Some(false);
                }
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
        // Orderly close: the bye byte, then EOF.
        // SAFETY: sending one byte from a static buffer on an open socket.
        unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                b"B".as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
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
        let plen = pipe::region_len(self.capacity);
        let len = 2 * plen;
        // SAFETY: memfd_create with a static NUL-terminated name.
        let raw = unsafe { libc::memfd_create(c"ftvm-shm".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(TransportError::io(
                op("memfd_create"),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on the fd we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(TransportError::io(
                op("size shared memory"),
                io::Error::last_os_error(),
            ));
        }
        let map =
            Mapping::map(&fd, len).map_err(|e| TransportError::io(op("map shared memory"), e))?;
        for i in 0..2 {
            // SAFETY: region i of `plen` bytes lies inside the fresh mapping;
            // no other party has it yet.
            unsafe { pipe::init(map.ptr.add(i * plen), plen) }
                .map_err(|e| TransportError::io(op("format pipe"), io::Error::other(e)))?;
        }
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        msg[8..].copy_from_slice(&(self.capacity as u64).to_le_bytes());
        sock.set_nonblocking(false)
            .map_err(|e| TransportError::io(op("configure socket"), e))?;
        send_fd(sock.as_raw_fd(), fd.as_raw_fd(), &msg)
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
                if !poll_fd(self.listener.as_raw_fd(), libc::POLLIN, timeout)
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

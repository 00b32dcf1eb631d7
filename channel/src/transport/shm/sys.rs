//! The shm transport's system calls and raw memory: the shared mapping and
//! the pipes placed in it, fd passing over the rendezvous socket, the memfd,
//! and the liveness peek. Everything unsafe of the transport is here, behind
//! safe signatures (fds are borrowed, so open for each call).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use ftvm_ring::RingError;
use ftvm_ring::pipe::{self, PipeReader, PipeWriter};

/// A shared mapping of a memfd, unmapped on drop. The pipes attached to
/// it point into it: their owner drops them first.
#[derive(Debug)]
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access to it goes through
// the pipe reader/writer, which synchronise with atomics.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd`, shared.
    pub(super) fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
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

    /// The two pipe regions of `capacity` bytes each: pipe A (connector ->
    /// listener) at 0, pipe B (listener -> connector) after it.
    fn regions(&self, capacity: usize) -> Result<[*mut u8; 2], RingError> {
        let plen = pipe::region_len(capacity);
        let need = plen.saturating_mul(2);
        if need > self.len {
            return Err(RingError::RegionTooSmall {
                len: self.len,
                need,
            });
        }
        // SAFETY: `plen <= self.len / 2`, so the offset stays inside the
        // mapping.
        Ok([self.ptr, unsafe { self.ptr.add(plen) }])
    }

    /// Formats both pipes (the listener, before the peer has the memfd).
    pub(super) fn init(&self, capacity: usize) -> Result<(), RingError> {
        let plen = pipe::region_len(capacity);
        for region in self.regions(capacity)? {
            // SAFETY: the region holds `plen` bytes of the mapping, which
            // no other party has yet.
            unsafe { pipe::init(region, plen) }?;
        }
        Ok(())
    }

    /// This side's ends of the pipes: it writes the one it sends on.
    pub(super) fn attach(
        &self,
        capacity: usize,
        listener_side: bool,
    ) -> Result<(PipeWriter, PipeReader), RingError> {
        let plen = pipe::region_len(capacity);
        let [a, b] = self.regions(capacity)?;
        let (w, r) = if listener_side { (b, a) } else { (a, b) };
        // SAFETY: `w`/`r` are pipe regions of `plen` bytes in the mapping
        // (formatted by the listener; `attach` checks the header), valid
        // while the mapping lives — its owner drops the pipes first.
        let writer = unsafe { PipeWriter::attach(w, plen) }?;
        // SAFETY: as above.
        let reader = unsafe { PipeReader::attach(r, plen) }?;
        Ok((writer, reader))
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

/// A memfd named `name` of `len` bytes.
pub(super) fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name that lives across it.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("memfd size"))?;
    // SAFETY: ftruncate on the fd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The size of the file behind `fd` (fstat).
pub(super) fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: a zeroed stat is a valid value for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call; `st` lives on the stack across it.
    if unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(st.st_size).map_err(|_| io::Error::other("negative file size"))
}

/// Peeks at what `sock` has to read without taking it and without
/// blocking: `Ok(0)` is EOF, `WouldBlock` nothing yet.
pub(super) fn peek(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live and writable for its length across the call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Sends `buf` on `sock` without blocking and without SIGPIPE.
pub(super) fn send_nonblocking(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live for its length across the call.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Sends `fd` and `msg` over a Unix stream with SCM_RIGHTS.
pub(super) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>, msg: &[u8; 16]) -> io::Result<()> {
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
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
    }
    // SAFETY: `mh` and everything it points to live until the call returns.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const mh, libc::MSG_NOSIGNAL) };
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
pub(super) fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<(OwnedFd, [u8; 16])> {
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
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut mh, libc::MSG_CMSG_CLOEXEC) };
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

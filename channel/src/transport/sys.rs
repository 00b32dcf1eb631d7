//! The socket syscalls of the tcp and shm transports (`setsockopt`,
//! `poll`): their unsafe, in one place. Safe signatures; each call's
//! invariants are the arguments' types (an fd the caller keeps open).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// Sets the `SOL_SOCKET` option `opt` (`SO_SNDBUF`, `SO_RCVBUF`) of `fd`
/// to `bytes` (capped at `c_int::MAX`).
pub(crate) fn set_buffer(fd: BorrowedFd<'_>, opt: libc::c_int, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is borrowed, so open for the call; `v` lives on the
    // stack across it and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits with `poll(2)` for `events` on `fd`; `timeout` is capped at i32::MAX ms.
pub(crate) fn poll_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis().max(u128::from(!timeout.is_zero())))
        .unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is a valid pollfd on the stack and nfds = 1 matches it.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    match rc {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

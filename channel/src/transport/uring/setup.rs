//! Ring construction: setup flags with fallbacks, the multishot probe, and
//! the `Unavailable` error naming why io_uring cannot be used here.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;

use io_uring::{IoUring, Probe, opcode};

use super::buffers::{MultiRecv, RECV_BUFFERS};
use super::{EnterPolicy, RECV_GROUP};
use crate::transport::TransportError;

/// Maps a ring-construction error to `Unavailable` with its cause.
pub(super) fn unavailable(e: io::Error) -> TransportError {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim().to_string())
        .ok();
    let cause = match (e.raw_os_error(), disabled.as_deref()) {
        (Some(libc::ENOSYS), _) => "the kernel has no io_uring (ENOSYS)".to_string(),
        (Some(libc::EPERM), Some("2")) => "disabled by sysctl kernel.io_uring_disabled=2".into(),
        (Some(libc::EPERM), Some("1")) => {
            "sysctl kernel.io_uring_disabled=1 and this process is not in kernel.io_uring_group"
                .into()
        }
        (Some(libc::EPERM), _) => {
            "io_uring_setup denied (EPERM: seccomp or container policy)".into()
        }
        _ => format!("io_uring_setup failed: {e}"),
    };
    TransportError::Unavailable(format!(
        "io_uring unavailable: {cause}; use --set channel.transport=tcp"
    ))
}

pub(super) fn set_buffer(
    stream: &TcpStream,
    opt: libc::c_int,
    bytes: usize,
    peer: &str,
) -> Result<(), TransportError> {
    if let Err(e) = crate::transport::sys::set_buffer(stream.as_fd(), opt, bytes) {
        let name = if opt == libc::SO_SNDBUF {
            "SO_SNDBUF"
        } else {
            "SO_RCVBUF"
        };
        return Err(TransportError::io(
            format!("set {name}={bytes} on socket to {peer}"),
            e,
        ));
    }
    Ok(())
}

/// Builds the ring: DEFER_TASKRUN (+TASKRUN_FLAG when accepted) or SQPOLL.
pub(super) fn build_ring(
    entries: u32,
    sqpoll: bool,
) -> Result<(IoUring, EnterPolicy, String, bool), TransportError> {
    if sqpoll {
        let ring = IoUring::builder()
            .setup_sqpoll(2000)
            .setup_r_disabled()
            .build(entries)
            .map_err(unavailable)?;
        return Ok((
            ring,
            EnterPolicy::SqPoll,
            "sqpoll(idle 2000 ms)".into(),
            true,
        ));
    }
    let flagged = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_r_disabled()
        .build(entries);
    match flagged {
        Ok(ring) => {
            return Ok((
                ring,
                EnterPolicy::TaskrunFlag,
                "single-issuer+defer-taskrun+taskrun-flag".into(),
                true,
            ));
        }
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(unavailable(e)),
        Err(_) => {}
    }
    match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(entries)
    {
        Ok(ring) => Ok((
            ring,
            EnterPolicy::Always,
            "single-issuer+defer-taskrun".into(),
            true,
        )),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(unavailable(e)),
        Err(_) => {
            eprintln!("ftvm uring: DEFER_TASKRUN not supported (kernel < 6.1); using a plain ring");
            let ring = IoUring::new(entries).map_err(unavailable)?;
            Ok((ring, EnterPolicy::Always, "plain".into(), false))
        }
    }
}

/// Sets up multishot receive, or says why it cannot be used.
pub(super) fn multishot_recv(ring: &IoUring) -> Result<MultiRecv, String> {
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    if !probe.is_supported(opcode::RecvMulti::CODE) {
        return Err("kernel lacks IORING_OP_RECV".into());
    }
    let m = MultiRecv::new().map_err(|e| format!("map provided buffers: {e}"))?;
    // SAFETY: `m.ring` is a page-aligned mapping of RECV_BUFFERS entries that
    // lives in `self.recv` until after the ring is closed (field drop order).
    unsafe {
        ring.submitter().register_buf_ring_with_flags(
            m.ring.as_ptr() as u64,
            RECV_BUFFERS,
            RECV_GROUP,
            0,
        )
    }
    .map_err(|e| format!("IORING_REGISTER_PBUF_RING failed (kernel < 5.19?): {e}"))?;
    Ok(m)
}

//! uring transport: io_uring over a TCP socket.
//!
//! Contract: the same as every [`Transport`]: an ordered, reliable byte
//! stream driven without blocking. The socket is connected or accepted with
//! std, then handed to a ring of its own; from then on every byte moves
//! through io_uring.
//!
//! Main flow:
//!
//! 1. [`connect`] / [`UringListener::accept`] set `TCP_NODELAY` and the
//!    socket buffer sizes, then [`UringTransport::from_stream`] builds the
//!    ring (`SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`, or `SQPOLL` when
//!    `channel.uring_sqpoll` is set), registers the socket as fixed file 0
//!    and the send buffer as fixed buffer 0, and probes the kernel for
//!    multishot receive.
//! 2. [`Transport::send`] copies the gathered `bufs` into the registered
//!    send buffer (a byte ring) and, when no send is in flight, queues one
//!    SQE covering every pending byte (`SEND` with `IORING_RECVSEND_FIXED_BUF`,
//!    or `WRITE_FIXED` on kernels without it). It returns the bytes accepted,
//!    0 when the buffer is full (flow control).
//! 3. Receiving is one multishot `RECV` over a provided-buffer ring: the
//!    kernel fills buffers as bytes arrive and posts one completion per
//!    buffer. [`Transport::recv`] copies out of them in order and hands each
//!    emptied buffer back to the kernel. Without multishot support (probed at
//!    start-up) a single `RECV` into a private buffer is re-armed instead.
//! 4. [`Transport::progress`] enters the kernel only when it must: when SQEs
//!    are queued or the kernel raised `IORING_SQ_TASKRUN` (deferred task work
//!    waits to run, e.g. a receive that became ready). Entering with
//!    `IORING_ENTER_GETEVENTS` and `min_complete = 0` runs that work without
//!    sleeping, then the completion queue is reaped. A CQ spun without
//!    entering would leave deferred task work late.
//! 5. [`Transport::wait`] (the `park` idle strategy) enters with
//!    `min_complete = 1` and a timeout.
//! 6. Drop flushes bytes still in the send buffer (bounded by
//!    `channel.peer_timeout_ms`), cancels the receive and closes the ring
//!    before the memory the kernel wrote into is unmapped.
//!
//! When io_uring cannot be used here (kernel without it, the
//! `kernel.io_uring_disabled` sysctl, a seccomp filter) construction fails
//! with [`TransportError::Unavailable`] naming the cause and the way out.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use ftvm_tuning::ChannelSettings;
use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};
use memmap2::MmapMut;

use super::{Interest, Listener, Transport, TransportError};

/// `IORING_ENTER_GETEVENTS`: run task work / reap completions on enter.
const ENTER_GETEVENTS: u32 = 1;
/// `IORING_RECVSEND_FIXED_BUF` (Linux 6.10): the send's buffer is fixed buffer `buf_index`.
const RECVSEND_FIXED_BUF: u16 = 4;
/// The socket is fixed file 0 of the ring.
const SOCKET: types::Fixed = types::Fixed(0);
/// Provided-buffer group of the receive ring.
const RECV_GROUP: u16 = 0;
/// Smallest registered send buffer; it grows to twice `channel.batch_bytes`
/// (a power of two, at most [`MAX_SEND_BUFFER_BYTES`]) so that a full batch
/// never waits for the previous one to leave.
const MIN_SEND_BUFFER_BYTES: usize = 1 << 20;
/// Largest registered send buffer.
const MAX_SEND_BUFFER_BYTES: usize = 64 << 20;
/// Buffers in the provided-buffer ring (power of two, at most 32768).
const RECV_BUFFERS: u16 = 64;
/// Bytes per provided buffer (and of the single-recv fallback buffer).
const RECV_BUFFER_BYTES: usize = 64 << 10;

/// `user_data` tags of the operations this transport queues.
const OP_SEND: u64 = 1;
const OP_RECV: u64 = 2;
const OP_CANCEL: u64 = 3;

/// Checks that this process can create io_uring instances.
///
/// Listeners call it before accepting so that a machine without io_uring
/// fails at start-up, not at the first connection.
pub fn probe_available() -> Result<(), TransportError> {
    IoUring::new(2).map(drop).map_err(unavailable)
}

/// Connects to `addr` (`host:port`) and runs the connection over io_uring.
///
/// A refused connection is retried until [`super::CONNECT_TIMEOUT`], so a
/// source may start before its sink.
pub fn connect(
    settings: &ChannelSettings,
    addr: &str,
) -> Result<Box<dyn Transport>, TransportError> {
    probe_available()?;
    let deadline = Instant::now() + super::CONNECT_TIMEOUT;
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
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `pfd` is a valid pollfd for the duration of the call and
            // the count passed is 1, matching the single element.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(TransportError::io(
                        format!("poll listener {}", self.local),
                        e,
                    ));
                }
            }
        }
    }

    fn local_addr(&self) -> String {
        self.local.clone()
    }
}

/// How completions are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EnterPolicy {
    /// DEFER_TASKRUN with TASKRUN_FLAG: enter only when SQEs wait or the
    /// kernel flagged deferred task work.
    TaskrunFlag,
    /// DEFER_TASKRUN without the flag (older kernels): enter on every round.
    Always,
    /// SQPOLL: the kernel thread submits and runs task work; enter only to
    /// wake it.
    SqPoll,
}

/// Which operation carries sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendOp {
    /// `IORING_OP_SEND` with `IORING_RECVSEND_FIXED_BUF` (Linux 6.10+).
    SendFixed,
    /// `IORING_OP_WRITE_FIXED` (any io_uring kernel).
    WriteFixed,
}

/// What the transport learned at start-up (for logs and reports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringFeatures {
    /// Ring setup flags in words, e.g. `single-issuer+defer-taskrun+taskrun-flag`.
    pub setup: String,
    /// `multishot` or `single`.
    pub recv: &'static str,
    /// Why multishot receive is not used, if it is not.
    pub recv_fallback: Option<String>,
}

/// The registered send buffer: a byte ring of pending bytes `[head, tail)`.
#[derive(Debug)]
struct SendBuffer {
    mem: MmapMut,
    /// Bytes handed to the kernel so far (counter, not an index).
    head: u64,
    /// Bytes accepted from callers so far.
    tail: u64,
    /// Length of the send in flight; 0 when none.
    inflight: u32,
    op: SendOp,
}

impl SendBuffer {
    fn free(&self) -> usize {
        self.mem.len() - (self.tail - self.head) as usize
    }

    fn pending(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Copies a prefix of `bufs` into free space; returns its length.
    fn push(&mut self, bufs: &[&[u8]]) -> usize {
        let cap = self.mem.len();
        let mut accepted = 0;
        for buf in bufs {
            let n = buf.len().min(self.free());
            let mut done = 0;
            while done < n {
                let at = (self.tail as usize) & (cap - 1);
                let run = (n - done).min(cap - at);
                self.mem[at..at + run].copy_from_slice(&buf[done..done + run]);
                done += run;
                self.tail += run as u64;
            }
            accepted += n;
            if n < buf.len() {
                break;
            }
        }
        accepted
    }

    /// The contiguous run of pending bytes starting at `head`.
    fn next_run(&self) -> (*const u8, u32) {
        let cap = self.mem.len();
        let at = (self.head as usize) & (cap - 1);
        let len = self.pending().min(cap - at);
        (self.mem[at..].as_ptr(), len as u32)
    }
}

/// The receive side: multishot over a provided-buffer ring, or single recv.
#[derive(Debug)]
enum RecvSide {
    Multi(MultiRecv),
    Single(SingleRecv),
}

/// Multishot receive over a provided-buffer ring.
#[derive(Debug)]
struct MultiRecv {
    /// The ring of `io_uring_buf` entries shared with the kernel.
    ring: MmapMut,
    /// The buffers the entries point into.
    bufs: MmapMut,
    /// Our copy of the ring tail (entries published to the kernel).
    tail: u16,
    /// Filled buffers in arrival order: (buffer id, consumed, length).
    ready: VecDeque<(u16, usize, usize)>,
    armed: bool,
}

impl MultiRecv {
    fn new() -> io::Result<MultiRecv> {
        let entry = std::mem::size_of::<types::BufRingEntry>();
        let mut ring = MmapMut::map_anon((RECV_BUFFERS as usize * entry).max(4096))?;
        let bufs = MmapMut::map_anon(RECV_BUFFERS as usize * RECV_BUFFER_BYTES)?;
        let base = ring.as_mut_ptr().cast::<types::BufRingEntry>();
        for bid in 0..RECV_BUFFERS {
            // SAFETY: `ring` holds RECV_BUFFERS entries (sized above) and is
            // page-aligned by mmap, so `base + bid` is an aligned entry in bounds;
            // the kernel does not see the ring until it is registered.
            let e = unsafe { &mut *base.add(bid as usize) };
            e.set_addr(bufs.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64);
            e.set_len(RECV_BUFFER_BYTES as u32);
            e.set_bid(bid);
        }
        let mut m = MultiRecv {
            ring,
            bufs,
            tail: 0,
            ready: VecDeque::new(),
            armed: false,
        };
        m.publish_tail(RECV_BUFFERS);
        Ok(m)
    }

    fn tail_atomic(&self) -> &AtomicU16 {
        let base = self.ring.as_ptr().cast::<types::BufRingEntry>();
        // SAFETY: `base` is the first entry of the mapped ring, which lives as
        // long as `self`; the tail is the u16 `resv` field of that entry, at an
        // even offset, so it is aligned for AtomicU16. The kernel only reads it.
        unsafe { &*BufRingEntry_tail(base).cast::<AtomicU16>() }
    }

    fn publish_tail(&mut self, tail: u16) {
        self.tail = tail;
        // Release: makes the entry written before this store (addr/len/bid)
        // visible to the kernel, which reads the tail with an acquire load
        // before reading entries up to it.
        self.tail_atomic().store(tail, Ordering::Release);
    }

    /// Hands buffer `bid` back to the kernel.
    fn recycle(&mut self, bid: u16) {
        let slot = (self.tail & (RECV_BUFFERS - 1)) as usize;
        let base = self.ring.as_mut_ptr().cast::<types::BufRingEntry>();
        // SAFETY: `slot < RECV_BUFFERS`, so the entry is inside the mapped
        // ring; the kernel does not read slots at or past the published tail,
        // and this slot's previous buffer was consumed by the kernel already
        // (at most RECV_BUFFERS buffers exist and `bid` is one we hold).
        let e = unsafe { &mut *base.add(slot) };
        e.set_addr(self.bufs.as_ptr() as u64 + (bid as usize * RECV_BUFFER_BYTES) as u64);
        e.set_len(RECV_BUFFER_BYTES as u32);
        e.set_bid(bid);
        self.publish_tail(self.tail.wrapping_add(1));
    }
}

/// The tail of a buffer ring (wrapper keeping the unsafe call in one place).
#[allow(non_snake_case)]
fn BufRingEntry_tail(base: *const types::BufRingEntry) -> *const u16 {
    // SAFETY: callers pass the page-aligned start of a mapped buffer ring;
    // `tail` only computes the address of a field of its first entry.
    unsafe { types::BufRingEntry::tail(base) }
}

/// Single receive into a private buffer, re-armed when emptied.
#[derive(Debug)]
struct SingleRecv {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    armed: bool,
}

/// Why the transport died (kept to report the same error again).
#[derive(Debug, Clone)]
enum Dead {
    PeerLost(String),
    Io(String, i32),
}

impl Dead {
    fn error(&self) -> TransportError {
        match self {
            Dead::PeerLost(m) => TransportError::PeerLost(m.clone()),
            Dead::Io(op, errno) => {
                TransportError::io(op.clone(), io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

/// A TCP connection driven through io_uring.
pub struct UringTransport {
    // Field order is drop order: the ring goes first, so no operation still
    // references the socket or the buffers below when they are released.
    ring: IoUring,
    stream: TcpStream,
    send: SendBuffer,
    recv: RecvSide,
    policy: EnterPolicy,
    features: UringFeatures,
    /// The peer sent FIN (all bytes before it are in `recv`).
    eof: bool,
    /// A receive-side error, reported after buffered bytes.
    recv_dead: Option<Dead>,
    /// A send-side error, reported at once.
    send_dead: Option<Dead>,
    peer: String,
    flush_timeout: Duration,
    /// The ring was created disabled and still waits for its first driver.
    disabled: bool,
}

impl std::fmt::Debug for UringTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringTransport")
            .field("peer", &self.peer)
            .field("features", &self.features)
            .field("policy", &self.policy)
            .field("send_pending", &self.send.pending())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// Maps a ring-construction error to `Unavailable` with its cause.
fn unavailable(e: io::Error) -> TransportError {
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

/// Classifies a negative completion result.
fn dead_from_errno(op: &str, peer: &str, errno: i32) -> Dead {
    match errno {
        libc::ECONNRESET
        | libc::EPIPE
        | libc::ECONNABORTED
        | libc::ETIMEDOUT
        | libc::EHOSTUNREACH => Dead::PeerLost(format!(
            "{op} {peer}: {}",
            io::Error::from_raw_os_error(errno)
        )),
        _ => Dead::Io(format!("io_uring {op} {peer}"), errno),
    }
}

fn set_buffer(
    stream: &TcpStream,
    opt: libc::c_int,
    bytes: usize,
    peer: &str,
) -> Result<(), TransportError> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: the fd is a live socket owned by `stream`; `v` is a c_int whose
    // address and size are passed together.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let name = if opt == libc::SO_SNDBUF {
            "SO_SNDBUF"
        } else {
            "SO_RCVBUF"
        };
        return Err(TransportError::io(
            format!("set {name}={bytes} on socket to {peer}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl UringTransport {
    /// Runs a connected TCP stream over a new ring configured by `settings`
    /// (`uring_entries`, `uring_sqpoll`, `socket_buffer_bytes`, `peer_timeout_ms`).
    pub fn from_stream(
        settings: &ChannelSettings,
        stream: TcpStream,
    ) -> Result<UringTransport, TransportError> {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "<unknown peer>".into());
        stream
            .set_nodelay(true)
            .map_err(|e| TransportError::io(format!("set TCP_NODELAY on socket to {peer}"), e))?;
        stream
            .set_nonblocking(false)
            .map_err(|e| TransportError::io(format!("set blocking on socket to {peer}"), e))?;
        set_buffer(
            &stream,
            libc::SO_SNDBUF,
            settings.socket_buffer_bytes,
            &peer,
        )?;
        set_buffer(
            &stream,
            libc::SO_RCVBUF,
            settings.socket_buffer_bytes,
            &peer,
        )?;

        let entries = settings.uring_entries.max(8);
        let (ring, policy, setup, disabled) = build_ring(entries, settings.uring_sqpoll)?;
        let submitter = ring.submitter();
        submitter
            .register_files(&[stream.as_raw_fd()])
            .map_err(|e| TransportError::io(format!("io_uring register socket to {peer}"), e))?;

        let send_bytes = (settings.batch_bytes.saturating_mul(2))
            .clamp(MIN_SEND_BUFFER_BYTES, MAX_SEND_BUFFER_BYTES)
            .next_power_of_two();
        let mem = MmapMut::map_anon(send_bytes)
            .map_err(|e| TransportError::io("map io_uring send buffer", e))?;
        let iov = libc::iovec {
            iov_base: mem.as_ptr() as *mut libc::c_void,
            iov_len: mem.len(),
        };
        // SAFETY: the iovec covers the whole `mem` mapping, which is stored in
        // `self.send` and outlives the ring (the ring field drops first).
        unsafe { submitter.register_buffers(&[iov]) }.map_err(|e| {
            TransportError::io(
                format!("io_uring register send buffer ({} bytes)", mem.len()),
                e,
            )
        })?;

        let (recv, recv_fallback) = match multishot_recv(&ring) {
            Ok(m) => (RecvSide::Multi(m), None),
            Err(reason) => {
                eprintln!(
                    "ftvm uring: multishot receive not used ({reason}); falling back to single recv"
                );
                (
                    RecvSide::Single(SingleRecv {
                        buf: vec![0u8; RECV_BUFFER_BYTES].into_boxed_slice(),
                        start: 0,
                        end: 0,
                        armed: false,
                    }),
                    Some(reason),
                )
            }
        };
        let features = UringFeatures {
            setup,
            recv: if recv_fallback.is_none() {
                "multishot"
            } else {
                "single"
            },
            recv_fallback,
        };
        let mut t = UringTransport {
            ring,
            stream,
            send: SendBuffer {
                mem,
                head: 0,
                tail: 0,
                inflight: 0,
                op: SendOp::SendFixed,
            },
            recv,
            policy,
            features,
            eof: false,
            recv_dead: None,
            send_dead: None,
            peer,
            flush_timeout: Duration::from_millis(settings.peer_timeout_ms.max(1)),
            disabled,
        };
        // Queued only: the first thread that drives the transport submits it.
        t.arm_recv()?;
        Ok(t)
    }

    /// What the ring runs with (setup flags, receive mode, fallback reason).
    pub fn features(&self) -> &UringFeatures {
        &self.features
    }

    /// Queues one SQE, entering the kernel if the SQ is full.
    fn push(&mut self, sqe: squeue::Entry) -> Result<(), TransportError> {
        loop {
            // SAFETY: every SQE queued here references memory owned by `self`
            // (the send buffer, the receive buffers) or nothing; it stays
            // mapped until the ring is closed, which happens first on drop.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            self.enter(0)?;
        }
    }

    /// Enables the ring on first use, binding it to the calling thread.
    ///
    /// A SINGLE_ISSUER ring belongs to one task, and DEFER_TASKRUN work runs
    /// only in that task. Rings are created disabled so that the thread that
    /// drives the transport, not the one that connected it, becomes the owner.
    fn enable(&mut self) -> Result<(), TransportError> {
        if self.disabled {
            self.ring.submitter().register_enable_rings().map_err(|e| {
                TransportError::io(format!("io_uring enable ring for {}", self.peer), e)
            })?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Maps an io_uring_enter error; EEXIST means a second thread drove a
    /// ring bound to another (SINGLE_ISSUER).
    fn enter_error(&self, e: io::Error) -> TransportError {
        let op = if e.raw_os_error() == Some(libc::EEXIST) {
            format!(
                "io_uring_enter for {} from a thread other than the one that first drove this transport (a SINGLE_ISSUER ring is bound to one thread)",
                self.peer
            )
        } else {
            format!("io_uring_enter for {}", self.peer)
        };
        TransportError::io(op, e)
    }

    /// Submits queued SQEs and runs deferred task work; waits for `want` completions.
    fn enter(&mut self, want: usize) -> Result<(), TransportError> {
        self.enable()?;
        let r = match self.policy {
            EnterPolicy::SqPoll => self.ring.submitter().submit_and_wait(want),
            _ => {
                let n = self.ring.submission().len() as u32;
                // SAFETY: plain io_uring_enter on our own ring with no
                // argument structure (arg None, size of sigset_t ignored).
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        n,
                        want as u32,
                        ENTER_GETEVENTS,
                        None,
                    )
                }
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.enter_error(e)),
        }
    }

    /// True when entering the kernel would make progress.
    fn must_enter(&mut self) -> bool {
        let mut sq = self.ring.submission();
        match self.policy {
            EnterPolicy::Always => true,
            EnterPolicy::TaskrunFlag => !sq.is_empty() || sq.taskrun() || sq.cq_overflow(),
            EnterPolicy::SqPoll => {
                sq.sync();
                sq.need_wakeup() || sq.cq_overflow()
            }
        }
    }

    fn arm_recv(&mut self) -> Result<(), TransportError> {
        let sqe = match &mut self.recv {
            RecvSide::Multi(m) => {
                if m.armed || m.ready.len() >= RECV_BUFFERS as usize {
                    return Ok(());
                }
                m.armed = true;
                opcode::RecvMulti::new(SOCKET, RECV_GROUP)
                    .build()
                    .user_data(OP_RECV)
            }
            RecvSide::Single(s) => {
                if s.armed || s.start < s.end {
                    return Ok(());
                }
                s.armed = true;
                s.start = 0;
                s.end = 0;
                opcode::Recv::new(SOCKET, s.buf.as_mut_ptr(), s.buf.len() as u32)
                    .build()
                    .user_data(OP_RECV)
            }
        };
        self.push(sqe)
    }

    fn arm_send(&mut self) -> Result<(), TransportError> {
        if self.send.inflight != 0 || self.send.pending() == 0 || self.send_dead.is_some() {
            return Ok(());
        }
        let (ptr, len) = self.send.next_run();
        let sqe = match self.send.op {
            SendOp::SendFixed => opcode::Send::new(SOCKET, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .ioprio(RECVSEND_FIXED_BUF)
                .build(),
            SendOp::WriteFixed => opcode::WriteFixed::new(SOCKET, ptr, len, 0)
                .offset(0)
                .build(),
        };
        self.send.inflight = len;
        self.push(sqe.user_data(OP_SEND))
    }

    /// Reaps every completion; returns true if any arrived.
    fn reap(&mut self) -> Result<bool, TransportError> {
        let mut any = false;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            any = true;
            match cqe.user_data() {
                OP_SEND => self.on_send(cqe.result())?,
                OP_RECV => self.on_recv(cqe.result(), cqe.flags()),
                _ => {}
            }
        }
        Ok(any)
    }

    fn on_send(&mut self, res: i32) -> Result<(), TransportError> {
        self.send.inflight = 0;
        if res >= 0 {
            self.send.head += res as u64;
            return self.arm_send();
        }
        let errno = -res;
        if errno == libc::EINVAL && self.send.op == SendOp::SendFixed {
            // Kernel older than 6.10: no fixed-buffer SEND. Nothing was sent,
            // so the same bytes go again with WRITE_FIXED.
            self.send.op = SendOp::WriteFixed;
            return self.arm_send();
        }
        if errno == libc::EINTR || errno == libc::EAGAIN {
            return self.arm_send();
        }
        self.send_dead = Some(dead_from_errno("send to", &self.peer, errno));
        Ok(())
    }

    fn on_recv(&mut self, res: i32, flags: u32) {
        match &mut self.recv {
            RecvSide::Multi(m) => {
                if !cqueue::more(flags) {
                    m.armed = false;
                }
                if res > 0 {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        m.ready.push_back((bid, 0, res as usize));
                    }
                    return;
                }
            }
            RecvSide::Single(s) => {
                s.armed = false;
                if res > 0 {
                    s.start = 0;
                    s.end = res as usize;
                    return;
                }
            }
        }
        match -res {
            0 => self.eof = true,
            // Out of provided buffers: re-armed once `recv` returns one.
            libc::ENOBUFS | libc::EINTR | libc::EAGAIN => {}
            libc::ECANCELED => {}
            errno => self.recv_dead = Some(dead_from_errno("receive from", &self.peer, errno)),
        }
    }

    /// One round: submit, run task work if flagged, reap, re-arm.
    fn round(&mut self) -> Result<bool, TransportError> {
        if self.must_enter() {
            self.enter(0)?;
        }
        let moved = self.reap()?;
        if !self.eof && self.recv_dead.is_none() {
            self.arm_recv()?;
        }
        if !self.ring.submission().is_empty() {
            self.enter(0)?;
        }
        Ok(moved)
    }

    fn has_readable(&self) -> bool {
        match &self.recv {
            RecvSide::Multi(m) => !m.ready.is_empty(),
            RecvSide::Single(s) => s.start < s.end,
        }
    }

    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        match &mut self.recv {
            RecvSide::Multi(m) => {
                while n < buf.len() {
                    let Some(&(bid, used, len)) = m.ready.front() else {
                        break;
                    };
                    let take = (len - used).min(buf.len() - n);
                    let at = bid as usize * RECV_BUFFER_BYTES + used;
                    buf[n..n + take].copy_from_slice(&m.bufs[at..at + take]);
                    n += take;
                    if used + take == len {
                        m.ready.pop_front();
                        m.recycle(bid);
                    } else if let Some(front) = m.ready.front_mut() {
                        front.1 = used + take;
                    }
                }
            }
            RecvSide::Single(s) => {
                let take = (s.end - s.start).min(buf.len());
                buf[..take].copy_from_slice(&s.buf[s.start..s.start + take]);
                s.start += take;
                n = take;
            }
        }
        n
    }
}

/// Builds the ring: DEFER_TASKRUN (+TASKRUN_FLAG when accepted) or SQPOLL.
fn build_ring(
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
fn multishot_recv(ring: &IoUring) -> Result<MultiRecv, String> {
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

impl Transport for UringTransport {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransportError> {
        if let Some(d) = &self.send_dead {
            return Err(d.error());
        }
        if self.send.free() == 0 {
            self.round()?;
            if let Some(d) = &self.send_dead {
                return Err(d.error());
            }
        }
        let n = self.send.push(bufs);
        if n > 0 && self.send.inflight == 0 {
            self.arm_send()?;
            self.enter(0)?;
        }
        Ok(n)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        if !self.has_readable() {
            self.round()?;
        }
        if self.has_readable() {
            let n = self.copy_out(buf);
            if !self.eof && self.recv_dead.is_none() {
                self.arm_recv()?;
            }
            return Ok(n);
        }
        if let Some(d) = &self.recv_dead {
            return Err(d.error());
        }
        if self.eof {
            return Err(TransportError::Closed);
        }
        if let Some(d) = &self.send_dead {
            return Err(d.error());
        }
        Ok(0)
    }

    fn progress(&mut self) -> Result<bool, TransportError> {
        let moved = self.round()?;
        if let Some(d) = &self.send_dead {
            return Err(d.error());
        }
        Ok(moved)
    }

    fn pending_send(&self) -> usize {
        self.send.pending()
    }

    fn wait(&mut self, interest: Interest, timeout: Duration) -> Result<(), TransportError> {
        self.round()?;
        let readable = self.has_readable() || self.eof || self.recv_dead.is_some();
        let writable = self.send.free() > 0 || self.send_dead.is_some();
        let ready = match interest {
            Interest::Readable => readable,
            Interest::Writable => writable,
            Interest::Both => readable || writable,
        };
        if ready {
            return Ok(());
        }
        self.enable()?;
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(self.enter_error(e)),
        }
        self.round().map(drop)
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

impl Drop for UringTransport {
    fn drop(&mut self) {
        // 1. Flush what callers were told was sent, while the peer takes it.
        let deadline = Instant::now() + self.flush_timeout;
        while self.send.pending() > 0 && self.send_dead.is_none() && Instant::now() < deadline {
            let _ = self.arm_send();
            if self
                .wait(Interest::Writable, Duration::from_millis(10))
                .is_err()
            {
                break;
            }
        }
        // 2. Cancel the receive (and a stuck send) and wait for their
        //    completions, so the kernel is done with our buffers.
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(OP_CANCEL);
        // SAFETY: a cancel SQE references no memory.
        if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
            let _ = self.enter(0);
        }
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            let _ = self.reap();
            let recv_armed = match &self.recv {
                RecvSide::Multi(m) => m.armed,
                RecvSide::Single(s) => s.armed,
            };
            if (!recv_armed && self.send.inflight == 0) || Instant::now() >= deadline {
                break;
            }
            let ts = types::Timespec::new().nsec(1_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
        // 3. Orderly close: FIN after all bytes. The ring (first field) closes
        //    next, then the socket's last reference, then the buffers.
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

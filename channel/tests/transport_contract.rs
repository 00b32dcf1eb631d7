//! The contract every transport keeps, checked the same way for each one.
//!
//! Each check is a function over a connected pair `(a, b)` built by
//! [`pair`] from the real transport (real sockets, real rings, a real shared
//! mapping); the `#[test]` functions at the bottom run every check for every
//! transport. Transports that need something this machine may lack (io_uring,
//! an RDMA device) print `SKIP <test>: <reason>` and pass, unless
//! `FTVM_REQUIRE` names the resource, in which case the skip fails the test.
//! `rdma_sim` runs the rdma transport end to end (TCP hello, connection
//! parameters, queue pair setup, the one-sided protocol, close over TCP) with
//! only the NIC simulated (`rdma.nic = "simulated"`).

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ftvm_channel::transport::{self, Interest, Transport, TransportError};
use ftvm_tuning::{ChannelSettings, RdmaNic, TransportKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every check gives up (fails) after this long instead of hanging.
const CHECK_DEADLINE: Duration = Duration::from_secs(15);

type Pair = (Box<dyn Transport>, Box<dyn Transport>);

/// Settings for `kind` with small socket buffers, so flow control bites early.
fn settings(kind: TransportKind) -> ChannelSettings {
    ChannelSettings {
        transport: kind,
        socket_buffer_bytes: 256 << 10,
        ..ChannelSettings::default()
    }
}

/// Settings for the rdma transport over the simulated NIC.
fn sim_settings() -> ChannelSettings {
    let mut s = settings(TransportKind::Rdma);
    s.rdma.nic = RdmaNic::Simulated;
    s.rdma.recv_ring_bytes = 256 << 10;
    s
}

/// Whether `kind` can run here; `Err(reason)` when it cannot.
fn available(kind: TransportKind) -> Result<(), String> {
    match kind {
        TransportKind::Uring => transport::uring::probe_available().map_err(|e| e.to_string()),
        TransportKind::Rdma => {
            transport::rdma::probe_available(&settings(kind)).map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

/// Returns false (after printing SKIP) when the check must not run; panics
/// instead when `FTVM_REQUIRE` names the missing resource.
fn runnable(kind: TransportKind, test: &str) -> bool {
    ftvm_testkit::require_or_skip(test, kind.name(), || available(kind))
}

/// A connected pair: `a` connected, `b` accepted.
fn pair(kind: TransportKind) -> Result<Pair> {
    pair_with(settings(kind))
}

/// A connected pair over the transport `s` names.
fn pair_with(s: ChannelSettings) -> Result<Pair> {
    let kind = s.transport;
    let addr = match kind {
        TransportKind::Shm => format!("contract-{}-{}", std::process::id(), rand::random::<u32>()),
        _ => "127.0.0.1:0".to_string(),
    };
    let mut listener = transport::listen(&s, &addr).with_context(|| format!("listen {addr}"))?;
    let peer_addr = listener.local_addr();
    let connector = {
        let s = s.clone();
        thread::spawn(move || transport::connect(&s, &peer_addr))
    };
    let b = listener
        .accept(Duration::from_secs(5))?
        .context("no connection accepted within 5 s")?;
    let a = connector
        .join()
        .map_err(|_| anyhow::anyhow!("connect thread panicked"))??;
    Ok((a, b))
}

/// The byte at stream position `pos` of stream `seed` (checkable anywhere).
fn pattern(seed: u64, pos: u64) -> u8 {
    let x = (pos ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

/// One direction of a checked byte stream.
struct Stream {
    seed: u64,
    sent: u64,
    received: u64,
    total: u64,
    rng: StdRng,
    chunk: Vec<u8>,
}

impl Stream {
    fn new(seed: u64, total: u64) -> Stream {
        Stream {
            seed,
            sent: 0,
            received: 0,
            total,
            rng: StdRng::seed_from_u64(seed),
            chunk: Vec::new(),
        }
    }

    /// Offers one random-size chunk (gathered from two slices); returns bytes accepted.
    fn send_some(&mut self, t: &mut dyn Transport) -> Result<usize, TransportError> {
        let left = self.total - self.sent;
        if left == 0 {
            return Ok(0);
        }
        let max = if self.rng.random_bool(0.2) {
            65_536
        } else {
            512
        };
        let len = self.rng.random_range(1..=max).min(left as usize);
        self.chunk.clear();
        self.chunk
            .extend((0..len as u64).map(|i| pattern(self.seed, self.sent + i)));
        let split = self.rng.random_range(0..=len);
        let n = t.send(&[&self.chunk[..split], &self.chunk[split..]])?;
        assert!(n <= len, "send accepted {n} bytes of {len} offered");
        self.sent += n as u64;
        Ok(n)
    }

    /// Receives into a random-size buffer and checks every byte; returns count.
    fn recv_some(&mut self, t: &mut dyn Transport) -> Result<usize, TransportError> {
        let mut buf = vec![0u8; self.rng.random_range(1..=70_000)];
        let n = t.recv(&mut buf)?;
        for (i, &b) in buf[..n].iter().enumerate() {
            let pos = self.received + i as u64;
            assert_eq!(
                b,
                pattern(self.seed, pos),
                "byte {pos} of stream {} differs",
                self.seed
            );
        }
        self.received += n as u64;
        assert!(
            self.received <= self.total,
            "received {} > sent total {}",
            self.received,
            self.total
        );
        Ok(n)
    }
}

fn check_deadline(start: Instant, what: &str) -> Result<()> {
    if start.elapsed() > CHECK_DEADLINE {
        bail!("{what}: not done after {CHECK_DEADLINE:?}");
    }
    Ok(())
}

/// Many random-size sends both ways at once arrive in order, byte-exact.
fn streams_both_directions((mut a, mut b): Pair) -> Result<()> {
    let total = 6 << 20;
    let mut ab = Stream::new(1, total);
    let mut ba = Stream::new(2, total);
    let start = Instant::now();
    while ab.received < total || ba.received < total {
        ab.send_some(a.as_mut())?;
        ba.send_some(b.as_mut())?;
        a.progress()?;
        b.progress()?;
        ab.recv_some(b.as_mut())?;
        ba.recv_some(a.as_mut())?;
        check_deadline(start, "bidirectional stream")?;
    }
    ensure!(ab.sent == total && ba.sent == total);
    Ok(())
}

/// Dropping a sender after sends: the peer gets every byte, then `Closed`.
fn orderly_close_after_all_bytes((mut a, mut b): Pair) -> Result<()> {
    let total = 3 << 20;
    let mut s = Stream::new(3, total);
    let start = Instant::now();
    // Send everything, reading on the other side so the sender never stalls.
    while s.sent < total {
        s.send_some(a.as_mut())?;
        a.progress()?;
        s.recv_some(b.as_mut())?;
        check_deadline(start, "send before close")?;
    }
    drop(a);
    loop {
        match s.recv_some(b.as_mut()) {
            Ok(_) => {}
            Err(TransportError::Closed) => break,
            Err(e) => bail!(
                "expected Closed after {} of {total} bytes, got: {e}",
                s.received
            ),
        }
        check_deadline(start, "drain before Closed")?;
    }
    ensure!(
        s.received == total,
        "Closed after {} of {total} bytes",
        s.received
    );
    // Closed is sticky.
    ensure!(matches!(
        b.recv(&mut [0u8; 16]),
        Err(TransportError::Closed)
    ));
    Ok(())
}

/// A peer that vanishes with bytes unread: the survivor sees an error.
fn peer_drop_is_error((mut a, b): Pair) -> Result<()> {
    let mut s = Stream::new(4, u64::MAX / 2);
    // Bytes the peer will never read.
    let start = Instant::now();
    while s.sent < 64 << 10 {
        s.send_some(a.as_mut())?;
        a.progress()?;
        check_deadline(start, "send before peer drop")?;
    }
    thread::sleep(Duration::from_millis(20));
    drop(b);
    let mut buf = [0u8; 4096];
    loop {
        let r = s
            .send_some(a.as_mut())
            .and_then(|_| a.progress())
            .and_then(|_| a.recv(&mut buf));
        match r {
            Ok(_) => {}
            Err(
                TransportError::Closed | TransportError::PeerLost(_) | TransportError::Io { .. },
            ) => {
                return Ok(());
            }
            Err(e) => bail!("unexpected error kind after peer drop: {e}"),
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("no error 10 s after the peer was dropped");
        }
    }
}

/// `send` returns 0 while the peer does not read, and resumes once it does.
fn flow_control((mut a, mut b): Pair) -> Result<()> {
    let mut s = Stream::new(5, u64::MAX / 2);
    let start = Instant::now();
    // 1. Fill until send reports no room for 50 ms straight.
    let mut blocked_since: Option<Instant> = None;
    loop {
        let n = s.send_some(a.as_mut())?;
        a.progress()?;
        if n > 0 {
            blocked_since = None;
        } else if blocked_since.get_or_insert_with(Instant::now).elapsed()
            > Duration::from_millis(50)
        {
            break;
        }
        ensure!(
            s.sent < 512 << 20,
            "sent {} bytes to a peer that never reads",
            s.sent
        );
        check_deadline(start, "fill until blocked")?;
    }
    let blocked_at = s.sent;
    ensure!(blocked_at > 0, "nothing was accepted before blocking");
    ensure!(a.send(&[b"x"])? == 0, "send accepted bytes while blocked");
    // 2. The peer reads everything that was accepted.
    while s.received < blocked_at {
        s.recv_some(b.as_mut())?;
        a.progress()?;
        check_deadline(start, "drain after block")?;
    }
    // 3. The sender resumes.
    let resume_from = s.sent;
    while s.sent < resume_from + (1 << 20) {
        s.send_some(a.as_mut())?;
        a.progress()?;
        s.recv_some(b.as_mut())?;
        check_deadline(start, "resume after drain")?;
    }
    while s.received < s.sent {
        a.progress()?;
        s.recv_some(b.as_mut())?;
        check_deadline(start, "final drain")?;
    }
    Ok(())
}

/// `wait` returns within its timeout when idle, and early once bytes arrive.
fn wait_with_timeout((mut a, mut b): Pair) -> Result<()> {
    let t0 = Instant::now();
    b.wait(Interest::Readable, Duration::from_millis(50))?;
    let idle = t0.elapsed();
    ensure!(
        idle < Duration::from_secs(2),
        "idle wait(50 ms) took {idle:?}"
    );
    ensure!(b.recv(&mut [0u8; 8])? == 0, "bytes out of nowhere");

    // `a` is first driven on the sender thread: a uring transport is bound
    // to the thread that first drives it (SINGLE_ISSUER).
    let sender = thread::spawn(move || -> Result<Box<dyn Transport>> {
        let t = Instant::now();
        a.wait(Interest::Writable, Duration::from_secs(5))?;
        ensure!(
            t.elapsed() < Duration::from_secs(1),
            "fresh transport not writable"
        );
        thread::sleep(Duration::from_millis(30));
        let mut sent = 0;
        while sent == 0 {
            sent = a.send(&[b"wake"])?;
        }
        while a.pending_send() > 0 {
            a.progress()?;
        }
        Ok(a)
    });
    let t1 = Instant::now();
    let mut got = Vec::new();
    while got.len() < 4 {
        b.wait(Interest::Readable, Duration::from_secs(5))?;
        let mut buf = [0u8; 8];
        let n = b.recv(&mut buf)?;
        got.extend_from_slice(&buf[..n]);
        ensure!(
            t1.elapsed() < Duration::from_secs(5),
            "no bytes 5 s after they were sent"
        );
    }
    ensure!(got == b"wake", "received {got:?}");
    let _a = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    Ok(())
}

macro_rules! contract {
    ($kind:expr, $($name:ident => $check:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() -> Result<()> {
                if !runnable($kind, concat!(module_path!(), "::", stringify!($name))) {
                    return Ok(());
                }
                super::$check(pair($kind)?)
            }
        )*
    };
}

mod tcp {
    use super::*;
    contract!(TransportKind::Tcp,
        streams_both_directions => streams_both_directions,
        orderly_close_after_all_bytes => orderly_close_after_all_bytes,
        peer_drop_is_error => peer_drop_is_error,
        flow_control => flow_control,
        wait_with_timeout => wait_with_timeout,
    );
}

mod uring {
    use super::*;
    contract!(TransportKind::Uring,
        streams_both_directions => streams_both_directions,
        orderly_close_after_all_bytes => orderly_close_after_all_bytes,
        peer_drop_is_error => peer_drop_is_error,
        flow_control => flow_control,
        wait_with_timeout => wait_with_timeout,
    );
}

mod shm {
    use super::*;
    contract!(
        TransportKind::Shm,
        streams_both_directions => streams_both_directions,
        orderly_close_after_all_bytes => orderly_close_after_all_bytes,
        peer_drop_is_error => peer_drop_is_error,
        flow_control => flow_control,
        wait_with_timeout => wait_with_timeout,
    );
}

mod rdma {
    use super::*;
    contract!(
        TransportKind::Rdma,
        streams_both_directions => streams_both_directions,
        orderly_close_after_all_bytes => orderly_close_after_all_bytes,
        peer_drop_is_error => peer_drop_is_error,
        flow_control => flow_control,
        wait_with_timeout => wait_with_timeout,
    );
}

/// The rdma transport with the simulated NIC: runs everywhere.
mod rdma_sim {
    use super::*;

    macro_rules! sim_contract {
        ($($name:ident => $check:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() -> Result<()> {
                    super::$check(pair_with(sim_settings())?)
                }
            )*
        };
    }

    sim_contract!(
        streams_both_directions => streams_both_directions,
        orderly_close_after_all_bytes => orderly_close_after_all_bytes,
        peer_drop_is_error => peer_drop_is_error,
        flow_control => flow_control,
        wait_with_timeout => wait_with_timeout,
    );

    #[test]
    fn trailer_visibility_passes_too() -> Result<()> {
        let mut s = sim_settings();
        s.rdma.visibility = ftvm_tuning::RdmaVisibility::Trailer;
        super::streams_both_directions(pair_with(s)?)
    }
}

//! `rdma`: the channel over RDMA, an adapter of [`ftvm_rdma::Session`] to
//! [`Transport`].
//!
//! The protocol, the NIC ports and the connection setup live in `ftvm-rdma`
//! (which does not know this crate); this file maps `[rdma]` settings onto
//! [`RdmaConfig`] and session errors onto [`TransportError`]:
//!
//! | session | transport |
//! |---|---|
//! | no device, port down, built without `--features rdma`, libibverbs unusable | `Unavailable` (the message says what to do) |
//! | orderly close after the last byte | `Closed` |
//! | peer process gone (EOF), retry-exceeded, flushed | `PeerLost` |
//! | a value outside its window from the peer | `PeerLost` ("protocol violation") |
//!
//! The address is the TCP hello address `host:port` (see `ftvm_rdma::session`).
//! Readiness cannot be seen on a file descriptor: `readable_fd` is `None`
//! and [`Transport::wait`] sleeps in slices of at most 100 µs, like shm.

use std::time::Duration;

use ftvm_rdma::{RdmaConfig, Session, SessionError, SessionListener, SetupError, Visibility};
use ftvm_tuning::{ChannelSettings, RdmaNic, RdmaVisibility};

use super::{CONNECT_TIMEOUT, Interest, Listener, Transport, TransportError};

/// The session configuration `settings` (its `[rdma]` section) asks for.
pub fn config(settings: &ChannelSettings) -> RdmaConfig {
    let r = &settings.rdma;
    RdmaConfig {
        simulated: r.nic == RdmaNic::Simulated,
        device: r.device.clone(),
        port: r.port,
        gid_index: r.gid_index,
        ack_timeout: r.ack_timeout,
        retry_count: r.retry_count,
        rnr_retry: r.rnr_retry,
        traffic_class: r.traffic_class,
        service_level: r.service_level,
        recv_ring_bytes: r.recv_ring_bytes,
        sq_depth: r.sq_depth,
        rq_depth: r.rq_depth,
        signal_every: r.signal_every,
        max_inline: r.max_inline_bytes,
        visibility: match r.visibility {
            RdmaVisibility::Immediate => Visibility::Immediate,
            RdmaVisibility::Trailer => Visibility::Trailer,
        },
        completion_ack: r.completion_ack,
        connect_timeout: CONNECT_TIMEOUT,
        close_timeout: Duration::from_millis(settings.peer_timeout_ms),
    }
}

fn setup_error(e: SetupError) -> TransportError {
    match e {
        SetupError::Probe(_) | SetupError::NotBuilt { .. } | SetupError::Library { .. } => {
            TransportError::Unavailable(crate::error_chain(&e))
        }
        SetupError::Io { op, source } => TransportError::Io { op, source },
        other => TransportError::PeerLost(crate::error_chain(&other)),
    }
}

fn session_error(e: SessionError) -> TransportError {
    match e {
        SessionError::Closed => TransportError::Closed,
        SessionError::PeerLost(m) => TransportError::PeerLost(m),
        other => TransportError::PeerLost(other.to_string()),
    }
}

/// Whether the RDMA transport can run here with `settings`; the error says
/// what is missing (no device, port down, build without the feature).
pub fn probe_available(settings: &ChannelSettings) -> Result<(), TransportError> {
    ftvm_rdma::probe_available(&config(settings)).map_err(setup_error)
}

/// Connects to the rdma listener at `addr` (`host:port`).
pub fn connect(
    settings: &ChannelSettings,
    addr: &str,
) -> Result<Box<dyn Transport>, TransportError> {
    let s = ftvm_rdma::connect(addr, &config(settings)).map_err(setup_error)?;
    Ok(Box::new(RdmaTransport { s }))
}

/// Listens for rdma connections on `addr` (`host:port`).
pub fn listen(settings: &ChannelSettings, addr: &str) -> Result<Box<dyn Listener>, TransportError> {
    let l = SessionListener::bind(addr, &config(settings)).map_err(setup_error)?;
    Ok(Box::new(RdmaListener { l }))
}

/// One rdma connection.
#[derive(Debug)]
pub struct RdmaTransport {
    s: Session,
}

impl RdmaTransport {
    /// What the connection runs on (device, rings, visibility, inline limit).
    pub fn describe(&self) -> &str {
        self.s.describe()
    }
}

impl Transport for RdmaTransport {
    fn name(&self) -> &'static str {
        "rdma"
    }

    fn send(&mut self, bufs: &[&[u8]]) -> Result<usize, TransportError> {
        self.s.send(bufs).map_err(session_error)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.s.recv(buf).map_err(session_error)
    }

    fn progress(&mut self) -> Result<bool, TransportError> {
        self.s.progress().map_err(session_error)
    }

    fn wait(&mut self, interest: Interest, timeout: Duration) -> Result<(), TransportError> {
        let (r, w) = match interest {
            Interest::Readable => (true, false),
            Interest::Writable => (false, true),
            Interest::Both => (true, true),
        };
        self.s.wait(r, w, timeout).map_err(session_error)
    }

    fn peer(&self) -> String {
        self.s.peer().to_owned()
    }

    fn delivered(&self) -> Option<u64> {
        self.s.delivered()
    }
}

/// Accepts rdma connections.
#[derive(Debug)]
pub struct RdmaListener {
    l: SessionListener,
}

impl Listener for RdmaListener {
    fn accept(&mut self, timeout: Duration) -> Result<Option<Box<dyn Transport>>, TransportError> {
        Ok(self
            .l
            .accept(timeout)
            .map_err(setup_error)?
            .map(|s| Box::new(RdmaTransport { s }) as Box<dyn Transport>))
    }

    fn local_addr(&self) -> String {
        self.l.local_addr().to_owned()
    }
}

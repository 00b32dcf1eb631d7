//! Opening a NIC and making a connectable endpoint on it: the part of
//! connection setup that differs between real verbs and the simulated NIC.
//!
//! [`Nic::open`] checks, in this order, so that the first missing piece is
//! the one reported:
//!
//! 1. `rdma.nic = "simulated"`: the process-wide [`SimNic`]; done.
//! 2. sysfs ([`crate::sysfs`]): a device at all (`no RDMA device:
//!    /sys/class/infiniband is empty`), the named device and port, the port
//!    ACTIVE, the GID index present. No library is touched yet, so a build
//!    without the `rdma` feature reports the same thing.
//! 3. the `rdma` feature: without it, a clear "rebuild with --features rdma".
//! 4. libibverbs ([`crate::verbs`]): the device opens, the provider library
//!    is there, the port answers `ibv_query_port`.
//!
//! An [`Endpoint`] is one queue pair in INIT with its registered receive
//! region; [`Endpoint::connect`] takes the peer's [`ConnParams`] to RTR and
//! RTS and returns the [`OneSidedPort`] (the [`crate::Link`] started on it
//! posts the receives, before the ready byte lets the peer send).

use std::path::Path;
use std::time::Duration;

use crate::link::Visibility;
use crate::params::{ConnParams, ParamsError};
use crate::port::OneSidedPort;
use crate::sim::{SimConfig, SimConnectError, SimNic, SimQp};
use crate::sysfs::{self, ProbeError};

/// The RDMA transport's configuration (the channel maps `[rdma]` onto it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RdmaConfig {
    /// The simulated NIC instead of hardware.
    pub simulated: bool,
    /// Device name; empty: the first with an ACTIVE port.
    pub device: String,
    /// Port number.
    pub port: u8,
    /// GID index; -1: automatic ([`sysfs::PortInfo::choose_gid`]).
    pub gid_index: i32,
    /// Local ACK timeout exponent (4.096 µs × 2^n).
    pub ack_timeout: u8,
    /// Transport retries.
    pub retry_count: u8,
    /// Receiver-not-ready retries (7 = forever).
    pub rnr_retry: u8,
    /// GRH traffic class.
    pub traffic_class: u8,
    /// Service level.
    pub service_level: u8,
    /// Our receive ring's data bytes.
    pub recv_ring_bytes: usize,
    /// Send-queue depth.
    pub sq_depth: u32,
    /// Receive-queue depth.
    pub rq_depth: u32,
    /// Signal one send request in this many.
    pub signal_every: u32,
    /// Requested inline limit.
    pub max_inline: u32,
    /// Requested visibility of writes into our ring (trailer only if our
    /// queue pair places data in order).
    pub visibility: Visibility,
    /// Track delivery by completions (every post list signalled).
    pub completion_ack: bool,
    /// Bound of connection setup and of the wait for a peer's hello.
    pub connect_timeout: Duration,
    /// Bound of the drain at close.
    pub close_timeout: Duration,
}

impl Default for RdmaConfig {
    fn default() -> RdmaConfig {
        RdmaConfig {
            simulated: false,
            device: String::new(),
            port: 1,
            gid_index: -1,
            ack_timeout: 14,
            retry_count: 7,
            rnr_retry: 7,
            traffic_class: 0,
            service_level: 0,
            recv_ring_bytes: 4 << 20,
            sq_depth: 256,
            rq_depth: 256,
            signal_every: 32,
            max_inline: 128,
            visibility: Visibility::Immediate,
            completion_ack: false,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
        }
    }
}

impl RdmaConfig {
    /// The local ACK timeout of one try: 4.096 µs × 2^ack_timeout.
    pub fn ack_timeout_duration(&self) -> Duration {
        Duration::from_nanos(4096u64 << self.ack_timeout.min(31))
    }
}

/// Why the RDMA transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// sysfs says no (no device, no such port, port down, no such GID).
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A device exists but this build has no verbs.
    #[error(
        "RDMA device {device} is present, but this ftvm was built without RDMA verbs: rebuild with \
         `cargo build --release --features rdma` (needs libibverbs-dev, librdmacm-dev and clang <= 15 \
         for rdma-sys's bindgen; docs/deploy-rdma.md)"
    )]
    NotBuilt {
        /// The device found.
        device: String,
    },
    /// libibverbs is there but cannot use the device.
    #[error("libibverbs: {what}")]
    Library {
        /// What went wrong, with the device's name.
        what: String,
    },
    /// A verbs call failed.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Verbs {
        /// The call, with its arguments.
        op: String,
        /// Its errno.
        errno: i32,
    },
    /// The peer's connection parameters were refused.
    #[error("connection parameters from {peer}")]
    Params {
        /// The peer.
        peer: String,
        /// Why.
        source: ParamsError,
    },
    /// The ring protocol could not start on the connected port.
    #[error("starting the ring protocol with {peer}")]
    Start {
        /// The peer.
        peer: String,
        /// Why.
        source: crate::link::TransferError,
    },
    /// The simulated NIC could not connect.
    #[error(transparent)]
    Sim(#[from] SimConnectError),
    /// The TCP hello failed.
    #[error("{op}")]
    Io {
        /// What was being done, with the address.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A NIC to make endpoints on.
#[derive(Debug)]
pub enum Nic {
    /// The simulated NIC.
    Sim(SimNic),
    /// A verbs device.
    #[cfg(feature = "rdma")]
    Verbs(crate::verbs::Device),
}

/// One queue pair (INIT) and its region, ready to connect.
pub trait Endpoint: Send {
    /// What to tell the peer.
    fn params(&self) -> ConnParams;

    /// Connects to the peer (RTR, RTS) and returns the port.
    fn connect(self: Box<Self>, peer: &ConnParams) -> Result<Box<dyn OneSidedPort>, SetupError>;
}

impl Nic {
    /// Opens the NIC `cfg` names, checking sysfs first (module doc).
    pub fn open(cfg: &RdmaConfig) -> Result<Nic, SetupError> {
        if cfg.simulated {
            return Ok(Nic::Sim(SimNic::global().clone()));
        }
        let devices = sysfs::probe(Path::new(sysfs::SYSFS_ROOT))?;
        let (dev, port, gid) = sysfs::select(&devices, &cfg.device, cfg.port, cfg.gid_index)?;
        #[cfg(feature = "rdma")]
        {
            crate::verbs::Device::open(dev, port, gid).map(Nic::Verbs)
        }
        #[cfg(not(feature = "rdma"))]
        {
            let _ = (port, gid);
            Err(SetupError::NotBuilt {
                device: dev.name.clone(),
            })
        }
    }

    /// A new endpoint with a receive ring of `cfg.recv_ring_bytes`.
    pub fn endpoint(&self, cfg: &RdmaConfig) -> Result<Box<dyn Endpoint>, SetupError> {
        match self {
            Nic::Sim(nic) => {
                let sim = sim_config(cfg);
                let qp = nic.create_qp(sim, cfg.recv_ring_bytes);
                Ok(Box::new(SimEndpoint {
                    qp,
                    visibility: cfg.visibility,
                    capacity: cfg.recv_ring_bytes,
                    rq_depth: cfg.rq_depth,
                }))
            }
            #[cfg(feature = "rdma")]
            Nic::Verbs(dev) => dev.endpoint(cfg),
        }
    }

    /// What the transport runs on, for logs (`simulated NIC`, `mlx5_0 port 1 gid 3 (RoCE v2)`).
    pub fn describe(&self) -> String {
        match self {
            Nic::Sim(_) => "simulated NIC".to_owned(),
            #[cfg(feature = "rdma")]
            Nic::Verbs(dev) => dev.describe(),
        }
    }
}

/// The simulated queue pair for `cfg`. It reports in-order placement when
/// asked for trailer visibility, so both visibility paths can be exercised.
fn sim_config(cfg: &RdmaConfig) -> SimConfig {
    SimConfig {
        sq_depth: cfg.sq_depth,
        rq_depth: cfg.rq_depth,
        max_inline: cfg.max_inline as usize,
        data_in_order: cfg.visibility == Visibility::Trailer,
        rnr_retry: cfg.rnr_retry,
        retry_count: cfg.retry_count,
        ack_timeout: cfg.ack_timeout_duration(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        ..SimConfig::default()
    }
}

struct SimEndpoint {
    qp: SimQp,
    visibility: Visibility,
    capacity: usize,
    rq_depth: u32,
}

impl Endpoint for SimEndpoint {
    fn params(&self) -> ConnParams {
        ConnParams {
            visibility: self.visibility,
            simulated: true,
            qpn: self.qp.qpn(),
            psn: 0,
            lid: 0,
            mtu: 4096,
            gid: [0; 16],
            rkey: 0,
            rq_depth: self.rq_depth,
            region_addr: 0,
            region_len: self.qp.region_len() as u64,
            capacity: self.capacity as u64,
        }
    }

    fn connect(self: Box<Self>, peer: &ConnParams) -> Result<Box<dyn OneSidedPort>, SetupError> {
        let port = self
            .qp
            .connect(peer.qpn, peer.region_len as usize, peer.capacity as usize)?;
        Ok(Box::new(port))
    }
}

//! The settings types and their defaults.
//!
//! Field names carry their unit (`_bytes`, `_us`, `_ms`, `_mib`). Ranges and
//! key metadata live in [`crate::keys`]; this file only says what exists and
//! what it defaults to.

use serde::{Deserialize, Serialize};

/// How a polling loop waits when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Idle {
    /// Busy-poll forever (lowest latency, one core per loop).
    Spin,
    /// Spin `spin_before_yield` empty polls, then `yield_now` on every empty
    /// poll. Never sleeps: an idle loop keeps its core busy unless another
    /// thread wants it.
    SpinYield,
    /// Spin `spin_before_yield` empty polls, yield a few times, then sleep
    /// `park_us` per empty poll until work returns (lowest CPU; wake-up
    /// latency of the host). Semantics: `ftvm_ring::idle::Idler`.
    Park,
}

impl Idle {
    /// Every idle strategy, in the order the docs list them.
    pub const ALL: [Idle; 3] = [Idle::Spin, Idle::SpinYield, Idle::Park];

    /// The name used in settings and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Idle::Spin => "spin",
            Idle::SpinYield => "spin-yield",
            Idle::Park => "park",
        }
    }
}

/// Which transport carries the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    /// std TCP sockets, TCP_NODELAY, nonblocking.
    Tcp,
    /// Two one-sided rings in a shared mapping (same host).
    Shm,
    /// io_uring over TCP sockets.
    Uring,
    /// RDMA: RC queue pairs writing one-sided into the peer's ring (`[rdma]`).
    Rdma,
}

impl TransportKind {
    /// Every transport, in the order the docs list them.
    pub const ALL: [TransportKind; 4] = [
        TransportKind::Tcp,
        TransportKind::Shm,
        TransportKind::Uring,
        TransportKind::Rdma,
    ];

    /// The name used in settings and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
            TransportKind::Uring => "uring",
            TransportKind::Rdma => "rdma",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    /// A transport by its [`name`](TransportKind::name) (`--transport`).
    fn from_str(name: &str) -> Result<TransportKind, String> {
        TransportKind::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| format!("{name:?} is not a transport: choose tcp, shm, uring or rdma"))
    }
}

/// Which NIC carries `transport = "rdma"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RdmaNic {
    /// A real RDMA device through libibverbs (the `rdma` cargo feature).
    Hardware,
    /// The simulated NIC of `ftvm-rdma`: queue pairs of one process only,
    /// for tests and harness checks on machines without RDMA. Never a rack setting.
    Simulated,
}

impl RdmaNic {
    /// Every choice, in the order the docs list them.
    pub const ALL: [RdmaNic; 2] = [RdmaNic::Hardware, RdmaNic::Simulated];

    /// The name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            RdmaNic::Hardware => "hardware",
            RdmaNic::Simulated => "simulated",
        }
    }
}

/// How the RDMA transport makes written bytes visible to the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RdmaVisibility {
    /// RDMA WRITE WITH IMMEDIATE carrying the end position (works on every NIC).
    Immediate,
    /// An 8-byte trailer written after the data, polled by the reader; used
    /// only when the reader's queue pair reports in-order data placement
    /// (`ibv_query_qp_data_in_order`), else the reader falls back to immediate.
    Trailer,
}

impl RdmaVisibility {
    /// Every choice, in the order the docs list them.
    pub const ALL: [RdmaVisibility; 2] = [RdmaVisibility::Immediate, RdmaVisibility::Trailer];

    /// The name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            RdmaVisibility::Immediate => "immediate",
            RdmaVisibility::Trailer => "trailer",
        }
    }
}

/// `[rdma]`: the RDMA transport (`channel.transport = "rdma"`), see
/// `docs/deploy-rdma.md`. Stored in [`ChannelSettings::rdma`] so that the
/// channel's `transport::connect(&ChannelSettings, ..)` sees it; in TOML it
/// is a section of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaSettings {
    /// Real device or the simulated NIC.
    pub nic: RdmaNic,
    /// Device name (`mlx5_0`); empty: the first device with an ACTIVE port.
    pub device: String,
    /// Port number on the device (1-based).
    pub port: u8,
    /// GID table index; -1: the first RoCE v2 GID with an IPv4 address, else
    /// the first RoCE v2 GID, else 0 (InfiniBand).
    pub gid_index: i32,
    /// Local ACK timeout exponent: 4.096 µs × 2^ack_timeout per try.
    pub ack_timeout: u8,
    /// Transport retries before a write fails with retry-exceeded.
    pub retry_count: u8,
    /// Receiver-not-ready retries (7 = forever).
    pub rnr_retry: u8,
    /// Traffic class of the GRH (RoCE v2: DSCP << 2 | ECN).
    pub traffic_class: u8,
    /// Service level (InfiniBand SL; RoCE: the VLAN priority when no DSCP map).
    pub service_level: u8,
    /// Data bytes of this end's receive ring (power of two): what the peer
    /// may have in flight towards us.
    pub recv_ring_bytes: usize,
    /// Send-queue depth in work requests.
    pub sq_depth: u32,
    /// Receive-queue depth (receives for incoming immediates).
    pub rq_depth: u32,
    /// One send work request in this many asks for a completion.
    pub signal_every: u32,
    /// Writes up to this many bytes go inline (capped by the queue pair's `max_inline_data`).
    pub max_inline_bytes: u32,
    /// How written bytes become visible to the reader.
    pub visibility: RdmaVisibility,
    /// The RC completion of a write counts as the backup's ACK for the output rule.
    pub completion_ack: bool,
}

impl Default for RdmaSettings {
    fn default() -> Self {
        RdmaSettings {
            nic: RdmaNic::Hardware,
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
            max_inline_bytes: 128,
            visibility: RdmaVisibility::Immediate,
            completion_ack: false,
        }
    }
}

/// `[channel]`: the logging channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelSettings {
    /// Transport (`tcp`, `shm`, `uring`).
    pub transport: TransportKind,
    /// Log ring capacity in bytes (power of two).
    pub ring_bytes: usize,
    /// Flush when this many bytes are pending.
    pub batch_bytes: usize,
    /// Flush when the oldest unsent entry is this old (µs).
    pub max_delay_us: u64,
    /// Backup ACKs at least every this many entries.
    pub ack_every: u32,
    /// Backup ACKs at most this long after an unACKed entry (µs).
    pub ack_delay_us: u64,
    /// Idle direction sends a Tick this often (ms).
    pub tick_interval_ms: u64,
    /// No traffic for this long: peer lost (ms).
    pub peer_timeout_ms: u64,
    /// Idle strategy of the polling loops.
    pub idle: Idle,
    /// Empty polls spun before the first yield (`spin-yield` and `park`).
    pub spin_before_yield: u32,
    /// Sleep per empty poll once parked (`park` only) (µs).
    pub park_us: u64,
    /// Run sender and receiver on threads of their own.
    pub threaded: bool,
    /// Core for the sender / run-to-completion thread; -1: not pinned.
    pub sender_core: i32,
    /// Core for the receiver thread; -1: not pinned.
    pub receiver_core: i32,
    /// Kernel socket buffer size (SO_SNDBUF/SO_RCVBUF) in bytes.
    pub socket_buffer_bytes: usize,
    /// io_uring: kernel SQ polling thread.
    pub uring_sqpoll: bool,
    /// io_uring: submission queue entries (power of two).
    pub uring_entries: u32,
    /// Backup replay lag that slows the primary (µs).
    pub lag_limit_us: u64,
    /// The RDMA transport's settings: the `[rdma]` section (serialized there,
    /// not inside `[channel]`).
    #[serde(skip)]
    pub rdma: RdmaSettings,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            transport: TransportKind::Tcp,
            ring_bytes: 8 << 20,
            batch_bytes: 64 << 10,
            max_delay_us: 20,
            ack_every: 64,
            ack_delay_us: 50,
            tick_interval_ms: 50,
            peer_timeout_ms: 1000,
            idle: Idle::Park,
            spin_before_yield: 0,
            park_us: 50,
            threaded: false,
            sender_core: -1,
            receiver_core: -1,
            socket_buffer_bytes: 4 << 20,
            uring_sqpoll: false,
            uring_entries: 256,
            lag_limit_us: 500_000,
            rdma: RdmaSettings::default(),
        }
    }
}

/// `[vmm]`: the virtual machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmmSettings {
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Privilege level of the guest's service loop (3 or 0).
    pub guest_cpl: u8,
    /// A CHECKPOINT entry every this many exits.
    pub checkpoint_every_exits: u64,
    /// Who owns the block device's disk (`docs/devices.md`, "Block device").
    pub disk_mode: DiskMode,
}

/// How the pair shares the block device's disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMode {
    /// One disk both sides reach: reads travel in the log, writes are
    /// outputs (only the primary writes, after the backup's ACK).
    #[default]
    Shared,
    /// Each side owns a copy: writes go to the own copy at once (the backup
    /// repeats them in replay), reads come from the own copy.
    Local,
}

impl DiskMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [DiskMode; 2] = [DiskMode::Shared, DiskMode::Local];

    /// The name used in settings and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DiskMode::Shared => "shared",
            DiskMode::Local => "local",
        }
    }
}

impl std::fmt::Display for DiskMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for VmmSettings {
    fn default() -> Self {
        VmmSettings {
            mem_mib: 64,
            guest_cpl: 3,
            checkpoint_every_exits: 10_000,
            disk_mode: DiskMode::Shared,
        }
    }
}

/// All settings. In TOML and JSON: `[channel]`, `[rdma]` (held in
/// `channel.rdma`) and `[vmm]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "SettingsRepr", into = "SettingsRepr")]
pub struct Settings {
    /// The logging channel (with the RDMA transport's settings in `channel.rdma`).
    pub channel: ChannelSettings,
    /// The virtual machine.
    pub vmm: VmmSettings,
}

/// The serialized shape of [`Settings`]: one table per section.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
struct SettingsRepr {
    channel: ChannelSettings,
    rdma: RdmaSettings,
    vmm: VmmSettings,
}

impl From<SettingsRepr> for Settings {
    fn from(r: SettingsRepr) -> Settings {
        Settings {
            channel: ChannelSettings {
                rdma: r.rdma,
                ..r.channel
            },
            vmm: r.vmm,
        }
    }
}

impl From<Settings> for SettingsRepr {
    fn from(s: Settings) -> SettingsRepr {
        SettingsRepr {
            rdma: s.channel.rdma.clone(),
            channel: s.channel,
            vmm: s.vmm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TransportKind;

    #[test]
    fn transport_from_its_name() {
        for t in TransportKind::ALL {
            assert_eq!(t.name().parse::<TransportKind>(), Ok(t));
        }
        let e = "udp".parse::<TransportKind>().unwrap_err();
        assert_eq!(
            e,
            r#""udp" is not a transport: choose tcp, shm, uring or rdma"#
        );
    }
}

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
}

impl TransportKind {
    /// Every transport, in the order the docs list them.
    pub const ALL: [TransportKind; 3] =
        [TransportKind::Tcp, TransportKind::Shm, TransportKind::Uring];

    /// The name used in settings and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
            TransportKind::Uring => "uring",
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
}

impl Default for VmmSettings {
    fn default() -> Self {
        VmmSettings {
            mem_mib: 64,
            guest_cpl: 3,
            checkpoint_every_exits: 10_000,
        }
    }
}

/// All settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The logging channel.
    pub channel: ChannelSettings,
    /// The virtual machine.
    pub vmm: VmmSettings,
}

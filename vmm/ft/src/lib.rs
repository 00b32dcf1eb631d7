//! ftvm-ft: the fault-tolerant pair — the VMM's log seams implemented over
//! the logging channel, and failover (docs/ft.md, docs/failover.md).
//!
//! Contract: in record mode every log entry the VMM appends reaches the
//! backup in order; an output leaves only when the primary's driver lets it
//! — its entry ACKed under a valid ACK lease, or after this side won the
//! generation at the arbiter — never otherwise, even if the channel dies; a
//! full log ring pauses the vCPU (flow control) and a backup whose replay
//! lags more than `lag_limit_us` slows it (lag control). In replay mode the
//! VMM takes entries from the channel as they arrive and never runs ahead of
//! them; when the primary is lost the backup replays everything it received,
//! wins the next generation or stops, and goes live at the exact point its
//! log ends. Exactly one side ever wins a generation, so two sides never
//! serve at once.
//!
//! This crate sits between `ftvm-vmm` (which knows nothing of transports,
//! threads or arbiters) and `ftvm-channel` (which knows nothing of guests),
//! so each of those can be built and tested alone.
//!
//! # The main flow
//!
//! Primary ([`connect_primary`]):
//! 1. [`claim_generation`] at the arbiter: the pair runs at N;
//! 2. connect a transport, handshake (guest, argument, image digest,
//!    settings, VM name and generation in the Hello);
//! 3. the [`PrimaryDriver`] — primary end + ACK gate + the fence — runs
//!    inline (owned by the [`ChannelSink`], polled by the VM at exits and
//!    WAIT passes) or on a channel thread; the VM records into the sink and
//!    hands outputs to the [`ChannelGate`];
//! 4. backup lost: the driver races for N+1 — won: unprotected, releases
//!    everything held; lost: stops, releasing nothing;
//! 5. at stop, the VM logs its final checkpoint and flushes the sink: the
//!    driver ships everything, waits for the last ACK and says goodbye.
//!
//! Backup ([`accept_backup`]):
//! 1. accept a transport, handshake (refusing a primary whose guest,
//!    argument, image, settings or VM name differ, naming which), adopt the
//!    VM name and generation N;
//! 2. [`BackupEnd::install`]: the VM replays from a [`ChannelSource`]
//!    through a [`StandbyGate`], with a [`BackupFailover`] plan;
//! 3. primary lost: drain, race for N+1, go live ([`golive`]) or stop.
//!
//! Either side reports through [`status`] (JSON for `ftvm status`) and
//! [`metrics`] (Prometheus, docs/operations.md), both reading the same
//! counters.

pub mod breakdown;
pub mod driver;
pub mod events;
mod gate;
pub mod golive;
pub mod local;
pub mod metrics;
pub mod node;
mod pair;
pub mod rejoin;
pub mod service;
mod sink;
mod source;
pub mod spare;
mod standby;
pub mod status;

pub use driver::{
    ChannelTotals, DriverError, DriverShared, PairIdentity, PrimaryDriver, Protection,
};
pub use gate::{ChannelGate, GateCounters};
pub use golive::{BackupFailover, BackupPhase, BackupStatus, Timeline};
pub use pair::{
    BackupEnd, BackupOptions, GiveUp, PairSetupError, PrimaryEnd, PrimaryOptions, StandbyPlan,
    accept_backup, claim_generation, connect_primary,
};
pub use service::{FloatingIp, ServiceError, ServiceTakeover};
pub use sink::{ChannelSink, SinkStats, TeeSink};
pub use source::{ChannelSource, SourceStats, Stopper};
pub use standby::{MAX_KEPT_REPLIES, StandbyGate};

/// Digest of a guest image, exchanged in the hello so that a backup never
/// replays a log recorded by another guest.
pub fn image_digest(image: &[u8]) -> u64 {
    let a = crc32c::crc32c(image);
    let b = crc32c::crc32c_append(0x9E37_79B9, image);
    (u64::from(a) << 32) | u64::from(b)
}

/// Hello parameters of a VMM end: the pair settings, the guest and its
/// argument, the VM name and (primary) the generation the pair runs at.
pub fn hello(
    settings: &ftvm_tuning::Settings,
    image: &[u8],
    guest: &str,
    guest_arg: u64,
    vm: &str,
    generation: u64,
) -> ftvm_channel::HelloParams {
    ftvm_channel::HelloParams {
        image_digest: image_digest(image),
        next_seq: 1,
        generation,
        vm: vm.to_string(),
        guest: guest.to_string(),
        guest_arg,
        ..ftvm_channel::HelloParams::of_settings(settings)
    }
}

/// This process's name at the arbiter: role, host, pid and address, unique
/// per side (a retry by the same name counts as the same candidate).
pub fn candidate(role: &str, addr: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{role} {addr} on {host} pid {}", std::process::id())
}

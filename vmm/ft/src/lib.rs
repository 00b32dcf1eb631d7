//! ftvm-ft: the fault-tolerant pair — the VMM's log seams implemented over
//! the logging channel.
//!
//! Contract: in record mode every log entry the VMM appends reaches the
//! backup in order; every output is released only after the backup's ACK
//! covers its OUTPUT entry (never before, even if the channel dies: held
//! outputs then stay held); a full log ring pauses the vCPU (flow control)
//! and a backup whose replay lags more than `lag_limit_us` slows it (lag
//! control). In replay mode the VMM takes entries from the channel as they
//! arrive and never runs ahead of them.
//!
//! This crate sits between `ftvm-vmm` (which knows nothing of transports
//! or threads) and `ftvm-channel` (which knows nothing of guests), so each of
//! those can be built and tested alone.
//!
//! # The main flow
//!
//! Primary ([`primary`]):
//! 1. connect a transport, [`ftvm_channel::Primary::establish`] with the
//!    settings fingerprint and the guest [`image_digest`];
//! 2. [`gate_pair`] gives a [`ChannelGate`] (the VM's `OutputGate`)
//!    and the hook that releases held outputs on the channel thread the moment
//!    their ACK arrives; `Primary::spawn_with` runs the channel on its own core;
//! 3. the VM records into a [`ChannelSink`] (`LogSink`): entries are appended
//!    in place into the log ring; `Full` pauses the vCPU; lag control sleeps;
//! 4. at stop, the VM logs its final checkpoint; `PrimaryHandle::finish` ships
//!    everything, waits for the last ACK and says goodbye.
//!
//! Backup ([`backup`]):
//! 1. accept a transport, [`ftvm_channel::Backup::establish`] (refusing a
//!    primary whose settings or guest image differ, naming which);
//! 2. `Backup::spawn` runs the receiver on its own core, feeding a replay ring;
//! 3. the VM replays from a [`ChannelSource`] (`LogSource`), whose progress
//!    goes back to the primary in the ACKs;
//! 4. its outputs are checked against the primary's OUTPUT entries by the VMM
//!    and dropped.

mod gate;
mod inline;
pub mod local;
mod pair;
mod sink;
mod source;
pub mod status;

pub use gate::{ChannelGate, GateCounters, gate_pair};
pub use inline::{ChannelDevice, InlineEnd, InlineGate};
pub use pair::{
    BackupEnd, PairSetupError, PrimaryChannel, PrimaryEnd, accept_backup, connect_primary,
};
pub use sink::{ChannelSink, SinkStats, TeeSink};
pub use source::{ChannelSource, SourceStats};

/// Digest of a guest image, exchanged in the hello so that a backup never
/// replays a log recorded by another guest.
pub fn image_digest(image: &[u8]) -> u64 {
    let a = crc32c::crc32c(image);
    let b = crc32c::crc32c_append(0x9E37_79B9, image);
    (u64::from(a) << 32) | u64::from(b)
}

/// Hello parameters of a VMM end.
pub fn hello(settings: &ftvm_tuning::Settings, image: &[u8]) -> ftvm_channel::HelloParams {
    ftvm_channel::HelloParams {
        settings_fingerprint: settings.fingerprint(),
        image_digest: image_digest(image),
        next_seq: 1,
    }
}

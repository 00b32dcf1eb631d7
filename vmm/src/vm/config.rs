//! What a VM is built from (`VmConfig`), how it runs (`RunMode`) and what
//! a run ends with (`StopReason`, `RunOutcome`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::device::Device;
use crate::devices::console::ConsoleTarget;
use crate::error::BuildVmError;
use crate::journal::JournalStats;
use crate::log::{LogSink, LogSource};
use crate::output::{ImmediateGate, OutputGate};
use crate::payload::CheckpointRecord;

/// Everything needed to build a VM.
pub struct VmConfig {
    /// Guest name (for messages).
    pub guest: String,
    /// The flat guest image, loaded at `0x1_0000`.
    pub image: Vec<u8>,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// 3: service loop at ring 3 (IOPL 3); 0: stays at ring 0.
    pub guest_cpl: u8,
    /// A CHECKPOINT entry every this many exits (record).
    pub checkpoint_every_exits: u64,
    /// Free argument passed in the boot info (test modes, benchmark sizes).
    pub guest_arg: u64,
    /// NIC service address (vmm-net).
    pub service: Option<std::net::SocketAddr>,
    /// Block device backing file (vmm-net).
    pub disk: Option<PathBuf>,
    /// Shared disk or this side's own copy (`vmm.disk_mode`).
    pub disk_mode: crate::devices::block::DiskMode,
    /// Where console output goes.
    pub console: ConsoleTarget,
    /// Additional devices (tests, vmm-net). A device here replaces the NIC or
    /// block device the VMM would add on overlapping ports.
    pub devices: Vec<Box<dyn Device>>,
    /// The output gate (record mode).
    pub gate: Box<dyn OutputGate>,
    /// Set to stop the VM at the next exit (signal handlers).
    pub stop: Arc<AtomicBool>,
    /// Stop after this many exits (tests, benchmarks).
    pub max_exits: Option<u64>,
    /// Replay: what to do when the primary is lost (`crate::failover`);
    /// `None`: a lost primary is an error.
    pub failover: Option<Box<dyn crate::failover::Failover>>,
    /// WAIT busy-polls the devices this long before sleeping in `ppoll`
    /// (thread wake-ups cost 60-80 µs on these hosts; spinning is the only
    /// low-latency mode). 0 = sleep at once.
    pub wait_spin_us: u64,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("guest", &self.guest)
            .field("image_len", &self.image.len())
            .field("mem_mib", &self.mem_mib)
            .field("guest_cpl", &self.guest_cpl)
            .field("checkpoint_every_exits", &self.checkpoint_every_exits)
            .field("guest_arg", &self.guest_arg)
            .field("service", &self.service)
            .field("disk", &self.disk)
            .field("disk_mode", &self.disk_mode)
            .field("devices", &self.devices.len())
            .field("max_exits", &self.max_exits)
            .field("wait_spin_us", &self.wait_spin_us)
            .finish()
    }
}

impl VmConfig {
    /// The embedded guest `name` with the VMM settings.
    pub fn new(guest: &str, settings: &ftvm_tuning::VmmSettings) -> Result<VmConfig, BuildVmError> {
        let image = crate::guest_image(guest).ok_or_else(|| BuildVmError::UnknownGuest {
            name: guest.to_string(),
            known: crate::guest_names().join(", "),
        })?;
        Ok(VmConfig {
            guest: guest.to_string(),
            image: image.to_vec(),
            mem_mib: settings.mem_mib,
            guest_cpl: settings.guest_cpl,
            checkpoint_every_exits: settings.checkpoint_every_exits,
            guest_arg: 0,
            service: None,
            disk: None,
            disk_mode: settings.disk_mode,
            console: ConsoleTarget::Stdout,
            devices: Vec::new(),
            gate: Box::new(ImmediateGate),
            stop: Arc::new(AtomicBool::new(false)),
            max_exits: None,
            failover: None,
            wait_spin_us: 200,
        })
    }
}

/// Where the log goes or comes from.
pub enum RunMode {
    /// No log.
    Live,
    /// Record into a sink.
    Record(Box<dyn LogSink>),
    /// Replay from a source.
    Replay(Box<dyn LogSource>),
}

impl std::fmt::Debug for RunMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunMode::Live => "Live",
            RunMode::Record(_) => "Record",
            RunMode::Replay(_) => "Replay",
        })
    }
}

/// Why a run ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this code to the EXIT port.
    GuestExit(u32),
    /// A stop was requested (signal) or the exit limit was reached.
    Requested,
    /// Replay: the primary's final checkpoint was reached and verified.
    PrimaryStopped,
    /// Replay: the log ended without a final checkpoint.
    LogEnded,
    /// A second stop signal arrived while the guest ran without exits: the
    /// VM stopped between exits (no final checkpoint is logged; a replay of
    /// the log ends with `LogEnded`).
    Forced,
}

/// The result of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// Exit ordinal of the last exit.
    pub exits: u64,
    /// State digest at the last exit.
    pub state: CheckpointRecord,
    /// Log counters.
    pub stats: JournalStats,
    /// Checkpoints written (record) or verified (replay).
    pub checkpoints: u64,
    /// Interrupts injected.
    pub interrupts: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

//! The VM: configuration, construction, and the vCPU state machine that
//! drives exits through the devices and the record/replay engine.
//!
//! ```text
//!            +---------+  guest exit   +--------+  WAIT   +---------+
//!   start -> | Running | ------------> | Exited | ------> | Waiting |
//!            +---------+               +--------+         +---------+
//!                 ^                       |  |                 |
//!                 |      +----------+     |  | EXIT port       |
//!                 +------| ExitDone |<----+--|-----------------+
//!                        +----------+        v
//!                            | stop     +----------+      +---------+
//!                            +--------> | Stopping | ---> | Stopped |
//!                                       +----------+      +---------+
//! ```
//! `ExitDone` does the per-exit tail in a fixed order that replay repeats:
//! timer check, stop check, checkpoint, interrupt injection, and (replay) the
//! check that no entry of this exit is left.
//!
//! Files: `config` (what a VM is built from and what a run ends with),
//! `build` (`Vm::new`, the port map), `run` (the state machine above, the
//! timer), `checkpoint` (state digest, written or verified), `boundary`
//! (requests from other threads at an exit boundary), `snapshot` (the VM's
//! own state for a transfer); here: the `Vm` and its mode changes (go live,
//! attach a replay).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::device::{Device, ExitRequests};
use crate::digest::MemDigest;
pub use crate::error::{BuildVmError, VmError};
use crate::journal::{Journal, Mode};
use crate::log::{LogSink, LogSource};
use crate::memory::GuestMemory;
use crate::output::OutputGate;
use crate::vcpu::Machine;

mod boundary;
mod build;
mod checkpoint;
mod config;
mod run;
mod snapshot;

pub use boundary::{AtExit, AtExitError, ExitBoundary, VmControl};
use build::port_map;
pub use config::{RunMode, RunOutcome, StopReason, VmConfig};
use run::Timer;
pub use snapshot::{JournalPosition, TimerState};

/// A virtual machine. Field order matters: the KVM machine is dropped before
/// guest memory.
pub struct Vm {
    machine: Machine,
    devices: Vec<Box<dyn Device>>,
    port_map: Vec<Option<u8>>,
    journal: Journal,
    digest: MemDigest,
    timer: Timer,
    requests: ExitRequests,
    ordinal: u64,
    checkpoint_every: u64,
    checkpoints: u64,
    interrupts: u64,
    stop: Arc<AtomicBool>,
    interrupted_while_stopping: bool,
    /// Ports of the detached NIC/block device the VMM added for replay.
    replay_only: Vec<std::ops::RangeInclusive<u16>>,
    max_exits: Option<u64>,
    wait_spin: Duration,
    started: Instant,
    /// State transfer: identity, exit-boundary requests, dirty tracker.
    persist: boundary::PersistParts,
    mem: GuestMemory,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("mode", &self.journal.mode())
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl Vm {
    /// The mode.
    pub fn mode(&self) -> Mode {
        self.journal.mode()
    }

    /// Guest memory (for tests and tools).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Failover: turns a replaying VM that stopped with
    /// [`StopReason::LogEnded`] into a live VM (`sink = None`) or a new
    /// primary recording into `sink`; the next [`Vm::run`] continues from
    /// the exit where replay stopped. `replace` are live devices taking over
    /// ports (e.g. `Nic::new(service)` for the NIC); the detached NIC/block
    /// device the VMM added for replay are removed either way. The output
    /// gate, the timer and the clock carry over.
    pub fn go_live(
        &mut self,
        sink: Option<Box<dyn LogSink>>,
        replace: Vec<Box<dyn Device>>,
    ) -> Result<(), VmError> {
        if self.journal.mode() != Mode::Replay {
            return Err(VmError::WrongMode {
                op: "go_live",
                needs: "a replaying VM",
                mode: self.journal.mode(),
            });
        }
        let taken = |p: u16| replace.iter().any(|d| d.ports().contains(&p));
        let replay_only = std::mem::take(&mut self.replay_only);
        let mut devices: Vec<Box<dyn Device>> = std::mem::take(&mut self.devices)
            .into_iter()
            .filter(|d| !d.ports().any(taken) && !replay_only.contains(&d.ports()))
            .collect();
        devices.extend(replace);
        self.port_map = port_map(&devices)?;
        self.devices = devices;
        self.journal.go_live(sink, None);
        self.went_live();
        Ok(())
    }

    /// A spare that received a live side's state (`crate::transfer::receive`)
    /// becomes its backup: replay from `source` (the live side's log from the
    /// join exit on), outputs through `gate`, `failover` when that log ends.
    /// Needs a VM built in replay mode that has not run; the restored state
    /// (ordinal, counters, devices) stays.
    pub fn attach_replay(
        &mut self,
        source: Box<dyn LogSource>,
        gate: Box<dyn OutputGate>,
        failover: Option<Box<dyn crate::failover::Failover>>,
    ) -> Result<(), VmError> {
        if self.journal.mode() != Mode::Replay {
            return Err(VmError::WrongMode {
                op: "attach_replay",
                needs: "a VM built to replay",
                mode: self.journal.mode(),
            });
        }
        self.journal.attach(source, gate, failover);
        Ok(())
    }

    /// The VM left replay mode: ticks fall due from now on host time.
    pub(super) fn went_live(&mut self) {
        self.timer.next_due = self.timer.period.map(|p| Instant::now() + p);
    }

    /// Record: sequence number the next entry gets (entries written + 1).
    pub fn next_seq(&self) -> u64 {
        self.journal.next_seq()
    }
}

// A VM and its configuration move to the thread that runs them.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Vm>();
    send::<VmConfig>();
};

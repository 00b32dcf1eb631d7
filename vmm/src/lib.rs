//! ftvm-vmm: a KVM virtual machine with one vCPU whose every nondeterministic
//! input is recorded into a log (primary) or taken from one (backup).
//!
//! Contract: a guest run in record mode and the same guest replayed from that
//! log execute the same instructions and reach the same state digest at every
//! exit ordinal; any difference is reported as a [`Divergence`] naming the
//! exit, never papered over. Guest crashes are errors with the exit reason
//! and registers, never hangs. Guest ABI: `docs/guest-abi.md`; design:
//! `docs/vmm.md`.
//!
//! # The main flow
//!
//! 1. [`VmConfig::new`] picks an embedded guest image ([`guest_image`]) and the
//!    `vmm.*` settings; [`Vm::new`] maps guest memory, writes the GDT/TSS/page
//!    tables/boot info (`boot`), loads the image at `0x1_0000`, creates the
//!    KVM VM with a dirty-logged slot and a long-mode vCPU (`vcpu`), and
//!    registers the devices (`devices`, plus [`VmConfig::devices`]).
//! 2. [`Vm::run`] drives the vCPU state machine (`vm`): each guest-initiated
//!    exit gets the next exit ordinal and goes to the device owning the port.
//! 3. Devices obtain host values through [`ExitCtx::input`] (record: run the
//!    closure and log; replay: the logged bytes) and emit outputs through
//!    [`ExitCtx::output`] (record: OUTPUT entry + [`OutputGate`]).
//! 4. At the end of each exit the VM writes or verifies a CHECKPOINT every
//!    `checkpoint_every_exits` exits (incremental memory digest from KVM's
//!    dirty log, `digest`) and injects a due timer interrupt (logged).
//! 5. On stop (guest EXIT port, [`VmConfig::stop`], exit limit) the VM logs a
//!    final checkpoint; replay stops at it and verifies it. [`RunOutcome`]
//!    carries the state digest and counters.
//!
//! State transfer ([`persist`], [`transfer`], `docs/transfer.md`): every
//! component saves and restores through one [`persist::Persist`] trait;
//! [`Vm::control`] acts on a running VM at its next exit boundary from
//! another thread; [`transfer::send_live`] pre-copies a running VM into a
//! new one, which [`transfer::receive()`] checks and restores.
//!
//! Entries leave through a [`LogSink`] ([`LogFileWriter`] here, the logging
//! channel in `ftvm-ft`) and come back through a [`LogSource`]
//! ([`LogFileReader`]). A replaying VM with a [`Failover`] plan goes live
//! where its source reports the primary lost.

pub mod boot;
pub mod device;
pub mod devices;
pub mod digest;
pub mod dirty;
pub mod error;
pub mod event;
pub mod failover;
pub mod harness;
pub mod inspect;
pub mod journal;
pub mod layout;
pub mod log;
pub mod memory;
pub mod output;
pub mod payload;
pub mod persist;
pub mod stats;
pub mod transfer;
pub mod vcpu;
pub mod vm;

mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub use device::{Device, DeviceError, ExitCtx};
pub use devices::console::ConsoleTarget;
pub use event::{EventSource, EventSourceError, PollPoint};
pub use failover::{Failover, FailoverError, GoLive, LogEnd};
pub use harness::ExitHarness;
pub use journal::{Divergence, JournalStats, LogError, Mode};
pub use log::{
    EntryRef, LogEntry, LogFileReader, LogFileWriter, LogSink, LogSinkError, LogSource,
    LogSourceError, MemoryLog, SharedLog, SourcePoll,
};
pub use memory::{GuestMemory, GuestMemoryError, IoDesc, MemoryReader};
pub use output::{ImmediateGate, KeptOutput, OutputGate, Release};
pub use payload::{CheckpointRecord, describe_entry};
pub use stats::Counter;
pub use vm::{
    AtExit, AtExitError, BuildVmError, ExitBoundary, RunMode, RunOutcome, StopReason, Vm, VmConfig,
    VmControl, VmError,
};

/// The flat image of the embedded guest `name`.
pub fn guest_image(name: &str) -> Option<&'static [u8]> {
    guests::GUESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, image)| *image)
}

/// Names of the embedded guests.
pub fn guest_names() -> &'static [&'static str] {
    guests::NAMES
}

/// An error and its `source()` chain as one line (`outer: inner: ...`).
/// The VMM's errors keep their cause in `source()` rather than repeating it
/// in their own message.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |e| e.source());
    causes.map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

/// Whether KVM can be used here: `Err` names why not (for test skips).
pub fn kvm_available() -> Result<(), String> {
    vcpu::open_kvm().map(|_| ()).map_err(|e| e.to_string())
}

/// For tests that need KVM: true if it is usable; otherwise prints
/// `SKIP <test>: /dev/kvm not accessible (...)` and returns false — or
/// panics when `FTVM_REQUIRE` names `kvm` (see [`ftvm_testkit::require_or_skip`]).
pub fn kvm_or_skip(test: &str) -> bool {
    ftvm_testkit::require_or_skip(test, "kvm", || {
        kvm_available().map_err(|why| format!("/dev/kvm not accessible ({why})"))
    })
}

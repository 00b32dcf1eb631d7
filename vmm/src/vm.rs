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

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ftvm_wire::Kind;

use crate::boot;
use crate::device::{Device, ExitCtx, ExitRequests};
use crate::devices::console::ConsoleTarget;
use crate::digest::{MemDigest, combine, cpu_digest};
pub use crate::error::VmError;
use crate::error::exception_name;
use crate::event::PollPoint;
use crate::journal::{Divergence, Journal, JournalStats, LogError, Mode};
use crate::layout::{
    self, IMAGE_ADDR, IMAGE_END, MAX_MEM_MIB, MIN_MEM_MIB, TIMER_VECTOR, WAIT_FOREVER,
};
use crate::log::{LogSink, LogSource};
use crate::memory::GuestMemory;
use crate::output::{ImmediateGate, OutputGate};
use crate::payload::{CheckpointRecord, interrupt_payload, interrupt_vector};
use crate::vcpu::{Exit, Machine};

mod boundary;
mod snapshot;

pub use boundary::{AtExit, AtExitError, ExitBoundary, VmControl};
pub use snapshot::{JournalPosition, TimerState};

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
    pub fn new(guest: &str, settings: &ftvm_tuning::VmmSettings) -> Result<VmConfig, VmError> {
        let image = crate::guest_image(guest).ok_or_else(|| VmError::UnknownGuest {
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

/// The vCPU run state (one function per state returns the next).
#[derive(Debug)]
enum VcpuState {
    Running,
    Exited(Exit),
    Waiting(u32),
    ExitDone,
    Stopping(StopReason),
    Stopped(RunOutcome),
}

#[derive(Debug, Default)]
struct Timer {
    period: Option<Duration>,
    next_due: Option<Instant>,
    pending: bool,
}

impl Timer {
    fn program(&mut self, period_us: u32, now: Instant) {
        if period_us == 0 {
            self.period = None;
            self.next_due = None;
        } else {
            let p = Duration::from_micros(u64::from(period_us));
            self.period = Some(p);
            self.next_due = Some(now + p);
        }
    }

    /// Marks a tick pending if due; returns whether one is pending.
    fn check(&mut self, now: Instant) -> bool {
        if let (Some(p), Some(due)) = (self.period, self.next_due)
            && now >= due
        {
            self.pending = true;
            // Ticks missed while one is pending are merged.
            self.next_due = Some(if now >= due + p { now + p } else { due + p });
        }
        self.pending
    }
}

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
    /// Builds the VM: memory, tables, image, KVM objects, devices.
    pub fn new(mut config: VmConfig, mode: RunMode) -> Result<Vm, VmError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&config.mem_mib) {
            return Err(VmError::Config {
                key: "mem_mib",
                value: config.mem_mib.to_string(),
                detail: format!("must be in {MIN_MEM_MIB}..={MAX_MEM_MIB}"),
            });
        }
        if config.guest_cpl != 0 && config.guest_cpl != 3 {
            return Err(VmError::Config {
                key: "guest_cpl",
                value: config.guest_cpl.to_string(),
                detail: "must be 0 or 3".into(),
            });
        }
        if config.checkpoint_every_exits == 0 {
            return Err(VmError::Config {
                key: "checkpoint_every_exits",
                value: "0".into(),
                detail: "must be at least 1".into(),
            });
        }
        let room = IMAGE_END - IMAGE_ADDR;
        if config.image.len() as u64 > room || config.image.is_empty() {
            return Err(VmError::ImageTooLarge {
                len: config.image.len(),
                max: room,
            });
        }
        let mem = GuestMemory::new(config.mem_mib as usize * 1024 * 1024)?;
        let setup = |e: crate::memory::GuestMemoryError| VmError::DeviceSetup {
            device: "boot",
            detail: e.to_string(),
        };
        boot::write_tables(&mem, config.guest_cpl, config.guest_arg).map_err(setup)?;
        mem.write(IMAGE_ADDR, &config.image).map_err(setup)?;
        boot::write_idt(&mem, &config.image).map_err(|detail| VmError::BadImage {
            guest: config.guest.clone(),
            detail,
        })?;
        let machine = Machine::new(&mem, config.guest_cpl)?;

        let run_mode = match mode {
            RunMode::Live => Mode::Live,
            RunMode::Record(_) => Mode::Record,
            RunMode::Replay(_) => Mode::Replay,
        };
        let mut devices = crate::devices::core_devices(&config);
        // Devices given explicitly in the config win over the NIC/block
        // device the VMM would add on the same ports.
        let explicit = |p: u16| config.devices.iter().any(|d| d.ports().contains(&p));
        let mut replay_only = Vec::new();
        for d in crate::devices::extra_devices(&config, run_mode)? {
            if !d.ports().any(explicit) {
                if run_mode == Mode::Replay {
                    replay_only.push(d.ports());
                }
                devices.push(d);
            }
        }
        devices.append(&mut config.devices);
        let port_map = port_map(&devices)?;
        let mut journal = match mode {
            RunMode::Live => Journal::live(config.gate),
            RunMode::Record(sink) => Journal::record(sink, config.gate),
            RunMode::Replay(source) => Journal::replay(source, config.gate),
        };
        if let Some(plan) = config.failover {
            journal.set_failover(plan);
        }
        journal.set_stop(Arc::clone(&config.stop));
        // Baseline: hash all memory as loaded; clear both dirty bitmaps.
        let tracker = crate::dirty::DirtyTracker::new(Arc::clone(&machine.vm), &mem);
        tracker.take(crate::dirty::Consumer::DIGEST)?;
        let digest = MemDigest::new(&mem);
        let identity = snapshot::identity_of(&config.guest, &config.image, mem.size());
        let persist = boundary::PersistParts::new(identity, tracker)?;
        Ok(Vm {
            machine,
            devices,
            port_map,
            journal,
            digest,
            timer: Timer::default(),
            requests: ExitRequests::default(),
            ordinal: 0,
            checkpoint_every: config.checkpoint_every_exits,
            checkpoints: 0,
            interrupts: 0,
            stop: config.stop,
            interrupted_while_stopping: false,
            replay_only,
            max_exits: config.max_exits,
            wait_spin: Duration::from_micros(config.wait_spin_us),
            started: Instant::now(),
            persist,
            mem,
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.journal.mode()
    }

    /// Guest memory (for tests and tools).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Runs until the guest stops, a stop is requested, replay reaches the
    /// primary's last checkpoint, or an error.
    pub fn run(&mut self) -> Result<RunOutcome, VmError> {
        self.started = Instant::now();
        // Replay of a log with no entries at all: nothing to replay (and the
        // guest must not run ahead of a primary that never reached an exit).
        let mut state = match self.journal.log_drained() {
            Ok(true) => VcpuState::Stopping(StopReason::LogEnded),
            Ok(false) => VcpuState::Running,
            // A backup stopped before its primary sent anything.
            Err(LogError::StopRequested { .. }) => VcpuState::Stopping(StopReason::Requested),
            Err(source) => return Err(VmError::Log { ordinal: 0, source }),
        };
        loop {
            state = match state {
                VcpuState::Running => self.running()?,
                VcpuState::Exited(exit) => {
                    self.persist.on_exit();
                    self.exited(exit)?
                }
                VcpuState::Waiting(timeout_us) => self.waiting(timeout_us)?,
                VcpuState::ExitDone => {
                    let next = self.exit_done()?;
                    if matches!(next, VcpuState::Running) {
                        self.at_exit_boundary();
                    }
                    next
                }
                VcpuState::Stopping(reason) => self.stopping(reason)?,
                VcpuState::Stopped(outcome) => return Ok(outcome),
            };
        }
    }

    fn running(&mut self) -> Result<VcpuState, VmError> {
        loop {
            let exit = self.machine.vcpu.run()?;
            if exit.is_guest_initiated() {
                self.ordinal += 1;
                self.journal.ordinal = self.ordinal;
                return Ok(VcpuState::Exited(exit));
            }
            match exit {
                // A signal: the stop is taken at the next guest exit so that
                // the final state sits at an exit boundary replay can reach.
                // A second signal while a stop is pending (a guest computing
                // without exits) forces the stop here, between exits.
                Exit::Interrupted => {
                    // Acquire: pairs with the Release store of the stop requester.
                    if self.stop.load(Ordering::Acquire) {
                        if self.interrupted_while_stopping {
                            return Ok(VcpuState::Stopping(StopReason::Forced));
                        }
                        self.interrupted_while_stopping = true;
                    }
                    continue;
                }
                Exit::Shutdown => return Err(self.crashed("shutdown (triple fault)".into())),
                Exit::InternalError(sub) => {
                    return Err(self.crashed(format!("KVM internal error, suberror {sub}")));
                }
                Exit::FailEntry(r) => {
                    return Err(self.crashed(format!("VM entry failed, hardware reason {r:#x}")));
                }
                other => return Err(self.crashed(format!("unexpected exit {other:?}"))),
            }
        }
    }

    fn crashed(&self, reason: String) -> VmError {
        VmError::GuestCrashed {
            reason,
            ordinal: self.ordinal,
            regs: self.machine.vcpu.snapshot(),
        }
    }

    fn ctx(&mut self) -> (ExitCtx<'_>, &mut Vec<Box<dyn Device>>) {
        (
            ExitCtx {
                mem: &self.mem,
                journal: &mut self.journal,
                ordinal: self.ordinal,
                requests: &mut self.requests,
            },
            &mut self.devices,
        )
    }

    fn exited(&mut self, exit: Exit) -> Result<VcpuState, VmError> {
        self.requests = ExitRequests::default();
        self.journal.mid_exit = true;
        match exit {
            Exit::IoOut { port, data, size } => {
                let Some(i) = self.port_map[port as usize] else {
                    return Err(self.unclaimed(port, "out", size));
                };
                let ordinal = self.ordinal;
                let (mut ctx, devices) = self.ctx();
                let dev = &mut devices[i as usize];
                dev.io_out(&mut ctx, port, &data[..size])
                    .map_err(|source| VmError::Device {
                        device: dev.name(),
                        port,
                        ordinal,
                        source,
                    })?;
                self.after_requests()
            }
            Exit::IoIn { port, size } => {
                let Some(i) = self.port_map[port as usize] else {
                    return Err(self.unclaimed(port, "in", size));
                };
                let ordinal = self.ordinal;
                let mut data = [0u8; 4];
                let (mut ctx, devices) = self.ctx();
                let dev = &mut devices[i as usize];
                dev.io_in(&mut ctx, port, &mut data[..size.min(4)])
                    .map_err(|source| VmError::Device {
                        device: dev.name(),
                        port,
                        ordinal,
                        source,
                    })?;
                self.machine.vcpu.complete_in(&data[..size.min(4)]);
                self.after_requests()
            }
            Exit::Hlt => {
                let (_, if_flag) = self.machine.vcpu.interrupt_window();
                if !if_flag && self.timer.period.is_none() {
                    return Err(self.crashed("hlt with interrupts disabled".into()));
                }
                Ok(VcpuState::Waiting(WAIT_FOREVER))
            }
            Exit::MmioRead { addr, size } => Err(self.crashed(format!(
                "read of {size} bytes at gpa {addr:#x} outside guest memory (no MMIO devices)"
            ))),
            Exit::MmioWrite { addr, size } => Err(self.crashed(format!(
                "write of {size} bytes at gpa {addr:#x} outside guest memory (no MMIO devices)"
            ))),
            other => Err(self.crashed(format!("unexpected exit {other:?}"))),
        }
    }

    fn unclaimed(&self, port: u16, dir: &'static str, size: usize) -> VmError {
        VmError::UnclaimedPort {
            port,
            dir,
            size,
            ordinal: self.ordinal,
            regs: self.machine.vcpu.snapshot(),
        }
    }

    fn after_requests(&mut self) -> Result<VcpuState, VmError> {
        let r = self.requests;
        if let Some(vector) = r.fault_vector {
            return Err(self.fault(vector));
        }
        if let Some(code) = r.exit_code {
            return Ok(VcpuState::Stopping(StopReason::GuestExit(code)));
        }
        if let Some(period) = r.timer_us {
            self.timer.program(period, Instant::now());
        }
        if let Some(t) = r.wait_us {
            return Ok(VcpuState::Waiting(t));
        }
        Ok(VcpuState::ExitDone)
    }

    fn fault(&self, vector: u32) -> VmError {
        let regs = self.machine.vcpu.snapshot();
        // The runtime's stub pushed [vector, error, rip, cs, rflags, rsp, ss].
        let frame: Vec<u64> = (0..7)
            .map(|i| self.mem.read_u64(regs.rsp + 8 * i).unwrap_or(0))
            .collect();
        VmError::GuestFault {
            vector,
            name: exception_name(vector),
            error_code: frame[1],
            rip: frame[2],
            cs: frame[3],
            rflags: frame[4],
            rsp: frame[5],
            cr2: regs.cr2,
            ordinal: self.ordinal,
        }
    }

    fn poll_devices(&mut self) -> Result<bool, VmError> {
        let ordinal = self.ordinal;
        let mut delivered = false;
        let (mut ctx, devices) = self.ctx();
        for dev in devices.iter_mut() {
            delivered |= dev.poll(&mut ctx).map_err(|source| VmError::Device {
                device: dev.name(),
                port: layout::port::WAIT,
                ordinal,
                source,
            })?;
        }
        Ok(delivered)
    }

    fn waiting(&mut self, timeout_us: u32) -> Result<VcpuState, VmError> {
        if self.journal.mode() == Mode::Replay {
            // Replay: what the primary's devices delivered is in the log.
            self.poll_devices()?;
            return Ok(VcpuState::ExitDone);
        }
        let start = Instant::now();
        let deadline = (timeout_us != WAIT_FOREVER)
            .then(|| start + Duration::from_micros(u64::from(timeout_us)));
        loop {
            // Rebuilt each pass: a NIC attached at go-live brings its socket.
            let fds: Vec<RawFd> = self
                .devices
                .iter()
                .filter_map(|d| d.wait_fd())
                .chain(self.journal.wait_fd())
                .chain(std::iter::once(self.persist.wake_fd()))
                .collect();
            if self.poll_devices()? {
                break;
            }
            let ordinal = self.ordinal;
            self.journal
                .poll_events(PollPoint::Wait)
                .map_err(|source| VmError::Log { ordinal, source })?;
            let now = Instant::now();
            // Acquire pairs with the Release store of whoever requests the
            // stop (signal handler or another thread); no data rides on it.
            if self.timer.check(now)
                || deadline.is_some_and(|d| now >= d)
                || self.stop.load(Ordering::Acquire)
                || self.persist.pending()
            {
                break;
            }
            let mut until = deadline.unwrap_or(now + Duration::from_millis(100));
            if let Some(due) = self.timer.next_due {
                until = until.min(due);
            }
            if let Some(due) = self.journal.events_deadline() {
                until = until.min(due);
            }
            let left = until.saturating_duration_since(now);
            if left < Duration::from_micros(200) || now < start + self.wait_spin {
                std::hint::spin_loop();
            } else {
                sleep_on(&fds, left);
            }
        }
        Ok(VcpuState::ExitDone)
    }

    fn exit_done(&mut self) -> Result<VcpuState, VmError> {
        let ordinal = self.ordinal;
        let log = |source| VmError::Log { ordinal, source };
        self.journal.mid_exit = false;
        if self.journal.take_went_live() {
            // Went live inside this exit (failover at a cut-off exit).
            self.went_live();
        }
        if self.journal.mode() == Mode::Replay {
            // Waits for the primary's next entry; a lost primary may take
            // the VM live here, at the exit boundary.
            match self.journal.settle() {
                Ok(()) => {}
                Err(LogError::StopRequested { .. }) => {
                    return Ok(VcpuState::Stopping(StopReason::Requested));
                }
                Err(e) => return Err(log(e)),
            }
            if self.journal.take_went_live() {
                self.went_live();
            }
        }
        let mode = self.journal.mode();
        if mode != Mode::Replay {
            self.timer.check(Instant::now());
        }
        // Acquire: pairs with the Release store of the stop requester.
        if self.stop.load(Ordering::Acquire) || self.max_exits.is_some_and(|m| ordinal >= m) {
            return Ok(VcpuState::Stopping(StopReason::Requested));
        }
        if mode == Mode::Replay {
            let next_final = match self.journal.peek().map_err(log)? {
                Some(e)
                    if e.header.kind == Kind::Checkpoint && e.header.exit_ordinal == ordinal =>
                {
                    CheckpointRecord::from_bytes(&e.payload).is_some_and(|c| c.is_final)
                }
                _ => false,
            };
            if next_final {
                return Ok(VcpuState::Stopping(StopReason::PrimaryStopped));
            }
            if self
                .journal
                .next_is(Kind::Checkpoint, None, ordinal)
                .map_err(log)?
            {
                self.verify_checkpoint()?;
            }
        } else if ordinal.is_multiple_of(self.checkpoint_every) {
            self.write_checkpoint(false)?;
        }
        self.interrupt()?;
        self.journal.finish_exit(ordinal).map_err(log)?;
        self.journal.poll_events(PollPoint::Exit).map_err(log)?;
        if mode == Mode::Replay && self.journal.log_drained().map_err(log)? {
            return Ok(VcpuState::Stopping(StopReason::LogEnded));
        }
        Ok(VcpuState::Running)
    }

    fn interrupt(&mut self) -> Result<(), VmError> {
        let ordinal = self.ordinal;
        let log = |source| VmError::Log { ordinal, source };
        let (ready, if_flag) = self.machine.vcpu.interrupt_window();
        match self.journal.mode() {
            Mode::Replay => {
                if !self
                    .journal
                    .next_is(Kind::Interrupt, None, ordinal)
                    .map_err(log)?
                {
                    return Ok(());
                }
                let e = self.journal.take().expect("peeked interrupt");
                let vector = interrupt_vector(&e.payload).ok_or_else(|| {
                    log(Divergence::Entry {
                        ordinal,
                        expected: "an interrupt vector".into(),
                        found: crate::journal::describe(&e),
                    }
                    .into())
                })?;
                if !(ready && if_flag) {
                    return Err(log(Divergence::InterruptBlocked {
                        ordinal,
                        vector,
                        if_flag,
                        ready,
                    }
                    .into()));
                }
                self.machine.vcpu.inject(vector)?;
            }
            Mode::Record | Mode::Live => {
                if !(self.timer.pending && ready && if_flag) {
                    return Ok(());
                }
                self.journal
                    .append(Kind::Interrupt, ordinal, &interrupt_payload(TIMER_VECTOR))
                    .map_err(log)?;
                self.machine.vcpu.inject(TIMER_VECTOR)?;
                self.timer.pending = false;
            }
        }
        self.interrupts += 1;
        Ok(())
    }

    /// Digest of guest state now.
    fn state_digest(&mut self, is_final: bool) -> Result<CheckpointRecord, VmError> {
        // One tracker in front of KVM's log and the VMM's bitmap (`dirty.rs`).
        let dirty = self.persist.tracker.take(crate::dirty::Consumer::DIGEST)?;
        self.digest.update(&self.mem, &dirty.bits);
        let regs = self.machine.vcpu.regs()?;
        let sregs = self.machine.vcpu.sregs()?;
        let mem_digest = self.digest.value();
        let cpu = cpu_digest(&regs, &sregs);
        Ok(CheckpointRecord {
            digest: combine(mem_digest, cpu),
            mem_digest,
            cpu_digest: cpu,
            rip: regs.rip,
            is_final,
        })
    }

    fn write_checkpoint(&mut self, is_final: bool) -> Result<CheckpointRecord, VmError> {
        let ordinal = self.ordinal;
        let c = self.state_digest(is_final)?;
        self.journal
            .append(Kind::Checkpoint, ordinal, &c.to_bytes())
            .map_err(|source| VmError::Log { ordinal, source })?;
        self.checkpoints += 1;
        Ok(c)
    }

    fn verify_checkpoint(&mut self) -> Result<CheckpointRecord, VmError> {
        let ordinal = self.ordinal;
        let log = |source| VmError::Log { ordinal, source };
        let e = self
            .journal
            .expect(Kind::Checkpoint, None, ordinal, || "a checkpoint".into())
            .map_err(log)?;
        let primary = CheckpointRecord::from_bytes(&e.payload).ok_or_else(|| {
            log(Divergence::Entry {
                ordinal,
                expected: "a checkpoint record".into(),
                found: crate::journal::describe(&e),
            }
            .into())
        })?;
        let mine = self.state_digest(primary.is_final)?;
        if mine != primary {
            return Err(log(Divergence::Checkpoint {
                ordinal,
                primary,
                replay: mine,
            }
            .into()));
        }
        self.checkpoints += 1;
        Ok(mine)
    }

    fn stopping(&mut self, reason: StopReason) -> Result<VcpuState, VmError> {
        let ordinal = self.ordinal;
        let log = |source| VmError::Log { ordinal, source };
        let state = match self.journal.mode() {
            _ if reason == StopReason::Forced => self.state_digest(false)?,
            Mode::Record => self.write_checkpoint(true)?,
            Mode::Live => self.state_digest(true)?,
            Mode::Replay => match self.journal.next_is(Kind::Checkpoint, None, ordinal) {
                Ok(true) => self.verify_checkpoint()?,
                // A stop request while waiting for the primary: the state
                // here, at this exit boundary.
                Ok(false) | Err(LogError::StopRequested { .. }) => self.state_digest(false)?,
                Err(e) => return Err(log(e)),
            },
        };
        self.journal.flush().map_err(log)?;
        Ok(VcpuState::Stopped(RunOutcome {
            reason,
            exits: ordinal,
            state,
            stats: self.journal.stats,
            checkpoints: self.checkpoints,
            interrupts: self.interrupts,
            elapsed: self.started.elapsed(),
        }))
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
            return Err(VmError::DeviceSetup {
                device: "vm",
                detail: format!(
                    "go_live needs a replaying VM, this one is {:?}",
                    self.journal.mode()
                ),
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
            return Err(VmError::DeviceSetup {
                device: "vm",
                detail: format!(
                    "attach_replay needs a VM built to replay, this one is {:?}",
                    self.journal.mode()
                ),
            });
        }
        self.journal.attach(source, gate, failover);
        Ok(())
    }

    /// The VM left replay mode: ticks fall due from now on host time.
    fn went_live(&mut self) {
        self.timer.next_due = self.timer.period.map(|p| Instant::now() + p);
    }

    /// Record: sequence number the next entry gets (entries written + 1).
    pub fn next_seq(&self) -> u64 {
        self.journal.next_seq()
    }
}

/// Which device owns each port; two devices on one port is an error.
fn port_map(devices: &[Box<dyn Device>]) -> Result<Vec<Option<u8>>, VmError> {
    if devices.len() > usize::from(u8::MAX) {
        return Err(VmError::DeviceSetup {
            device: "vm",
            detail: format!("{} devices (at most {})", devices.len(), u8::MAX),
        });
    }
    let mut map: Vec<Option<u8>> = vec![None; 65536];
    for (i, d) in devices.iter().enumerate() {
        for p in d.ports() {
            if let Some(j) = map[p as usize] {
                return Err(VmError::PortConflict {
                    port: p,
                    first: devices[j as usize].name(),
                    second: d.name(),
                });
            }
            map[p as usize] = Some(i as u8);
        }
    }
    Ok(map)
}

/// Sleeps until one of `fds` is readable or `left` passes (or a signal).
fn sleep_on(fds: &[RawFd], left: Duration) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: left.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
    };
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures and
    // `ts` a valid timespec, both alive for the call; a null sigmask keeps
    // the thread's mask. The result only ends the sleep early.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}

// A VM and its configuration move to the thread that runs them.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Vm>();
    send::<VmConfig>();
};

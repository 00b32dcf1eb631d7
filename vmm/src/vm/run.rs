//! The vCPU state machine (module doc of `vm`): one function per state
//! returns the next; the timer; sleeping in WAIT.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx, ExitRequests};
use crate::error::exception_name;
use crate::error::{CrashReason, VmError};
use crate::event::PollPoint;
use crate::journal::{Divergence, LogError, Mode};
use crate::layout::{self, TIMER_VECTOR, WAIT_FOREVER};
use crate::payload::{CheckpointRecord, interrupt_payload, interrupt_vector};
use crate::vcpu::Exit;

use super::Vm;
use super::config::{RunOutcome, StopReason};

/// A device's failure on `port` at exit `ordinal`.
fn device_failed(
    device: &'static str,
    port: u16,
    ordinal: u64,
) -> impl FnOnce(DeviceError) -> VmError {
    move |source| VmError::Device {
        device,
        port,
        ordinal,
        source,
    }
}

/// The vCPU run state (one function per state returns the next).
#[derive(Debug)]
pub(super) enum VcpuState {
    Running,
    Exited(Exit),
    Waiting(u32),
    ExitDone,
    Stopping(StopReason),
    Stopped(RunOutcome),
}

#[derive(Debug, Default)]
pub(super) struct Timer {
    pub(super) period: Option<Duration>,
    pub(super) next_due: Option<Instant>,
    pub(super) pending: bool,
}

impl Timer {
    pub(super) fn program(&mut self, period_us: u32, now: Instant) {
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
    pub(super) fn check(&mut self, now: Instant) -> bool {
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

impl Vm {
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
                VcpuState::Exited(exit) => self.exited(exit)?,
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

    pub(super) fn running(&mut self) -> Result<VcpuState, VmError> {
        loop {
            let mut unclaimed = false;
            // An `in` is answered inside its exit (`Vcpu::run`): the start
            // of every guest exit (ordinal, stamp, fresh requests), then the
            // device, all while KVM lends the data buffer.
            let exit = self.machine.vcpu.run(|port, data| {
                self.ordinal += 1;
                self.journal.ordinal = self.ordinal;
                self.persist.on_exit();
                self.requests = ExitRequests::default();
                self.journal.mid_exit = true;
                let Some(i) = self.port_map[port as usize] else {
                    unclaimed = true;
                    return Ok(());
                };
                let ordinal = self.ordinal;
                let mut ctx = ExitCtx {
                    mem: &self.mem,
                    journal: &mut self.journal,
                    ordinal,
                    requests: &mut self.requests,
                };
                let dev = &mut self.devices[i as usize];
                let n = data.len().min(4);
                dev.io_in(&mut ctx, port, &mut data[..n])
                    .map_err(device_failed(dev.name(), port, ordinal))
            })?;
            if let Exit::IoIn { port, size } = exit {
                if unclaimed {
                    return Err(self.unclaimed(port, "in", size));
                }
                return Ok(VcpuState::Exited(exit));
            }
            if exit.is_guest_initiated() {
                self.ordinal += 1;
                self.journal.ordinal = self.ordinal;
                self.persist.on_exit();
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
                Exit::Shutdown => return Err(self.crashed(CrashReason::Shutdown)),
                Exit::InternalError(sub) => {
                    return Err(self.crashed(CrashReason::KvmInternal { suberror: sub }));
                }
                Exit::FailEntry(r) => {
                    return Err(self.crashed(CrashReason::FailEntry { reason: r }));
                }
                other => {
                    return Err(self.crashed(CrashReason::UnexpectedExit(format!("{other:?}"))));
                }
            }
        }
    }

    pub(super) fn crashed(&self, reason: CrashReason) -> VmError {
        VmError::GuestCrashed {
            reason: Box::new(reason),
            ordinal: self.ordinal,
            regs: self.machine.vcpu.snapshot(),
        }
    }

    pub(super) fn ctx(&mut self) -> (ExitCtx<'_>, &mut Vec<Box<dyn Device>>) {
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

    pub(super) fn exited(&mut self, exit: Exit) -> Result<VcpuState, VmError> {
        if let Exit::IoIn { .. } = exit {
            // Answered inside the exit (`running`): its requests are in.
            return self.after_requests();
        }
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
                    .map_err(device_failed(dev.name(), port, ordinal))?;
                self.after_requests()
            }
            Exit::Hlt => {
                let (_, if_flag) = self.machine.vcpu.interrupt_window();
                if !if_flag && self.timer.period.is_none() {
                    return Err(self.crashed(CrashReason::HltWithInterruptsOff));
                }
                Ok(VcpuState::Waiting(WAIT_FOREVER))
            }
            Exit::MmioRead { addr, size } => Err(self.crashed(CrashReason::Mmio {
                dir: "read",
                size,
                gpa: addr,
            })),
            Exit::MmioWrite { addr, size } => Err(self.crashed(CrashReason::Mmio {
                dir: "write",
                size,
                gpa: addr,
            })),
            other => Err(self.crashed(CrashReason::UnexpectedExit(format!("{other:?}")))),
        }
    }

    pub(super) fn unclaimed(&self, port: u16, dir: &'static str, size: usize) -> VmError {
        VmError::UnclaimedPort {
            port,
            dir,
            size,
            ordinal: self.ordinal,
            regs: self.machine.vcpu.snapshot(),
        }
    }

    pub(super) fn after_requests(&mut self) -> Result<VcpuState, VmError> {
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

    pub(super) fn fault(&self, vector: u32) -> VmError {
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

    pub(super) fn poll_devices(&mut self) -> Result<bool, VmError> {
        let ordinal = self.ordinal;
        let mut delivered = false;
        let (mut ctx, devices) = self.ctx();
        for dev in devices.iter_mut() {
            delivered |= (dev.poll(&mut ctx)).map_err(device_failed(
                dev.name(),
                layout::port::WAIT,
                ordinal,
            ))?;
        }
        Ok(delivered)
    }

    pub(super) fn waiting(&mut self, timeout_us: u32) -> Result<VcpuState, VmError> {
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

    pub(super) fn exit_done(&mut self) -> Result<VcpuState, VmError> {
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
                    CheckpointRecord::from_bytes(e.payload).is_some_and(|c| c.is_final)
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

    pub(super) fn interrupt(&mut self) -> Result<(), VmError> {
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
                let e = self.journal.peek().map_err(log)?.expect("peeked interrupt");
                let vector = interrupt_vector(e.payload).ok_or_else(|| {
                    log(Divergence::Entry {
                        ordinal,
                        expected: "an interrupt vector".into(),
                        found: crate::journal::describe(&e),
                    }
                    .into())
                })?;
                self.journal.consume();
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

    pub(super) fn stopping(&mut self, reason: StopReason) -> Result<VcpuState, VmError> {
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

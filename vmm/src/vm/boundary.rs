//! Acting on a running VM from another thread at an exit boundary.
//!
//! An *exit boundary* is the point between `ExitDone` and the next
//! `Running` of the vCPU state machine (`vm.rs`): the exit is fully handled
//! (its entries logged or replayed, checkpoint and interrupt done) and the
//! guest has not resumed. Saved state, the join digest and the first entry
//! of a new log all refer to such a point.
//!
//! 1. [`crate::Vm::control`] hands out a [`VmControl`] (`Send + Clone`).
//! 2. [`VmControl::at_next_exit`] queues a request and wakes the vCPU if it
//!    sleeps in the WAIT port (an eventfd in the WAIT's `ppoll` set; the
//!    wait then ends early, which the guest ABI allows and replay repeats:
//!    a WAIT's outcome is whatever the log says it delivered).
//! 3. At the next boundary the vCPU thread runs every queued request, in
//!    order, with an [`ExitBoundary`]: save, digest, memory, start a log.
//!    A request queued by a request runs at the boundary after.
//! 4. Requests still queued when the [`crate::Vm`] is dropped are dropped:
//!    [`AtExit::wait`] then reports that the VM is gone.
//!
//! A guest that computes without exits delays its requests until its next
//! exit (there is no boundary to act on in between).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Vm;
use crate::dirty::DirtyTracker;
use crate::journal::Mode;
use crate::log::LogSink;
use crate::memory::{GuestMemory, MemoryReader};
use crate::payload::CheckpointRecord;
use crate::persist::{Identity, Persist, PersistError, VmSnapshot, VmState};
use crate::vm::VmError;

type Request = Box<dyn FnOnce(&mut ExitBoundary<'_>) + Send>;

/// What the vCPU thread and the control handles share.
struct Shared {
    /// A request is queued (checked at every boundary and WAIT pass).
    pending: AtomicBool,
    /// Note the time of every guest exit (pause measurement).
    stamps: AtomicBool,
    queue: Mutex<Vec<Request>>,
    /// Readable while a request is pending: wakes the WAIT's `ppoll`.
    wake: OwnedFd,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            // Relaxed: a diagnostic read.
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        // A request that panicked cannot leave the Vec itself inconsistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: `wake` is an eventfd owned by `self`; writing 8 bytes from
        // a valid buffer is its protocol. A full counter (EAGAIN) already
        // means "readable", so the result does not matter.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    fn drain_wake(&self) {
        let mut v = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid buffer from our nonblocking
        // eventfd; EAGAIN (already drained) is fine.
        unsafe { libc::read(self.wake.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    }
}

/// The VM's state-transfer parts: who it is, its requests, its dirty tracker.
#[derive(Debug)]
pub(crate) struct PersistParts {
    pub(crate) identity: Identity,
    shared: Arc<Shared>,
    pub(crate) tracker: DirtyTracker,
    /// When the last guest exit happened (while stamps are on).
    last_exit: Option<Instant>,
    /// Who wants the time of the next guest exit.
    next_exit: Option<mpsc::SyncSender<Instant>>,
}

impl PersistParts {
    pub(crate) fn new(
        identity: Identity,
        tracker: DirtyTracker,
    ) -> Result<PersistParts, crate::error::BuildVmError> {
        crate::vcpu::probe_host();
        // SAFETY: eventfd has no memory preconditions; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(crate::error::BuildVmError::BoundaryEventFd(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a new descriptor owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PersistParts {
            identity,
            shared: Arc::new(Shared {
                pending: AtomicBool::new(false),
                stamps: AtomicBool::new(false),
                queue: Mutex::new(Vec::new()),
                wake,
            }),
            tracker,
            last_exit: None,
            next_exit: None,
        })
    }

    /// Called by the run loop right after `KVM_RUN` returned a guest exit.
    pub(crate) fn on_exit(&mut self) {
        // Relaxed: a hint; no data rides on it (the time is taken here).
        if self.shared.stamps.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.last_exit = Some(now);
            if let Some(tx) = self.next_exit.take() {
                // The waiter may have given up.
                let _ = tx.send(now);
            }
        }
    }

    /// Whether a request waits for the next boundary.
    pub(crate) fn pending(&self) -> bool {
        // Acquire: pairs with the Release store in `VmControl::at_next_exit`
        // (the queued request is visible to the lock taken after).
        self.shared.pending.load(Ordering::Acquire)
    }

    /// The fd the WAIT port adds to its `ppoll` set.
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    fn take_requests(&self) -> Vec<Request> {
        let mut q = self.shared.queue();
        // Relaxed: the lock orders it with the pushes; a push after this
        // sets the flag again.
        self.shared.pending.store(false, Ordering::Relaxed);
        self.shared.drain_wake();
        std::mem::take(&mut *q)
    }

    fn cancel(&self) {
        let dropped = self.take_requests();
        drop(dropped);
    }
}

impl Vm {
    /// A handle to act on this VM at its next exit boundary from any thread
    /// (module doc); it also reads guest memory and the dirty log while the
    /// guest runs (pre-copy).
    pub fn control(&self) -> VmControl {
        VmControl {
            shared: Arc::clone(&self.persist.shared),
            tracker: self.persist.tracker.clone(),
            memory: self.mem.reader(),
            identity: self.persist.identity.clone(),
            disk: self.local_disk(),
        }
    }

    /// Step 3 of the module doc: runs the queued requests if the next state
    /// resumes the guest.
    pub(super) fn at_exit_boundary(&mut self) {
        if !self.persist.pending() {
            return;
        }
        for request in self.persist.take_requests() {
            let mut b = ExitBoundary {
                vm: self,
                io_completed: false,
            };
            request(&mut b);
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Step 4: waiters learn that no boundary will come.
        self.persist.cancel();
    }
}

/// Waiting for a request's result failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AtExitError {
    /// No exit boundary within the time limit (a guest computing without
    /// exits, or a VM not running).
    #[error("the VM reached no exit boundary within {waited:?}")]
    Timeout {
        /// How long it was waited for.
        waited: Duration,
    },
    /// The VM was dropped before the request ran.
    #[error("the VM stopped before reaching an exit boundary")]
    VmGone,
}

/// The result of a request, once it ran.
#[derive(Debug)]
pub struct AtExit<T> {
    rx: mpsc::Receiver<T>,
}

impl<T> AtExit<T> {
    /// Waits up to `limit` for the request to run.
    pub fn wait(&self, limit: Duration) -> Result<T, AtExitError> {
        self.rx.recv_timeout(limit).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => AtExitError::Timeout { waited: limit },
            mpsc::RecvTimeoutError::Disconnected => AtExitError::VmGone,
        })
    }
}

/// A handle on a VM for other threads (`Send + Clone`).
#[derive(Clone)]
pub struct VmControl {
    shared: Arc<Shared>,
    tracker: DirtyTracker,
    memory: MemoryReader,
    identity: Identity,
    disk: Option<crate::devices::block::LocalDisk>,
}

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmControl")
            .field("guest", &self.identity.guest)
            .finish()
    }
}

impl VmControl {
    /// Runs `f` on the vCPU thread at the next exit boundary (module doc).
    pub fn at_next_exit(&self, f: impl FnOnce(&mut ExitBoundary<'_>) + Send + 'static) {
        self.shared.queue().push(Box::new(f));
        // Release: publishes the push; pairs with the Acquire load in
        // `PersistParts::pending` on the vCPU thread.
        self.shared.pending.store(true, Ordering::Release);
        self.shared.signal();
    }

    /// Like [`VmControl::at_next_exit`], returning `f`'s result.
    pub fn call_at_next_exit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ExitBoundary<'_>) -> T + Send + 'static,
    ) -> AtExit<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.at_next_exit(move |b| {
            // The waiter may have given up: nothing to do then.
            let _ = tx.send(f(b));
        });
        AtExit { rx }
    }

    /// Notes the time of each guest exit from now on (or stops): see
    /// [`ExitBoundary::last_exit_at`]. Costs one clock read per exit.
    pub fn stamp_exits(&self, on: bool) {
        // Relaxed: a hint read at each exit; the stamps themselves travel
        // through the boundary (same thread) and a channel.
        self.shared.stamps.store(on, Ordering::Relaxed);
    }

    /// The VM's dirty tracker (pre-copy subscribes here).
    pub fn tracker(&self) -> &DirtyTracker {
        &self.tracker
    }

    /// Reads guest memory while the guest runs.
    pub fn memory(&self) -> &MemoryReader {
        &self.memory
    }

    /// Guest, image and memory size of the VM.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The VM's local disk copy (`vmm.disk_mode = local`), which a live
    /// transfer copies; `None` with a shared disk or none.
    pub fn local_disk(&self) -> Option<&crate::devices::block::LocalDisk> {
        self.disk.as_ref()
    }
}

/// The VM at an exit boundary, as a request sees it.
pub struct ExitBoundary<'a> {
    vm: &'a mut Vm,
    io_completed: bool,
}

impl std::fmt::Debug for ExitBoundary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitBoundary")
            .field("ordinal", &self.vm.ordinal)
            .finish()
    }
}

impl ExitBoundary<'_> {
    /// Exit ordinal of the exit just handled.
    pub fn ordinal(&self) -> u64 {
        self.vm.ordinal
    }

    /// The VM's mode.
    pub fn mode(&self) -> Mode {
        self.vm.journal.mode()
    }

    /// Guest memory (stable: the guest is not running).
    pub fn memory(&self) -> &GuestMemory {
        &self.vm.mem
    }

    /// The dirty tracker.
    pub fn tracker(&self) -> &DirtyTracker {
        &self.vm.persist.tracker
    }

    /// When the exit just handled left the guest (`KVM_RUN` returned), if
    /// [`VmControl::stamp_exits`] is on.
    pub fn last_exit_at(&self) -> Option<Instant> {
        self.vm.persist.last_exit
    }

    /// The time of the next guest exit after this boundary (stamps on):
    /// with [`ExitBoundary::last_exit_at`], the pause the guest saw.
    pub fn next_exit_at(&mut self) -> mpsc::Receiver<Instant> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.vm.persist.next_exit = Some(tx);
        rx
    }

    /// Record: sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.vm.journal.next_seq()
    }

    fn complete_io(&mut self) -> Result<(), PersistError> {
        if !self.io_completed {
            self.vm
                .machine
                .vcpu
                .complete_pending_io()
                .map_err(|e| PersistError::save("vcpu", "pending_io", crate::error_chain(&e)))?;
            self.io_completed = true;
        }
        Ok(())
    }

    /// The state digest the guest resumes from (memory ⊕ vCPU): the join
    /// digest of a transfer.
    pub fn state_digest(&mut self) -> Result<CheckpointRecord, PersistError> {
        self.complete_io()?;
        self.vm
            .state_digest(false)
            .map_err(|e| PersistError::save("vm", "digest", crate::error_chain(&e)))
    }

    /// Every component's state (guest memory aside), after completing the
    /// exit's port I/O (`vcpu/persist.rs`).
    pub fn save(&mut self) -> Result<VmState, PersistError> {
        self.complete_io()?;
        self.vm.save_state()
    }

    /// The whole VM: [`ExitBoundary::save`], guest memory, and the state
    /// digest a restored VM must reproduce.
    pub fn snapshot(&mut self) -> Result<VmSnapshot, PersistError> {
        let state = self.save()?;
        let memory = <&GuestMemory>::save(&&self.vm.mem)?;
        let digest = self.state_digest()?;
        Ok(VmSnapshot {
            state,
            memory,
            digest,
        })
    }

    /// Starts logging at this boundary: the VM records into `sink` from the
    /// next exit on (seq from 1). Live or record mode only (a replaying VM
    /// goes live through [`Vm::go_live`]).
    pub fn record_into(&mut self, sink: Box<dyn LogSink>) -> Result<(), VmError> {
        match self.vm.journal.mode() {
            Mode::Live | Mode::Record => {
                self.vm.journal.switch(Some(sink));
                Ok(())
            }
            Mode::Replay => Err(VmError::WrongMode {
                op: "record_into",
                needs: "a live or recording VM",
                mode: Mode::Replay,
            }),
        }
    }
}

// The handle crosses threads; the boundary stays on the vCPU thread.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<VmControl>();
};

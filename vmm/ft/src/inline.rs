//! The primary's channel driven **inline**, by the vCPU thread itself — the
//! run-to-completion mode of ARCHITECTURE.md ("one pinned thread per side can
//! drive everything through a poll() loop").
//!
//! * The sink ships an OUTPUT entry the moment it is appended (no hand-off
//!   to another thread), and drains the ring itself when it is full.
//! * A [`ChannelDevice`] sits in the VM: every pass of the guest's WAIT exit
//!   polls the primary end (ACKs, ticks, liveness) and releases the outputs
//!   whose ACK arrived; its `wait_fd` (the TCP socket) joins the wait's
//!   `ppoll`, so an ACK wakes the vCPU thread directly. Transports without a
//!   readiness fd (shm, io_uring) cannot wake a sleeping vCPU, so they always
//!   get the channel thread (measured: an shm pair run inline stalled each
//!   reply until the guest's 100 ms wait deadline whenever the ACK missed the
//!   wait's 200 µs spin).
//!
//! The cost: between exits (guest code running) nobody polls the channel.
//! Guests that compute long stretches without exits should use the threaded
//! mode (`channel.threaded = true`).

use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ftvm_channel::{ChannelError, OutputGate as SeqGate, Primary, PrimaryShared, PrimaryStats};
use ftvm_vmm::device::{Device, DeviceError, ExitCtx};
use ftvm_vmm::{OutputGate, Release};
use ftvm_wire::Kind;

use crate::gate::GateCounters;

/// A port no guest can reach (ring-3 guests get ports 0x00-0x7f through the
/// TSS I/O bitmap): the channel device owns it only to be a device.
const CHANNEL_PORT: u16 = 0xfff0;

/// The primary end and its held outputs, shared by sink, gate and device
/// (all on the vCPU thread; the mutex is never contended).
pub(crate) struct Inline {
    primary: Option<Primary>,
    gate: SeqGate<Release>,
    shared: Arc<PrimaryShared>,
    counters: Arc<GateCounters>,
    error: Option<ChannelError>,
}

impl std::fmt::Debug for Inline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inline")
            .field("primary", &self.primary)
            .field("held", &self.gate.held())
            .field("error", &self.error)
            .finish()
    }
}

/// Handle to the shared inline state.
pub(crate) type InlineShared = Arc<Mutex<Inline>>;

pub(crate) fn lock(s: &InlineShared) -> MutexGuard<'_, Inline> {
    // A panic while holding the lock aborts the process (panic = abort);
    // in tests the state is still consistent enough to report.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inline {
    pub(crate) fn new(
        primary: Primary,
        shared: Arc<PrimaryShared>,
        counters: Arc<GateCounters>,
    ) -> Inline {
        shared.publish(&primary);
        Inline {
            primary: Some(primary),
            gate: SeqGate::new(),
            shared,
            counters,
            error: None,
        }
    }

    /// One round: poll the primary end, publish its positions, release the
    /// outputs the ACK now covers. Returns the work done.
    pub(crate) fn pump(&mut self) -> usize {
        let Some(p) = self.primary.as_mut() else {
            return 0;
        };
        if self.error.is_some() {
            return 0;
        }
        match p.poll() {
            Ok(work) => {
                self.shared.publish(p);
                let n = self
                    .gate
                    .release(self.shared.acked_seq(), |_, release| release());
                if n > 0 {
                    // Relaxed: reporting counter.
                    self.counters
                        .released
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                work + n
            }
            Err(e) => {
                // Held outputs stay held: never released without their ACK.
                self.error = Some(e);
                self.shared.set_stopped();
                0
            }
        }
    }

    fn hold(&mut self, seq: u64, release: Release) {
        // Relaxed: reporting counter.
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        // The VMM submits outputs in seq order; a violation would be a VMM
        // bug, and such an output is dropped unreleased (never released early).
        let _ = self.gate.hold(seq, release);
    }
}

/// The VM's output gate in inline mode.
#[derive(Debug)]
pub struct InlineGate(pub(crate) InlineShared);

impl OutputGate for InlineGate {
    fn submit(&mut self, seq: Option<u64>, _kind: Kind, release: Release) {
        match seq {
            None => release(),
            Some(seq) => lock(&self.0).hold(seq, release),
        }
    }
}

/// The device that drives the channel from the guest's WAIT exits.
#[derive(Debug)]
pub struct ChannelDevice {
    inline: InlineShared,
    fd: Option<RawFd>,
}

impl ChannelDevice {
    pub(crate) fn new(inline: InlineShared) -> ChannelDevice {
        let fd = lock(&inline)
            .primary
            .as_ref()
            .and_then(Primary::readable_fd);
        ChannelDevice { inline, fd }
    }
}

impl Device for ChannelDevice {
    fn name(&self) -> &'static str {
        "channel"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        CHANNEL_PORT..=CHANNEL_PORT
    }

    fn io_out(
        &mut self,
        _ctx: &mut ExitCtx<'_>,
        port: u16,
        data: &[u8],
    ) -> Result<(), DeviceError> {
        Err(DeviceError::Unsupported {
            port,
            dir: "out",
            size: data.len(),
        })
    }

    fn poll(&mut self, _ctx: &mut ExitCtx<'_>) -> Result<bool, DeviceError> {
        lock(&self.inline).pump();
        // Nothing is delivered to the guest: its wait goes on.
        Ok(false)
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.fd
    }
}

/// The inline channel after the VM stopped: finish it to ship the rest.
#[derive(Debug)]
pub struct InlineEnd(pub(crate) InlineShared);

impl InlineEnd {
    /// The channel's error, if it failed while the VM ran.
    pub fn take_error(&self) -> Option<ChannelError> {
        lock(&self.0).error.take()
    }

    /// Ships every entry, waits up to `timeout` for the ACK covering the
    /// last one, says goodbye, then releases the outputs still held (all of
    /// them are ACKed once `finish` succeeded).
    pub fn finish(self, timeout: Duration) -> Result<PrimaryStats, ChannelError> {
        let mut g = lock(&self.0);
        if let Some(e) = g.error.take() {
            return Err(e);
        }
        let Some(p) = g.primary.take() else {
            return Err(ChannelError::Protocol {
                peer: String::new(),
                what: "the inline channel was already finished".into(),
            });
        };
        let stats = p.finish(timeout)?;
        // `finish` returned Ok: the backup ACKed every entry sent, and every
        // held output's entry was sent.
        let n = g.gate.release(u64::MAX, |_, release| release());
        g.counters.released.fetch_add(n as u64, Ordering::Relaxed);
        Ok(stats)
    }
}

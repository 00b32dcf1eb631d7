//! The output rule for the VM: outputs wait in the channel thread's gate and
//! leave the moment the backup's ACK covers their OUTPUT entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender};
use ftvm_channel::{AckHook, OutputGate as SeqGate, PrimaryShared};
use ftvm_vmm::{OutputGate, Release};
use ftvm_wire::Kind;

/// Counters of held and released outputs (read by the status endpoint).
#[derive(Debug, Default)]
pub struct GateCounters {
    /// Outputs submitted in record mode.
    pub submitted: AtomicU64,
    /// Outputs released after their ACK.
    pub released: AtomicU64,
}

impl GateCounters {
    /// Outputs waiting for an ACK now.
    pub fn held(&self) -> u64 {
        // Relaxed: approximate reporting counters.
        self.submitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.released.load(Ordering::Relaxed))
    }
}

/// An output on its way to the gate: its OUTPUT entry's seq and its release.
type Held = (u64, Release);

/// The VM's side of the gate: hands each output to the channel thread.
pub struct ChannelGate {
    tx: Sender<Held>,
    counters: Arc<GateCounters>,
}

impl std::fmt::Debug for ChannelGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelGate")
            .field("held", &self.counters.held())
            .finish()
    }
}

impl OutputGate for ChannelGate {
    fn submit(&mut self, seq: Option<u64>, _kind: Kind, release: Release) {
        match seq {
            // Live mode: nothing to wait for.
            None => release(),
            Some(seq) => {
                self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                // The receiver lives as long as the channel thread; if that
                // thread is gone the output stays held forever — never released
                // without its ACK.
                let _ = self.tx.send((seq, release));
            }
        }
    }
}

/// Builds the gate pair: the VM's [`ChannelGate`], the [`AckHook`] the
/// channel thread runs after every poll round (for `Primary::spawn_with`),
/// and the counters.
pub fn gate_pair() -> (ChannelGate, AckHook, Arc<GateCounters>) {
    let (tx, rx): (Sender<Held>, Receiver<Held>) = crossbeam_channel::unbounded();
    let counters = Arc::new(GateCounters::default());
    let c = counters.clone();
    let mut gate: SeqGate<Release> = SeqGate::new();
    let hook: AckHook = Box::new(move |shared: &PrimaryShared| {
        while let Ok((seq, release)) = rx.try_recv() {
            // The VMM submits outputs in seq order; a violation would be a
            // VMM bug; such an output is dropped unreleased (never released early).
            let _ = gate.hold(seq, release);
        }
        let n = gate.release(shared.acked_seq(), |_, release| release());
        if n > 0 {
            c.released.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    (
        ChannelGate {
            tx,
            counters: counters.clone(),
        },
        hook,
        counters,
    )
}

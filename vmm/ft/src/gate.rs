//! The VM's side of the output rule: each output goes, with its OUTPUT
//! entry's seq, to the primary's driver, which alone decides when it leaves
//! (`crate::driver`). Inline and threaded drivers take them the same way.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use ftvm_vmm::Counter;
use ftvm_vmm::{OutputGate, Release};
use ftvm_wire::Kind;

/// An output on its way to the driver: its OUTPUT entry's seq, when the VM
/// submitted it (the start of its output-rule latency) and the action.
pub(crate) type Submitted = (u64, Instant, Release);

/// Counters of held and released outputs (read by the status and metrics
/// endpoints).
#[derive(Debug, Default)]
pub struct GateCounters {
    /// Outputs submitted in record mode.
    pub submitted: Counter,
    /// Outputs released by the driver.
    pub released: Counter,
    /// Submit-to-release time of each released output (the driver
    /// observes it with the clock reading it releases by).
    pub release_latency: crate::metrics::LatencyHistogram,
    /// Where that time goes: to ship, ACK, send (`crate::breakdown`).
    pub breakdown: crate::breakdown::RuleBreakdown,
}

impl GateCounters {
    /// Outputs waiting now.
    pub fn held(&self) -> u64 {
        self.submitted.get().saturating_sub(self.released.get())
    }
}

/// The VM's output gate on a protected primary.
pub struct ChannelGate {
    tx: Sender<Submitted>,
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
                self.counters.submitted.add(1);
                // The receiver lives as long as the driver; once it is gone
                // the output stays held forever — never released without
                // the fence's consent.
                let _ = self.tx.send((seq, Instant::now(), release));
            }
        }
    }
}

/// The VM's gate, the driver's end of it, and the counters.
pub(crate) fn gate_channel() -> (ChannelGate, Receiver<Submitted>, Arc<GateCounters>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let counters = Arc::new(GateCounters::default());
    (
        ChannelGate {
            tx,
            counters: counters.clone(),
        },
        rx,
        counters,
    )
}

//! Exits without KVM: devices and the record/replay engine driven through
//! real exit contexts over real guest memory.
//!
//! [`ExitHarness`] is what the VM's run loop does around each exit, minus
//! the vCPU: hand an [`ExitCtx`] to whoever handles the exit, then check
//! that replay left no entry behind and poll the sink's event source (a
//! channel run inline). Device tests, the allocation checks of the
//! vmm↔channel seam and micro-benchmarks of that seam use it; it is not a
//! way to run a guest.

use crate::device::{ExitCtx, ExitRequests};
use crate::event::PollPoint;
use crate::journal::{Journal, JournalStats, LogError, Mode};
use crate::log::{LogSink, LogSource};
use crate::memory::{GuestMemory, MapGuestMemoryError};
use crate::output::OutputGate;

/// Guest memory and a journal, with the exit ordinal counted as a VM does.
pub struct ExitHarness {
    mem: GuestMemory,
    journal: Journal,
    ordinal: u64,
    requests: ExitRequests,
}

impl std::fmt::Debug for ExitHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitHarness")
            .field("ordinal", &self.ordinal)
            .field("journal", &self.journal)
            .finish()
    }
}

impl ExitHarness {
    /// Record mode: entries go to `sink`, outputs through `gate`.
    pub fn record(
        mem_bytes: usize,
        sink: Box<dyn LogSink>,
        gate: Box<dyn OutputGate>,
    ) -> Result<ExitHarness, MapGuestMemoryError> {
        ExitHarness::with(mem_bytes, Journal::record(sink, gate))
    }

    /// Replay mode: entries come from `source`, outputs go to `gate`.
    pub fn replay(
        mem_bytes: usize,
        source: Box<dyn LogSource>,
        gate: Box<dyn OutputGate>,
    ) -> Result<ExitHarness, MapGuestMemoryError> {
        ExitHarness::with(mem_bytes, Journal::replay(source, gate))
    }

    fn with(mem_bytes: usize, journal: Journal) -> Result<ExitHarness, MapGuestMemoryError> {
        Ok(ExitHarness {
            mem: GuestMemory::new(mem_bytes)?,
            journal,
            ordinal: 0,
            requests: ExitRequests::default(),
        })
    }

    /// The next exit: its ordinal is one more than the last one's.
    pub fn exit(&mut self) -> ExitCtx<'_> {
        self.ordinal += 1;
        ExitCtx {
            mem: &self.mem,
            journal: &mut self.journal,
            ordinal: self.ordinal,
            requests: &mut self.requests,
        }
    }

    /// The end of the exit, as the run loop does it: replay must have used
    /// every entry of this exit; the sink's event source is polled.
    pub fn finish_exit(&mut self) -> Result<(), LogError> {
        self.journal.ordinal = self.ordinal;
        self.journal.finish_exit(self.ordinal)?;
        self.journal.poll_events(PollPoint::Exit)?;
        Ok(())
    }

    /// The VM stops: the sink pushes out what it holds (a channel sink
    /// finishes its driver: last ACK, goodbye).
    pub fn finish(&mut self) -> Result<(), LogError> {
        self.journal.flush()
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The engine's mode.
    pub fn mode(&self) -> Mode {
        self.journal.mode()
    }

    /// Entries, payload bytes and outputs so far.
    pub fn stats(&self) -> JournalStats {
        self.journal.stats
    }
}

//! The output gate: where a device's external output (console bytes, a
//! transmitted packet, a shared-disk write) goes once it is logged.
//!
//! Record mode hands each output to the gate with the sequence number of its
//! OUTPUT entry; the gate releases it when the backup has acknowledged that
//! entry (the output rule). Live mode submits with `seq = None`: release now.
//! Replay mode hands the replayed output to [`OutputGate::replayed`]: a
//! standby backup's gate keeps the few whose release on the primary is not
//! yet confirmed, so that going live can re-issue them (shared-disk writes)
//! or re-send them (replies); every other gate drops them.

use ftvm_wire::Kind;

/// The deferred action that makes an output visible outside the VM.
pub type Release = Box<dyn FnOnce() + Send>;

/// An output a replaying VM produced and its gate kept: the seq of the
/// primary's OUTPUT entry, its kind and the action that would perform it here.
pub struct KeptOutput {
    /// Seq of the OUTPUT entry.
    pub seq: u64,
    /// Entry kind (`NetTx`, `DiskWrite`, `Console`).
    pub kind: Kind,
    /// Performs the output from this VM.
    pub release: Release,
}

impl std::fmt::Debug for KeptOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptOutput")
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Holds outputs until they may leave.
pub trait OutputGate: Send {
    /// `seq` is the OUTPUT entry's sequence number (record) or `None` (live:
    /// release at once). `kind` is the entry kind (`Console`, `NetTx`, ...).
    fn submit(&mut self, seq: Option<u64>, kind: Kind, release: Release);

    /// Replay: the output this VM produced where the primary's log has the
    /// OUTPUT entry `seq` (already checked against it). It must never be
    /// released by a replaying VM. Default: dropped.
    fn replayed(&mut self, seq: u64, kind: Kind, release: Release) {
        let _ = (seq, kind, release);
    }

    /// Failover: the replayed outputs this gate kept, in seq order (see
    /// [`OutputGate::replayed`]). Default: none.
    fn take_kept(&mut self) -> Vec<KeptOutput> {
        Vec::new()
    }
}

/// Releases every output at once (no backup).
#[derive(Debug, Default)]
pub struct ImmediateGate;

impl OutputGate for ImmediateGate {
    fn submit(&mut self, _seq: Option<u64>, _kind: Kind, release: Release) {
        release();
    }
}

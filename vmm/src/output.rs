//! The output gate: where a device's external output (console bytes, a
//! transmitted packet, a shared-disk write) goes once it is logged.
//!
//! Record mode hands each output to the gate with the sequence number of its
//! OUTPUT entry; the gate releases it when the backup has acknowledged that
//! entry (the output rule). Until the channel exists, [`ImmediateGate`]
//! releases at once. Live mode submits with `seq = None`: release now.

use ftvm_wire::Kind;

/// The deferred action that makes an output visible outside the VM.
pub type Release = Box<dyn FnOnce() + Send>;

/// Holds outputs until they may leave.
pub trait OutputGate: Send {
    /// `seq` is the OUTPUT entry's sequence number (record) or `None` (live:
    /// release at once). `kind` is the entry kind (`Console`, `NetTx`, ...).
    fn submit(&mut self, seq: Option<u64>, kind: Kind, release: Release);
}

/// Releases every output at once (no backup yet).
#[derive(Debug, Default)]
pub struct ImmediateGate;

impl OutputGate for ImmediateGate {
    fn submit(&mut self, _seq: Option<u64>, _kind: Kind, release: Release) {
        release();
    }
}

//! Failover seam: how a replaying VM whose primary is lost becomes live.
//!
//! The VMM knows nothing of arbiters or service addresses. When replay has
//! consumed every entry of a source that reported [`SourcePoll::Lost`], the
//! journal calls the VM's [`Failover`] plan — on the vCPU thread, at the
//! exact point where the next entry would have been needed (at an exit
//! boundary, or in the middle of an exit whose entries were cut off). The
//! plan arbitrates and takes over the service; on success it returns how to
//! continue ([`GoLive`]), and the same exit goes on in live or record mode
//! with the devices as they are: an input the primary never logged is now
//! read from the host, an output it never released is produced here.
//! Without a plan, a lost primary is an error, as before.
//!
//! [`SourcePoll::Lost`]: crate::log::SourcePoll::Lost

use crate::log::LogSink;
use crate::output::{KeptOutput, OutputGate};

/// Where the log ended, for the plan's decision and report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEnd {
    /// Exit ordinal at which the VM needs what the log does not have.
    pub ordinal: u64,
    /// Seq of the last entry replayed (0: none).
    pub last_seq: u64,
    /// True when the end fell inside an exit (its remaining entries were
    /// never received); false at an exit boundary.
    pub mid_exit: bool,
    /// The source's account of how the primary was lost.
    pub reason: String,
}

/// How a VM that went live continues.
pub struct GoLive {
    /// `None`: live mode (no log). `Some`: record into this sink (e.g. an
    /// unprotected driver that a new backup can later join).
    pub sink: Option<Box<dyn LogSink>>,
    /// The output gate from now on.
    pub gate: Box<dyn OutputGate>,
}

impl std::fmt::Debug for GoLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoLive")
            .field("record", &self.sink.is_some())
            .finish()
    }
}

/// Going live failed: the VM stops with this error.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    /// Another candidate won the generation: this side must stop.
    #[error("lost generation {generation} of VM {vm:?} to {holder}: {detail}")]
    Lost {
        /// The VM name.
        vm: String,
        /// The generation raced for.
        generation: u64,
        /// Who holds it.
        holder: String,
        /// What this side did about it.
        detail: String,
    },
    /// Anything else (arbiter gave up, service address not available, ...).
    #[error("going live failed: {0}")]
    Failed(String),
}

/// A replaying VM's plan for the loss of its primary.
pub trait Failover: Send {
    /// Called once, on the vCPU thread, when the log ended at `end`. `kept`
    /// are the replayed outputs the gate kept ([`OutputGate::take_kept`]),
    /// in seq order: re-issue or re-send what must be.
    fn go_live(&mut self, end: LogEnd, kept: Vec<KeptOutput>) -> Result<GoLive, FailoverError>;
}

//! Event sources: work the VMM drives from the vCPU thread besides the
//! devices — the logging channel of a primary run inline (one thread per
//! side, ARCHITECTURE "Run to completion").
//!
//! A log sink may expose one ([`crate::LogSink::events`]). The VM polls it
//! at the end of every exit ([`PollPoint::Exit`]: keep that cheap) and on
//! every pass of a WAIT exit ([`PollPoint::Wait`]), and a guest asleep in
//! WAIT also wakes when its [`EventSource::wait_fd`] becomes readable. An
//! error stops the VM at once (e.g. the primary lost the arbitration to its
//! backup: it must release nothing more).

use std::os::fd::RawFd;

/// Where the VM polls an event source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollPoint {
    /// The end of an exit (after its entries were logged): cheap work only.
    Exit,
    /// A pass of the guest's WAIT exit (the guest is idle).
    Wait,
}

/// An event source stopped the VM.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct EventSourceError {
    /// The source (e.g. "primary channel").
    pub name: &'static str,
    /// Why the VM must stop.
    pub reason: String,
}

/// Work driven from the vCPU thread.
pub trait EventSource: Send {
    /// Does the work due at `at`; returns how much was done (0: idle).
    fn poll(&mut self, at: PollPoint) -> Result<usize, EventSourceError>;

    /// An fd that becomes readable when `poll` has work (e.g. an ACK
    /// arrived); a WAIT exit sleeps on it. Default: none.
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// When `poll` must run next even if nothing arrives (a tick falls due,
    /// a peer's silence reaches its timeout); a WAIT sleeps no longer.
    /// Default: none.
    fn deadline(&self) -> Option<std::time::Instant> {
        None
    }
}

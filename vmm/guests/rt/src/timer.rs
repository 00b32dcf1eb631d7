//! The periodic timer (TIMER port, vector 0x20). The VMM injects ticks only
//! at exits; the ring-0 handler in `start.rs` increments [`ticks`].

use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi::port;
use crate::io::outl;

/// Incremented by the timer interrupt handler (ring 0, `lock inc`).
#[unsafe(no_mangle)]
pub static FTVM_TICKS: AtomicU64 = AtomicU64::new(0);

/// Arms the timer with `period_us` (0 stops it).
pub fn start(period_us: u32) {
    outl(port::TIMER, period_us);
}

/// Stops the timer.
pub fn stop() {
    outl(port::TIMER, 0);
}

/// Ticks taken so far.
pub fn ticks() -> u64 {
    // Relaxed: one CPU; the handler's `lock inc` is a single atomic RMW and
    // nothing else is published with it.
    FTVM_TICKS.load(Ordering::Relaxed)
}

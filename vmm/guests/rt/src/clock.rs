//! The paravirtual clock (CLOCK port; the answer is logged).

use crate::abi::port;
use crate::io::outl;

#[repr(C, align(8))]
struct Slot(u64);

/// Monotonic nanoseconds since VM start (one exit).
pub fn now_ns() -> u64 {
    let mut s = Slot(0);
    outl(port::CLOCK, &mut s as *mut Slot as u64 as u32);
    // SAFETY: `s` is a live, aligned local the VMM wrote during the exit;
    // the volatile read keeps the compiler from assuming it is still 0.
    unsafe { core::ptr::read_volatile(&s.0) }
}

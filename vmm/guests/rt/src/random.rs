//! The paravirtual random device (RANDOM port; the bytes are logged).

use crate::abi::{MAX_RANDOM_LEN, port};
use crate::io::{IoDesc, outl};

/// Fills `buf` with random bytes (one exit per 4 KiB).
pub fn fill(buf: &mut [u8]) {
    for chunk in buf.chunks_mut(MAX_RANDOM_LEN as usize) {
        let d = IoDesc::of(chunk);
        outl(port::RANDOM, d.gpa());
        // The VMM wrote `chunk` during the exit; make the compiler reload it.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
        for b in chunk.iter_mut() {
            // SAFETY: `b` is a valid exclusive reference; the volatile
            // read/write pair forces the value written by the VMM to be seen.
            unsafe { core::ptr::write_volatile(b, core::ptr::read_volatile(b)) };
        }
    }
}

/// A random u64 (one exit).
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

//! Port I/O. Safe to call: a port access only reaches the VMM (IOPL 3 lets
//! ring 3 execute `in`/`out`; every access exits to the VMM).

use core::arch::asm;

/// `out dx, eax`. Acts as a compiler memory barrier: the VMM may read or
/// write guest memory named by the value.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: `out` has no effect on guest memory or registers besides what
    // the VMM does at the exit; the asm is not `nomem`, so the compiler
    // flushes pending stores (descriptors, buffers) before it.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}

/// `out dx, al`.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: as for `outl`.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) };
}

/// `in eax, dx`.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as for `outl`; the VMM supplies the value.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") v, options(nostack, preserves_flags)) };
    v
}

/// `in al, dx`.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `inl`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nostack, preserves_flags)) };
    v
}

/// A buffer descriptor: `{ addr, len, reserved = 0 }`, 16 bytes, 8-aligned.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct IoDesc {
    /// Guest-physical (= virtual) address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Must be 0.
    pub reserved: u32,
}

impl IoDesc {
    /// A descriptor of `buf`.
    pub fn of(buf: &[u8]) -> IoDesc {
        IoDesc {
            addr: buf.as_ptr() as u64,
            len: buf.len() as u32,
            reserved: 0,
        }
    }

    /// Its address as the 32-bit port value (guest memory is below 4 GiB).
    pub fn gpa(&self) -> u32 {
        self as *const IoDesc as u64 as u32
    }
}

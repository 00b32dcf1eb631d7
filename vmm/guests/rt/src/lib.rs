//! ftvm-rt: the runtime of ftvm guests (`docs/guest-abi.md`).
//!
//! 1. The VMM starts `_start` at ring 3 with IOPL 3 and IF set on the main
//!    stack (ring 0 when `vmm.guest_cpl = 0`), `rdi` = boot info, with an IDT
//!    it built from the image header: exception stubs report through the
//!    FAULT port; vector 0x20 counts timer ticks. `_start` zeroes `.bss`.
//! 2. `ftvm_rt_main`: initialise the heap, call the app's `main` (declared
//!    with [`entry!`]), and stop the VM with its return value as exit code.
//! 3. The app talks to the VMM through the port drivers here: [`console`],
//!    [`clock`], [`random`], [`timer`], [`wait`], [`exit`].
#![no_std]

extern crate alloc;

pub mod abi;
pub mod clock;
pub mod console;
mod heap;
pub mod io;
mod panic;
pub mod random;
mod start;
pub mod timer;

pub use abi::BootInfo;

/// Declares the app's entry point: `fn main(boot: &'static BootInfo) -> u32`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn ftvm_app_main(boot: &'static $crate::BootInfo) -> u32 {
            $main(boot)
        }
    };
}

static mut BOOT: *const BootInfo = core::ptr::null();

/// The boot info the VMM passed.
pub fn boot_info() -> &'static BootInfo {
    // SAFETY: BOOT is written once in `ftvm_rt_main` before the app runs and
    // never again; it points at the VMM's boot page, valid for the VM's life.
    unsafe { &*BOOT }
}

/// Sleeps in the WAIT port until a device event, a due timer tick, or
/// `timeout_us` (`abi::WAIT_FOREVER` = no timeout).
pub fn wait(timeout_us: u32) {
    io::outl(abi::port::WAIT, timeout_us);
}

/// Stops the VM with `code`.
pub fn exit(code: u32) -> ! {
    io::outl(abi::port::EXIT, code);
    loop {
        core::hint::spin_loop();
    }
}

unsafe extern "C" {
    fn ftvm_app_main(boot: &'static BootInfo) -> u32;
}

#[unsafe(no_mangle)]
extern "C" fn ftvm_rt_main(boot: *const BootInfo) -> ! {
    // SAFETY: single-threaded start-up; nothing reads BOOT before this.
    unsafe { BOOT = boot };
    let b = boot_info();
    if b.magic != abi::BOOT_MAGIC || b.version != abi::BOOT_VERSION {
        exit(abi::BAD_BOOT_EXIT_CODE);
    }
    heap::init(b.heap_start, b.heap_len);
    // SAFETY: the app provides this symbol through `entry!`.
    let code = unsafe { ftvm_app_main(b) };
    exit(code)
}

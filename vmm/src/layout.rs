//! The guest-physical memory map, boot-info layout and port numbers.
//! Normative description: `docs/guest-abi.md`; the guest mirror is
//! `vmm/guests/rt/src/abi.rs`. Change all three together, additions only.

/// Size of a guest page (dirty tracking and digests work per page).
pub const PAGE_SIZE: usize = 4096;

/// GDT (7 slots of 8 bytes; the TSS descriptor takes two).
pub const GDT_ADDR: u64 = 0x1000;
/// TSS (104 bytes).
pub const TSS_ADDR: u64 = 0x1800;
/// PML4; PDPT follows at +0x1000, four page directories at +0x2000..+0x6000.
pub const PML4_ADDR: u64 = 0x2000;
/// PDPT.
pub const PDPT_ADDR: u64 = 0x3000;
/// First of four page directories (2 MiB pages, 4 GiB identity map).
pub const PD_ADDR: u64 = 0x4000;
/// Boot information page (`BootInfo`); also passed in `rdi`.
pub const BOOT_INFO_ADDR: u64 = 0x8000;
/// IDT (48 gates: exceptions 0-31 and the timer 0x20), written by the VMM.
pub const IDT_ADDR: u64 = 0x8800;
/// Number of IDT gates.
pub const IDT_ENTRIES: u64 = 48;
/// Image header magic at image offset 8 ("FTVMIMG1").
pub const IMAGE_MAGIC: u64 = u64::from_le_bytes(*b"FTVMIMG1");
/// Top of the ring-0 stack (interrupts, exceptions, start-up); `TSS.rsp0`.
pub const KERNEL_STACK_TOP: u64 = 0x1_0000;
/// Load address and entry point of the flat guest image.
pub const IMAGE_ADDR: u64 = 0x1_0000;
/// End of the image region (image + bss must end below).
pub const IMAGE_END: u64 = 0x40_0000;
/// Top of the main (service loop) stack.
pub const STACK_TOP: u64 = 0x50_0000;
/// Region reserved for the NIC and the block device (vmm-net owns its layout).
pub const DEV_REGION: u64 = 0x100_0000;
/// Length of the device region.
pub const DEV_REGION_LEN: u64 = 0x100_0000;
/// Start of the heap (to the end of guest memory).
pub const HEAP_START: u64 = 0x200_0000;
/// Smallest guest memory the map fits in, in MiB (heap of at least 16 MiB).
pub const MIN_MEM_MIB: u32 = 48;
/// Largest guest memory, in MiB (below the 4 GiB identity map).
pub const MAX_MEM_MIB: u32 = 3072;

/// GDT selectors.
pub mod selector {
    /// Ring-0 64-bit code.
    pub const CODE0: u16 = 0x08;
    /// Ring-0 data.
    pub const DATA0: u16 = 0x10;
    /// Ring-3 64-bit code (RPL 3).
    pub const CODE3: u16 = 0x1b;
    /// Ring-3 data (RPL 3).
    pub const DATA3: u16 = 0x23;
    /// Task state segment.
    pub const TSS: u16 = 0x28;
}

/// Boot-info magic, "FTVMBOOT" little-endian.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"FTVMBOOT");
/// Boot-info version.
pub const BOOT_VERSION: u32 = 1;
/// The timer's interrupt vector.
pub const TIMER_VECTOR: u32 = 0x20;

/// Port numbers (all 32-bit `out`).
pub mod port {
    /// CONSOLE: GPA of an `IoDesc` with the bytes to print (OUTPUT `Console`).
    pub const CONSOLE: u16 = 0x10;
    /// EXIT: exit code; the VM stops.
    pub const EXIT: u16 = 0x11;
    /// FAULT: exception vector from the runtime's stubs; the VM stops with an error.
    pub const FAULT: u16 = 0x12;
    /// NOP: does nothing (exit-cost measurements).
    pub const NOP: u16 = 0x13;
    /// CLOCK: GPA of a u64 that receives monotonic ns since VM start (`Clock`).
    pub const CLOCK: u16 = 0x20;
    /// RANDOM: GPA of an `IoDesc` to fill with random bytes (`Random`).
    pub const RANDOM: u16 = 0x21;
    /// TIMER: period in µs, 0 = off.
    pub const TIMER: u16 = 0x22;
    /// WAIT: timeout in µs (0 = poll, `u32::MAX` = none).
    pub const WAIT: u16 = 0x23;
    /// First port reserved for the NIC and block device.
    pub const DEV_FIRST: u16 = 0x40;
    /// Last port reserved for the NIC and block device.
    pub const DEV_LAST: u16 = 0x5f;
    /// First port for VMM test devices.
    pub const TEST_FIRST: u16 = 0x60;
    /// Last port for VMM test devices.
    pub const TEST_LAST: u16 = 0x6f;
}

/// WAIT timeout meaning "until an event".
pub const WAIT_FOREVER: u32 = u32::MAX;
/// Largest RANDOM request in bytes.
pub const MAX_RANDOM_LEN: u32 = 4096;
/// Largest CONSOLE write in bytes.
pub const MAX_CONSOLE_LEN: u32 = 64 * 1024;
/// Exit code the runtime's panic handler uses.
pub const PANIC_EXIT_CODE: u32 = 101;

//! The guest side of `docs/guest-abi.md` (mirror of `vmm/src/layout.rs`).

/// Boot-info magic ("FTVMBOOT").
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"FTVMBOOT");
/// Boot-info version.
pub const BOOT_VERSION: u32 = 1;
/// Exit code when the boot info is not understood.
pub const BAD_BOOT_EXIT_CODE: u32 = 102;
/// Exit code of the panic handler.
pub const PANIC_EXIT_CODE: u32 = 101;
/// WAIT without timeout.
pub const WAIT_FOREVER: u32 = u32::MAX;
/// Largest RANDOM request.
pub const MAX_RANDOM_LEN: usize = 4096;
/// Timer interrupt vector.
pub const TIMER_VECTOR: u8 = 0x20;
/// Start of the region reserved for the NIC and the block device.
pub const DEV_REGION: u64 = 0x100_0000;
/// Length of that region.
pub const DEV_REGION_LEN: u64 = 0x100_0000;

/// Port numbers.
pub mod port {
    /// CONSOLE: GPA of an IoDesc.
    pub const CONSOLE: u16 = 0x10;
    /// EXIT: exit code.
    pub const EXIT: u16 = 0x11;
    /// FAULT: exception vector (runtime stubs).
    pub const FAULT: u16 = 0x12;
    /// NOP: does nothing (exit-cost measurements).
    pub const NOP: u16 = 0x13;
    /// CLOCK: GPA of a u64.
    pub const CLOCK: u16 = 0x20;
    /// RANDOM: GPA of an IoDesc.
    pub const RANDOM: u16 = 0x21;
    /// TIMER: period µs, 0 = off.
    pub const TIMER: u16 = 0x22;
    /// WAIT: timeout µs.
    pub const WAIT: u16 = 0x23;
}

/// What the VMM tells the guest at boot (at GPA 0x8000, `rdi` at entry).
#[repr(C)]
#[derive(Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`BOOT_VERSION`].
    pub version: u32,
    /// 3 = service loop at ring 3, 0 = ring 0.
    pub cpl: u32,
    /// Guest memory size.
    pub mem_bytes: u64,
    /// Heap start.
    pub heap_start: u64,
    /// Heap length.
    pub heap_len: u64,
    /// Main stack top.
    pub stack_top: u64,
    /// Ring-0 stack top.
    pub kernel_stack_top: u64,
    /// NIC/block region.
    pub dev_region: u64,
    /// Its length.
    pub dev_region_len: u64,
    /// Free argument from the VMM.
    pub arg: u64,
    /// Timer vector.
    pub timer_vector: u32,
    /// Reserved.
    pub reserved: u32,
    /// Reserved.
    pub reserved2: u64,
}

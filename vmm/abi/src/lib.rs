//! ftvm-guest-abi: the contract between the VMM and the guests — memory
//! map, GDT selectors, port numbers, boot info. One definition used by both
//! sides (`ftvm-vmm` on the host, `ftvm-rt` in the guest), so they cannot
//! drift apart. Normative description: `docs/guest-abi.md`; additions only
//! within a `BOOT_VERSION`.

#![no_std]
#![forbid(unsafe_code)]

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
/// Exit code when the runtime does not understand the boot info.
pub const BAD_BOOT_EXIT_CODE: u32 = 102;

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

/// Byte offsets of the [`BootInfo`] fields, for the VMM that writes them
/// into guest memory.
pub mod boot_offset {
    use super::BootInfo;
    use core::mem::offset_of;

    /// `magic`.
    pub const MAGIC: u64 = offset_of!(BootInfo, magic) as u64;
    /// `version`.
    pub const VERSION: u64 = offset_of!(BootInfo, version) as u64;
    /// `cpl`.
    pub const CPL: u64 = offset_of!(BootInfo, cpl) as u64;
    /// `mem_bytes`.
    pub const MEM_BYTES: u64 = offset_of!(BootInfo, mem_bytes) as u64;
    /// `heap_start`.
    pub const HEAP_START: u64 = offset_of!(BootInfo, heap_start) as u64;
    /// `heap_len`.
    pub const HEAP_LEN: u64 = offset_of!(BootInfo, heap_len) as u64;
    /// `stack_top`.
    pub const STACK_TOP: u64 = offset_of!(BootInfo, stack_top) as u64;
    /// `kernel_stack_top`.
    pub const KERNEL_STACK_TOP: u64 = offset_of!(BootInfo, kernel_stack_top) as u64;
    /// `dev_region`.
    pub const DEV_REGION: u64 = offset_of!(BootInfo, dev_region) as u64;
    /// `dev_region_len`.
    pub const DEV_REGION_LEN: u64 = offset_of!(BootInfo, dev_region_len) as u64;
    /// `arg`.
    pub const ARG: u64 = offset_of!(BootInfo, arg) as u64;
    /// `timer_vector`.
    pub const TIMER_VECTOR: u64 = offset_of!(BootInfo, timer_vector) as u64;
}

// The layout holds at compile time: a change that breaks it does not build.
const _: () = {
    // docs/guest-abi.md: 96 bytes, the fields at these offsets.
    assert!(core::mem::size_of::<BootInfo>() == 96);
    assert!(boot_offset::VERSION == 8);
    assert!(boot_offset::CPL == 12);
    assert!(boot_offset::MEM_BYTES == 16);
    assert!(boot_offset::ARG == 72);
    assert!(boot_offset::TIMER_VECTOR == 80);
    // The regions of the memory map do not overlap.
    assert!(IMAGE_END <= STACK_TOP);
    assert!(STACK_TOP <= DEV_REGION);
    assert!(DEV_REGION + DEV_REGION_LEN <= HEAP_START);
    assert!((MIN_MEM_MIB as u64) << 20 > HEAP_START);
};

/// FNV-1a, 64 bit: the tree's one fixed hash — the VMM's output digests,
/// the settings fingerprint, the kv store's table layout and the dns
/// guest's digests and duplicate table, in the guest and on the host alike.
/// Fixed (not seeded), so values are the same on every run, build and host.
pub mod fnv {
    /// The offset basis: the hash of no bytes.
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    /// The FNV prime.
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// `h` (a hash so far, [`OFFSET`] to start) extended by `bytes`.
    pub const fn extend(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }

    /// The hash of `bytes`.
    pub const fn hash(bytes: &[u8]) -> u64 {
        extend(OFFSET, bytes)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn known_values() {
            // Published FNV-1a 64 test vectors.
            assert_eq!(super::hash(b""), 0xcbf2_9ce4_8422_2325);
            assert_eq!(super::hash(b"a"), 0xaf63_dc4c_8601_ec8c);
            assert_eq!(super::hash(b"foobar"), 0x8594_4171_f739_67e8);
            assert_eq!(
                super::extend(super::hash(b"foo"), b"bar"),
                super::hash(b"foobar")
            );
        }
    }
}

/// The NIC's layout in the device region and its port (`docs/devices.md`):
/// one definition for the VMM's device and the guest driver.
pub mod nic {
    use crate::DEV_REGION;

    /// Doorbell: any 32-bit `out`; sends pending tx slots, fills free rx slots.
    pub const PORT_DOORBELL: u16 = 0x40;
    /// The control block (four `u32` indices).
    pub const CTRL: u64 = DEV_REGION;
    /// Offset of `rx_prod` (written by the VMM).
    pub const RX_PROD: u64 = 0;
    /// Offset of `rx_cons` (written by the guest).
    pub const RX_CONS: u64 = 4;
    /// Offset of `tx_prod` (written by the guest).
    pub const TX_PROD: u64 = 8;
    /// Offset of `tx_cons` (written by the VMM).
    pub const TX_CONS: u64 = 12;
    /// Receive ring.
    pub const RX_RING: u64 = DEV_REGION + 0x1000;
    /// Transmit ring.
    pub const TX_RING: u64 = RX_RING + RX_SLOTS as u64 * SLOT_SIZE;
    /// Receive slots (power of two).
    pub const RX_SLOTS: u32 = 256;
    /// Transmit slots (power of two).
    pub const TX_SLOTS: u32 = 256;
    /// Bytes per slot.
    pub const SLOT_SIZE: u64 = 2048;
    /// Offset of the data in a slot.
    pub const SLOT_DATA: u64 = 32;
    /// Largest datagram a slot holds.
    pub const MAX_PACKET: usize = (SLOT_SIZE - SLOT_DATA) as usize;
    /// Offset of the peer address in a slot.
    pub const SLOT_PEER: u64 = 8;
    /// Bytes of an encoded peer address.
    pub const PEER_LEN: usize = 24;
    /// End of the NIC's part of the device region.
    pub const END: u64 = TX_RING + TX_SLOTS as u64 * SLOT_SIZE;
}

/// The block device's layout in the device region, its ports, ops and
/// request statuses (`docs/devices.md`): one definition for the VMM's device
/// and the guest driver.
pub mod block {
    use crate::DEV_REGION;

    /// Doorbell: handles every pending request.
    pub const PORT_DOORBELL: u16 = 0x48;
    /// INFO: GPA of a 16-byte info buffer the VMM fills.
    pub const PORT_INFO: u16 = 0x49;
    /// Control block: `req_prod` (guest), `req_cons` (VMM).
    pub const CTRL: u64 = DEV_REGION + 0x80_0000;
    /// Offset of `req_prod`.
    pub const REQ_PROD: u64 = 0;
    /// Offset of `req_cons`.
    pub const REQ_CONS: u64 = 4;
    /// Request ring.
    pub const RING: u64 = CTRL + 0x1000;
    /// Requests in the ring (power of two).
    pub const SLOTS: u32 = 64;
    /// Bytes per request descriptor.
    pub const DESC_SIZE: u64 = 32;
    /// Sector size.
    pub const SECTOR: u64 = 512;
    /// Largest request in bytes.
    pub const MAX_REQUEST: u32 = 64 * 1024;
    /// Op: read.
    pub const OP_READ: u32 = 1;
    /// Op: write.
    pub const OP_WRITE: u32 = 2;

    /// Request status values (written by the VMM).
    pub mod status {
        /// Not handled yet.
        pub const PENDING: u32 = 0;
        /// Done.
        pub const OK: u32 = 1;
        /// Beyond the capacity.
        pub const OUT_OF_RANGE: u32 = 2;
        /// Unknown op, misaligned or oversized length, nonzero reserved.
        pub const BAD_REQUEST: u32 = 3;
        /// The host read failed.
        pub const IO_ERROR: u32 = 4;
        /// INFO was not called yet (capacity unknown).
        pub const NOT_READY: u32 = 5;
    }
}

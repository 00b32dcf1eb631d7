//! Long-mode machine set-up done by the VMM before the first instruction:
//! GDT, TSS, identity page tables, boot info, initial registers and CPUID
//! (measured recipe: `KVM-ON-THESE-MACHINES.md`; map: `docs/guest-abi.md`).

use kvm_bindings::{CpuId, kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::*;
use crate::memory::{GuestMemory, GuestMemoryError};

const GDT: [u64; 5] = [
    0,
    0x00af_9b00_0000_ffff, // 0x08 ring-0 code, L=1
    0x00cf_9300_0000_ffff, // 0x10 ring-0 data
    0x00af_fb00_0000_ffff, // 0x18 ring-3 code, L=1, DPL 3
    0x00cf_f300_0000_ffff, // 0x20 ring-3 data, DPL 3
];
/// TSS: 104 bytes, then an I/O permission bitmap allowing ports 0..=0x7f
/// (16 zero bytes) and the required 0xff terminator. PVM hosts do not keep
/// IOPL 3 for ring 3 across traps, so ring-3 `in`/`out` are allowed by the
/// bitmap instead.
const TSS_IOMAP: u64 = 0x68;
const IOMAP_BYTES: u64 = 16;
const TSS_LIMIT: u64 = TSS_IOMAP + IOMAP_BYTES;

/// CR0: PE | MP | ET | NE | WP | PG.
pub const CR0: u64 = 0x1 | 0x2 | 0x10 | 0x20 | 0x1_0000 | 0x8000_0000;
/// CR4: PAE | OSFXSR | OSXMMEXCPT, plus TSD (rdtsc faults outside ring 0 on
/// VMX hosts; PVM runs ring-3 rdtsc natively regardless).
pub const CR4: u64 = 0x20 | 0x200 | 0x400 | 0x4;
/// EFER: SCE | LME | LMA | NXE.
pub const EFER: u64 = 0x1 | 0x100 | 0x400 | 0x800;

/// Writes the GDT, TSS, page tables and boot info into guest memory.
pub fn write_tables(mem: &GuestMemory, cpl: u8, arg: u64) -> Result<(), GuestMemoryError> {
    for (i, d) in GDT.iter().enumerate() {
        mem.write_u64(GDT_ADDR + 8 * i as u64, *d)?;
    }
    // 64-bit TSS descriptor (available, type 9) in slots 5 and 6.
    let base = TSS_ADDR;
    let low = (TSS_LIMIT & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((TSS_LIMIT >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    mem.write_u64(GDT_ADDR + 40, low)?;
    mem.write_u64(GDT_ADDR + 48, base >> 32)?;
    // TSS: rsp0 at offset 4; I/O bitmap at TSS_IOMAP (zero bits = allowed).
    mem.write_u64(TSS_ADDR + 4, KERNEL_STACK_TOP)?;
    mem.write(TSS_ADDR + 0x66, &(TSS_IOMAP as u16).to_le_bytes())?;
    mem.write(TSS_ADDR + TSS_IOMAP, &[0u8; IOMAP_BYTES as usize])?;
    mem.write(TSS_ADDR + TSS_IOMAP + IOMAP_BYTES, &[0xff])?;

    // Identity map of 4 GiB with 2 MiB pages, user bit set, A/D pre-set so the
    // MMU never writes these tables (their bytes stay identical on replay).
    const UPPER: u64 = 0x1 | 0x2 | 0x4 | 0x20; // P RW US A
    const LEAF: u64 = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80; // P RW US A D PS
    mem.write_u64(PML4_ADDR, PDPT_ADDR | UPPER)?;
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        mem.write_u64(PDPT_ADDR + 8 * i, pd | UPPER)?;
        let mut table = [0u8; 4096];
        for j in 0..512u64 {
            let e = ((i * 512 + j) << 21) | LEAF;
            table[(j * 8) as usize..(j * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
        }
        mem.write(pd, &table)?;
    }

    let b = BOOT_INFO_ADDR;
    mem.write_u64(b + boot_offset::MAGIC, BOOT_MAGIC)?;
    mem.write_u32(b + boot_offset::VERSION, BOOT_VERSION)?;
    mem.write_u32(b + boot_offset::CPL, u32::from(cpl))?;
    mem.write_u64(b + boot_offset::MEM_BYTES, mem.size())?;
    mem.write_u64(b + boot_offset::HEAP_START, HEAP_START)?;
    mem.write_u64(b + boot_offset::HEAP_LEN, mem.size() - HEAP_START)?;
    mem.write_u64(b + boot_offset::STACK_TOP, STACK_TOP)?;
    mem.write_u64(b + boot_offset::KERNEL_STACK_TOP, KERNEL_STACK_TOP)?;
    mem.write_u64(b + boot_offset::DEV_REGION, DEV_REGION)?;
    mem.write_u64(b + boot_offset::DEV_REGION_LEN, DEV_REGION_LEN)?;
    mem.write_u64(b + boot_offset::ARG, arg)?;
    mem.write_u32(b + boot_offset::TIMER_VECTOR, TIMER_VECTOR)?;
    Ok(())
}

fn segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Why a guest image cannot be booted: its runtime header or the handler
/// addresses it names (`docs/guest-abi.md` §3).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image is too short for a header word.
    #[error("image of {len} bytes has no header word at offset {offset}")]
    NoHeaderWord {
        /// Image size.
        len: usize,
        /// Offset of the word.
        offset: usize,
    },
    /// The header's magic is not the runtime's.
    #[error(
        "image header magic {found:#018x} at offset 8 is not {IMAGE_MAGIC:#018x} (not built with ftvm-rt?)"
    )]
    BadMagic {
        /// The magic found.
        found: u64,
    },
    /// The handler table or the timer entry lies outside the image.
    #[error(
        "handler table {table:#x} or timer entry {timer:#x} outside the image {start:#x}..{end:#x}"
    )]
    TableOutside {
        /// Handler table address.
        table: u64,
        /// Timer entry address.
        timer: u64,
        /// Image start.
        start: u64,
        /// Image end.
        end: u64,
    },
    /// A fault handler lies outside the image.
    #[error("fault handler {vector} at {handler:#x} outside the image")]
    HandlerOutside {
        /// Vector.
        vector: u64,
        /// Handler address.
        handler: u64,
    },
    /// Guest memory refused a read or the IDT write.
    #[error(transparent)]
    Memory(#[from] GuestMemoryError),
}

/// Reads the runtime's image header (`docs/guest-abi.md` §3) and writes the
/// IDT: vectors 0-31 to the image's fault stubs, 0x20 to its timer entry.
pub fn write_idt(mem: &GuestMemory, image: &[u8]) -> Result<(), ImageError> {
    let word = |offset: usize| -> Result<u64, ImageError> {
        image
            .get(offset..offset + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(ImageError::NoHeaderWord {
                len: image.len(),
                offset,
            })
    };
    let magic = word(8)?;
    if magic != IMAGE_MAGIC {
        return Err(ImageError::BadMagic { found: magic });
    }
    let table = word(16)?;
    let timer = word(24)?;
    let image_end = IMAGE_ADDR + image.len() as u64;
    let inside = |a: u64| (IMAGE_ADDR..image_end).contains(&a);
    if !inside(table) || !inside(table + 32 * 8 - 1) || !inside(timer) {
        return Err(ImageError::TableOutside {
            table,
            timer,
            start: IMAGE_ADDR,
            end: image_end,
        });
    }
    let mut idt = vec![0u8; (IDT_ENTRIES * 16) as usize];
    let mut set = |v: usize, handler: u64| {
        const INTERRUPT_GATE: u64 = 0x8e; // present, DPL 0, 64-bit interrupt gate
        let low = (handler & 0xffff)
            | (u64::from(selector::CODE0) << 16)
            | (INTERRUPT_GATE << 40)
            | (((handler >> 16) & 0xffff) << 48);
        idt[v * 16..v * 16 + 8].copy_from_slice(&low.to_le_bytes());
        idt[v * 16 + 8..v * 16 + 16].copy_from_slice(&(handler >> 32).to_le_bytes());
    };
    for v in 0..32u64 {
        let h = mem.read_u64(table + 8 * v)?;
        if !inside(h) {
            return Err(ImageError::HandlerOutside {
                vector: v,
                handler: h,
            });
        }
        set(v as usize, h);
    }
    set(TIMER_VECTOR as usize, timer);
    Ok(mem.write(IDT_ADDR, &idt)?)
}

/// Special registers for the first instruction (long mode, ring `cpl`).
pub fn initial_sregs(mut s: kvm_sregs, cpl: u8) -> kvm_sregs {
    if cpl == 3 {
        s.cs = segment(selector::CODE3, 0xb, 3, true);
        let data = segment(selector::DATA3, 0x3, 3, false);
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
    } else {
        s.cs = segment(selector::CODE0, 0xb, 0, true);
        let data = segment(selector::DATA0, 0x3, 0, false);
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
    }
    s.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT as u32,
        selector: selector::TSS,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = 7 * 8 - 1;
    s.idt.base = IDT_ADDR;
    s.idt.limit = (IDT_ENTRIES * 16 - 1) as u16;
    s.cr0 = CR0;
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4;
    s.efer = EFER;
    s
}

/// General registers for the first instruction: main stack, boot info in
/// `rdi`, IF set, and IOPL 3 at ring 3 (PVM drops it at the first trap; the
/// TSS I/O bitmap is what keeps ring-3 `in`/`out` exiting to the VMM).
pub fn initial_regs(cpl: u8) -> kvm_regs {
    kvm_regs {
        rip: IMAGE_ADDR,
        rsp: STACK_TOP,
        rdi: BOOT_INFO_ADDR,
        rflags: if cpl == 3 { 0x3202 } else { 0x202 },
        ..Default::default()
    }
}

/// Hides from KVM's supported CPUID what a deterministic guest must not use
/// or could observe differently on another host: RDRAND/RDSEED, the
/// hypervisor leaves, x2APIC/TSC-deadline, MONITOR, VMX, PMU, and RDTSCP.
/// On PVM hosts this only partly holds: PVM merges host bits back into
/// leaves 1 and 7 (RDRAND/RDSEED stay visible), and ring-3 CPUID runs
/// natively (docs/vmm.md, "What PVM taught us").
pub fn filter_cpuid(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            1 => {
                // ecx: monitor(3) vmx(5) x2apic(21) tsc-deadline(24) rdrand(30) hypervisor(31)
                e.ecx &= !((1 << 3) | (1 << 5) | (1 << 21) | (1 << 24) | (1 << 30) | (1 << 31));
            }
            7 if e.index == 0 => {
                // ebx: rdseed(18); ecx: waitpkg(5)
                e.ebx &= !(1 << 18);
                e.ecx &= !(1 << 5);
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0x8000_0001 => {
                // edx: rdtscp(27)
                e.edx &= !(1 << 27);
            }
            f if (0x4000_0000..0x4001_0000).contains(&f) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

//! `hello`: the VMM's test guest. `boot.arg & 0xff` selects a mode, and
//! `arg >> 8` is a count where one is needed: 0 hello (console, CPUID,
//! compute, clock, random, heap), 1 `ud2`, 2 jump outside guest memory,
//! 3 test port 0x60 (the unlogged-host-time device of the VMM tests),
//! 4 NOP exit loop, 5 write pages, 6 clock reads, 7 integer compute,
//! 8 `rdtsc`, 9 console lines, 10 panic.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use ftvm_rt::{BootInfo, clock, io, println, random};

ftvm_rt::entry!(main);

fn fib_float(n: u32) -> f64 {
    let (mut a, mut b) = (0.0f64, 1.0f64);
    for _ in 0..n {
        let c = a + b;
        a = b;
        b = c;
    }
    a
}

fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

fn hello() -> u32 {
    println!(
        "hello from the ftvm guest at ring {}",
        ftvm_rt::boot_info().cpl
    );
    let (_, _, ecx1, _) = cpuid(1);
    let (_, ebx7, _, _) = cpuid(7);
    println!(
        "cpuid rdrand {} rdseed {} hypervisor {} x2apic {}",
        (ecx1 >> 30) & 1,
        (ebx7 >> 18) & 1,
        (ecx1 >> 31) & 1,
        (ecx1 >> 21) & 1
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..10_000u64 {
        h = (h ^ i).wrapping_mul(0x100_0000_01b3);
    }
    println!("hash {h:016x} fib(50) {}", fib_float(50));
    let t0 = clock::now_ns();
    let t1 = clock::now_ns();
    let mut r = [0u8; 16];
    random::fill(&mut r);
    let v: Vec<u64> = (0..1000).map(|i| i * i).collect();
    println!(
        "clock {} then {} (+{} ns) random {:02x?} heap sum {}",
        t0,
        t1,
        t1.wrapping_sub(t0),
        r,
        v.iter().sum::<u64>()
    );
    0
}

fn main(boot: &'static BootInfo) -> u32 {
    match boot.arg & 0xff {
        0 => hello(),
        1 => {
            println!("executing ud2");
            // SAFETY: deliberately raises #UD for the crash-report test.
            unsafe { core::arch::asm!("ud2") };
            1
        }
        2 => {
            println!("jumping to 0xdead0000");
            // SAFETY: deliberately jumps outside guest memory.
            unsafe { core::arch::asm!("jmp {}", in(reg) 0xdead_0000u64, options(noreturn)) }
        }
        3 => {
            // Read the VMM test device: it writes a value to our slot.
            #[repr(C, align(8))]
            struct Slot(u64);
            let mut acc = 0u64;
            for _ in 0..8 {
                let mut s = Slot(0);
                io::outl(0x60, &mut s as *mut Slot as u64 as u32);
                // SAFETY: `s` is live and aligned; the VMM wrote it.
                acc = acc.wrapping_add(unsafe { core::ptr::read_volatile(&s.0) });
                io::outl(ftvm_rt::abi::port::NOP, 0);
            }
            // Keep the value in memory only (not printed).
            core::hint::black_box(acc);
            for _ in 0..8 {
                io::outl(ftvm_rt::abi::port::NOP, 0);
            }
            0
        }
        4 => {
            let n = boot.arg >> 8;
            let t0 = clock::now_ns();
            for i in 0..n {
                io::outl(ftvm_rt::abi::port::NOP, i as u32);
            }
            let t1 = clock::now_ns();
            println!("{} nop exits in {} ns", n, t1 - t0);
            0
        }
        5 => {
            let mut pages: Vec<u8> = alloc::vec![0; 256 * 4096];
            let mut x = 1u64;
            for p in pages.chunks_mut(4096) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                p[(x % 4096) as usize] = x as u8;
                io::outl(ftvm_rt::abi::port::NOP, 0);
            }
            println!("wrote {} pages", pages.len() / 4096);
            0
        }
        6 => {
            let n = boot.arg >> 8;
            let mut acc = 0u64;
            for _ in 0..n {
                acc = acc.wrapping_add(clock::now_ns());
            }
            println!("{n} clock reads, sum {acc}");
            0
        }
        7 => {
            let n = boot.arg >> 8;
            let mut h = 0u64;
            for i in 0..n {
                h = core::hint::black_box(
                    (h ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(13),
                );
            }
            println!("{n} compute iterations, {h:016x}");
            0
        }
        8 => {
            println!("executing rdtsc");
            // SAFETY: reads the TSC; CR4.TSD makes it fault outside ring 0.
            let t = unsafe { core::arch::x86_64::_rdtsc() };
            println!("rdtsc {t}");
            0
        }
        9 => {
            for i in 0..4 {
                println!("line {i}");
            }
            let (_, _, ecx1, _) = cpuid(1);
            for i in 4..8 {
                println!("line {i} {ecx1:x}");
            }
            0
        }
        10 => panic!("deliberate panic in mode {}", boot.arg & 0xff),
        m => {
            println!("unknown mode {m}");
            2
        }
    }
}

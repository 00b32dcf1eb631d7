//! Digests of guest state for CHECKPOINT entries.
//!
//! Memory: a hash per 4 KiB page, combined by a wrapping sum of keyed mixes
//! so that one page can be replaced in O(1). At each checkpoint only the pages
//! written since the last one are rehashed: KVM's dirty log (vCPU writes)
//! plus the VMM's own bitmap (device writes). vCPU: general registers, rip,
//! rflags and the control/segment state that determines execution.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::PAGE_SIZE;
use crate::memory::GuestMemory;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Hash of one page: four independent multiply-rotate lanes, then mixed.
pub fn hash_page(page: &[u8]) -> u64 {
    const P: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut lanes = [
        0x243f_6a88_85a3_08d3u64,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    for chunk in page.chunks_exact(32) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(chunk[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            *lane = (*lane ^ w).wrapping_mul(P).rotate_left(29);
        }
    }
    mix(lanes[0] ^ mix(lanes[1] ^ mix(lanes[2] ^ mix(lanes[3]))))
}

fn keyed(index: usize, hash: u64) -> u64 {
    mix(hash ^ (index as u64).wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// Incrementally maintained digest of guest memory.
#[derive(Debug)]
pub struct MemDigest {
    hashes: Vec<u64>,
    sum: u64,
}

impl MemDigest {
    /// Hashes every page of `mem`.
    pub fn new(mem: &GuestMemory) -> MemDigest {
        let mut hashes = Vec::with_capacity(mem.pages());
        let mut sum = 0u64;
        for i in 0..mem.pages() {
            let h = hash_page(mem.page(i));
            sum = sum.wrapping_add(keyed(i, h));
            hashes.push(h);
        }
        MemDigest { hashes, sum }
    }

    /// Rehashes the pages whose bit is set in `dirty` (one bit per page);
    /// returns how many pages were rehashed.
    pub fn update(&mut self, mem: &GuestMemory, dirty: &[u64]) -> usize {
        let mut n = 0;
        for (w, bits) in dirty.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if i >= self.hashes.len() {
                    continue;
                }
                let h = hash_page(mem.page(i));
                self.sum = self
                    .sum
                    .wrapping_sub(keyed(i, self.hashes[i]))
                    .wrapping_add(keyed(i, h));
                self.hashes[i] = h;
                n += 1;
            }
        }
        n
    }

    /// The current memory digest.
    pub fn value(&self) -> u64 {
        mix(self.sum ^ self.hashes.len() as u64)
    }

    /// Page size the digest works in.
    pub const PAGE: usize = PAGE_SIZE;
}

fn seg(h: &mut u64, s: &kvm_segment) {
    for v in [
        s.base,
        u64::from(s.limit),
        u64::from(s.selector),
        u64::from(s.type_),
        u64::from(s.dpl),
        u64::from(s.l),
    ] {
        *h = mix(*h ^ v);
    }
}

/// Digest of the vCPU state that determines execution.
pub fn cpu_digest(r: &kvm_regs, s: &kvm_sregs) -> u64 {
    let mut h = 0x5bd1_e995u64;
    for v in [
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rsp,
        r.rbp,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15,
        r.rip,
        r.rflags,
        s.cr0,
        s.cr2,
        s.cr3,
        s.cr4,
        s.efer,
        s.gdt.base,
        s.idt.base,
        u64::from(s.idt.limit),
    ] {
        h = mix(h ^ v);
    }
    for sg in [&s.cs, &s.ss, &s.ds, &s.es, &s.fs, &s.gs, &s.tr] {
        seg(&mut h, sg);
    }
    h
}

/// Combines memory and vCPU digests.
pub fn combine(mem: u64, cpu: u64) -> u64 {
    mix(mem ^ mix(cpu).rotate_left(17))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_full() {
        let m = GuestMemory::new(64 * PAGE_SIZE).unwrap();
        let mut d = MemDigest::new(&m);
        let empty = d.value();
        m.write(5 * 4096 + 7, b"x").unwrap();
        m.write(63 * 4096, b"y").unwrap();
        assert_eq!(d.update(&m, &m.take_vmm_dirty()), 2);
        assert_ne!(d.value(), empty);
        assert_eq!(d.value(), MemDigest::new(&m).value());
        m.write(5 * 4096 + 7, &[0]).unwrap();
        m.write(63 * 4096, &[0]).unwrap();
        d.update(&m, &m.take_vmm_dirty());
        assert_eq!(d.value(), empty);
    }

    #[test]
    fn page_hash_sees_every_word() {
        let mut p = vec![0u8; 4096];
        let base = hash_page(&p);
        for off in [0usize, 8, 16, 24, 4088] {
            p[off] = 1;
            assert_ne!(hash_page(&p), base, "offset {off}");
            p[off] = 0;
        }
    }
}

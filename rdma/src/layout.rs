//! The registered receive region, the credit word and the immediate: the
//! bytes both ends agree on.
//!
//! Each end registers one **receive region** the peer may write (RDMA
//! `REMOTE_WRITE`). It has the layout of an [`ftvm_ring::pipe`] region, so a
//! reader of `docs/ring.md` already knows it:
//!
//! ```text
//!   offset   0  magic      u64  b"FTVMPIPE" (set when the region is made)
//!   offset   8  capacity   u64  data bytes, a power of two
//!   offset 128  write_pos  u64  TRAILER: end of the peer's bytes in our ring
//!                               (stored by the peer, trailer mode only)
//!   offset 256  credit     u64  the peer's read position of OUR ring (stored by the peer)
//!   offset 264  imms       u64  write-with-immediates the peer has taken from its queue
//!   offset 272  check      u64  credit_check(credit, imms): a torn credit does not match
//!   offset 384  data[capacity]  byte at stream position p is data[p & (capacity - 1)]
//! ```
//!
//! The pipe keeps one region per direction with both positions in it; over
//! RDMA each position must live where it is *read*, so the region at end A
//! holds the trailer of the B→A stream (read by A) and the credit of the A→B
//! stream (read by A): the pipe doc's "RDMA WRITE back into the writer's copy
//! of the header". Everything the peer writes here is validated before use
//! (see [`crate::link`]): a hostile peer can garble our stream, never make us
//! read or write outside the region.
//!
//! # Why the credit has a check word
//!
//! An RDMA WRITE's bytes may be placed in any order (only its completion, or
//! an immediate, says it landed). A credit read while the peer's next credit
//! write is being placed can mix old and new bytes: for `0x00ff` → `0x0100`,
//! bytewise mixes include `0x01ff`, *ahead* of the truth, which would let the
//! writer overwrite unread bytes. So the credit travels with
//! [`credit_check`], a 64-bit mix of both words; a torn triple matches with
//! probability about 2^-64 and is ignored (the previous credit stays, which is
//! always safe). Writes on one queue pair are placed one after the other, so
//! once the last credit write has landed the slot holds a whole triple again.
//!
//! # The immediate
//!
//! In immediate mode (the default) a batch's last WRITE is a WRITE WITH
//! IMMEDIATE whose 32-bit immediate is [`encode_end`] of the stream position
//! after the batch: the low 31 bits. The receiver knows the end lies in
//! `visible + 1 ..= read_pos + capacity` (capacity ≤ 2^30), a window shorter
//! than 2^31, so [`decode_end`] recovers the whole position; anything outside
//! the window, or bit 31 set, is a protocol error.

use ftvm_ring::pipe;

/// Offset of the trailer (`write_pos` of the pipe layout).
pub const TRAILER_OFFSET: usize = pipe::WRITE_POS_OFFSET;

/// Offset of the credit triple (`read_pos` of the pipe layout, then two words
/// in its padding).
pub const CREDIT_OFFSET: usize = pipe::READ_POS_OFFSET;

/// Bytes of the credit triple (credit, imms, check).
pub const CREDIT_LEN: usize = 24;

/// Offset of the data area.
pub const DATA_OFFSET: usize = pipe::HEADER_LEN;

/// Smallest ring capacity (data bytes).
pub const MIN_CAPACITY: usize = 4096;

/// Largest ring capacity: the immediate's 31 bits must cover twice the window.
pub const MAX_CAPACITY: usize = 1 << 30;

/// Bit 31 of an immediate: reserved, always 0 in this version.
const IMM_MASK: u32 = 0x7fff_ffff;

// The header words are whole aligned words in their own blocks.
const _: () = assert!(TRAILER_OFFSET.is_multiple_of(8) && CREDIT_OFFSET.is_multiple_of(8));
const _: () = assert!(TRAILER_OFFSET + 8 <= CREDIT_OFFSET);
const _: () = assert!(CREDIT_OFFSET + CREDIT_LEN <= DATA_OFFSET);

/// Region bytes for a ring of `capacity` data bytes.
pub const fn region_len(capacity: usize) -> usize {
    DATA_OFFSET + capacity
}

/// True for a power of two in `MIN_CAPACITY..=MAX_CAPACITY`.
pub fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// The header bytes a fresh region starts with: magic and capacity, positions 0.
pub fn header_prefix(capacity: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&pipe::MAGIC.to_le_bytes());
    h[8..].copy_from_slice(&(capacity as u64).to_le_bytes());
    h
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The check word of a credit triple.
pub const fn credit_check(credit: u64, imms: u64) -> u64 {
    mix(credit ^ mix(imms ^ 0x4654_564d_4352_4544)) // "FTVMCRED"
}

/// The 24 bytes of a credit triple, little-endian.
pub fn encode_credit(credit: u64, imms: u64) -> [u8; CREDIT_LEN] {
    let mut b = [0u8; CREDIT_LEN];
    b[..8].copy_from_slice(&credit.to_le_bytes());
    b[8..16].copy_from_slice(&imms.to_le_bytes());
    b[16..].copy_from_slice(&credit_check(credit, imms).to_le_bytes());
    b
}

/// `(credit, imms)` if the triple's check matches (else it was torn or never written).
pub fn decode_credit(words: [u64; 3]) -> Option<(u64, u64)> {
    (words[2] == credit_check(words[0], words[1])).then_some((words[0], words[1]))
}

/// The immediate announcing stream position `end`.
pub fn encode_end(end: u64) -> u32 {
    // Truncation intended: the low 31 bits; `decode_end` restores the rest.
    (end as u32) & IMM_MASK
}

/// The stream position an immediate announces, given the receiver's
/// `visible` end and `read_pos`; `None` when it lies outside
/// `visible + 1 ..= read_pos + capacity` or bit 31 is set.
pub fn decode_end(imm: u32, visible: u64, read_pos: u64, capacity: usize) -> Option<u64> {
    if imm & !IMM_MASK != 0 {
        return None;
    }
    // Truncation intended: compare the low 31 bits.
    let delta = u64::from(imm.wrapping_sub(visible as u32) & IMM_MASK);
    let end = visible + delta;
    (delta > 0 && end - read_pos <= capacity as u64).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_the_pipe_layout() {
        assert_eq!(region_len(4096), pipe::region_len(4096));
        assert_eq!(&header_prefix(4096)[..8], b"FTVMPIPE");
    }

    #[test]
    fn immediates_round_trip_across_the_31_bit_wrap() {
        let cap = MAX_CAPACITY;
        for visible in [
            0u64,
            5,
            (1 << 31) - 3,
            (1 << 31) + 7,
            u64::from(u32::MAX) * 3,
        ] {
            for delta in [1u64, 2, 4096, cap as u64] {
                let end = visible + delta;
                let imm = encode_end(end);
                assert_eq!(imm & 0x8000_0000, 0);
                assert_eq!(
                    decode_end(imm, visible, visible, cap),
                    Some(end),
                    "{visible} {delta}"
                );
            }
        }
        // Nothing new, beyond the window, reserved bit.
        assert_eq!(decode_end(encode_end(100), 100, 100, 4096), None);
        assert_eq!(decode_end(encode_end(100 + 4097), 100, 100, 4096), None);
        assert_eq!(decode_end(0x8000_0001, 0, 0, 4096), None);
    }

    #[test]
    fn torn_credits_do_not_check() {
        let old = encode_credit(0x00ff, 3);
        let new = encode_credit(0x0100, 4);
        let mut accepted = 0;
        // Every bytewise mix of the two triples (24 bytes -> sample 2^16 masks).
        for mask in 0u32..(1 << 16) {
            let mut b = [0u8; CREDIT_LEN];
            for i in 0..CREDIT_LEN {
                let bit = (mask >> (i % 16)) & 1 == 1;
                b[i] = if bit { new[i] } else { old[i] };
            }
            let w = |k: usize| u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().unwrap());
            if let Some(c) = decode_credit([w(0), w(1), w(2)]) {
                assert!(
                    c == (0x00ff, 3) || c == (0x0100, 4),
                    "torn credit {c:?} accepted"
                );
                accepted += 1;
            }
        }
        assert!(accepted >= 2);
    }
}

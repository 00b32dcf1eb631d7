//! [`ConnParams`]: what each end tells the other over the TCP hello before
//! its queue pair can reach RTR: queue pair number, PSN, LID/GID, MTU, rkey,
//! receive region address and size, receive-queue depth, visibility mode.
//!
//! ```text
//!   0  magic        8 bytes "FTVMRDMA"
//!   8  version      u16 (1)
//!  10  flags        u16  bit 0: make writes into my ring visible by trailer
//!                        bit 1: my NIC is the simulated one
//!  12  qpn          u32  (24 bits used)
//!  16  psn          u32  (24 bits used): the first PSN I send
//!  20  lid          u16  (InfiniBand; 0 on RoCE)
//!  22  mtu          u16  my port's active MTU in bytes (256..=4096)
//!  24  gid          16 bytes
//!  40  rkey         u32  of my receive region
//!  44  rq_depth     u32  receives I keep posted
//!  48  region_addr  u64  virtual address of my receive region
//!  56  region_len   u64  its length = 384 + capacity
//!  64  capacity     u64  my ring's data bytes (power of two)
//!  72  reserved     8 bytes, zero
//! ```
//!
//! All integers little-endian. A field the peer cannot honour is refused
//! with an error naming the value: no guessing.

use crate::layout;
use crate::link::Visibility;

/// Encoded length.
pub const LEN: usize = 80;

const MAGIC: &[u8; 8] = b"FTVMRDMA";

/// Version of this layout.
pub const VERSION: u16 = 1;

const FLAG_TRAILER: u16 = 1;
const FLAG_SIMULATED: u16 = 2;

/// One end's connection parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnParams {
    /// How writes into my ring become visible.
    pub visibility: Visibility,
    /// My NIC is the simulated one.
    pub simulated: bool,
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number I send.
    pub psn: u32,
    /// Port LID (InfiniBand).
    pub lid: u16,
    /// Active MTU in bytes.
    pub mtu: u16,
    /// GID (RoCE, or a global InfiniBand route).
    pub gid: [u8; 16],
    /// rkey of my receive region.
    pub rkey: u32,
    /// Receives I keep posted.
    pub rq_depth: u32,
    /// Address of my receive region.
    pub region_addr: u64,
    /// Its length.
    pub region_len: u64,
    /// My ring's data bytes.
    pub capacity: u64,
}

/// Why a peer's parameters were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// Not an ftvm RDMA hello.
    #[error(
        "connection parameters start with {found:02x?}, not \"FTVMRDMA\" (is the peer an ftvm rdma transport?)"
    )]
    BadMagic {
        /// The first 8 bytes.
        found: [u8; 8],
    },
    /// Another layout version.
    #[error("connection parameters version {found}, this build speaks {ours}")]
    Version {
        /// The peer's.
        found: u16,
        /// Ours.
        ours: u16,
    },
    /// Unknown flag bits or a non-zero reserved field.
    #[error("connection parameters carry unknown flags {flags:#06x} or reserved bytes")]
    Reserved {
        /// The flags.
        flags: u16,
    },
    /// A ring capacity that is not a power of two in range.
    #[error("peer ring capacity {capacity} is not a power of two in 4096..=1073741824")]
    BadCapacity {
        /// The value.
        capacity: u64,
    },
    /// A region length that does not match the capacity.
    #[error("peer region of {len} bytes does not hold a ring of {capacity} (needs {need})")]
    RegionLen {
        /// The length.
        len: u64,
        /// The capacity.
        capacity: u64,
        /// `384 + capacity`.
        need: u64,
    },
    /// An MTU that is not an InfiniBand MTU.
    #[error("peer MTU {mtu} is not one of 256, 512, 1024, 2048, 4096")]
    BadMtu {
        /// The value.
        mtu: u16,
    },
    /// A receive queue too small to carry immediates.
    #[error("peer receive queue depth {rq_depth} is below 2")]
    BadRqDepth {
        /// The value.
        rq_depth: u32,
    },
    /// A queue pair number or PSN wider than 24 bits.
    #[error("peer {what} {value:#x} does not fit 24 bits")]
    Wide {
        /// `qpn` or `psn`.
        what: &'static str,
        /// The value.
        value: u32,
    },
    /// One end simulated, the other real.
    #[error("peer NIC is {theirs}, ours is {ours}: both ends must set the same rdma.nic")]
    NicMismatch {
        /// Ours.
        ours: &'static str,
        /// Theirs.
        theirs: &'static str,
    },
}

fn nic_name(simulated: bool) -> &'static str {
    if simulated { "simulated" } else { "hardware" }
}

impl ConnParams {
    /// The 80 bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.visibility == Visibility::Trailer {
            FLAG_TRAILER
        } else {
            0
        } | if self.simulated { FLAG_SIMULATED } else { 0 };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.qpn.to_le_bytes());
        b[16..20].copy_from_slice(&self.psn.to_le_bytes());
        b[20..22].copy_from_slice(&self.lid.to_le_bytes());
        b[22..24].copy_from_slice(&self.mtu.to_le_bytes());
        b[24..40].copy_from_slice(&self.gid);
        b[40..44].copy_from_slice(&self.rkey.to_le_bytes());
        b[44..48].copy_from_slice(&self.rq_depth.to_le_bytes());
        b[48..56].copy_from_slice(&self.region_addr.to_le_bytes());
        b[56..64].copy_from_slice(&self.region_len.to_le_bytes());
        b[64..72].copy_from_slice(&self.capacity.to_le_bytes());
        b
    }

    /// Parses and checks a peer's 80 bytes; `simulated` is our NIC's kind.
    pub fn decode(b: &[u8; LEN], simulated: bool) -> Result<ConnParams, ParamsError> {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        if &b[..8] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&b[..8]);
            return Err(ParamsError::BadMagic { found });
        }
        let version = u16_at(8);
        if version != VERSION {
            return Err(ParamsError::Version {
                found: version,
                ours: VERSION,
            });
        }
        let flags = u16_at(10);
        if flags & !(FLAG_TRAILER | FLAG_SIMULATED) != 0 || b[72..].iter().any(|&x| x != 0) {
            return Err(ParamsError::Reserved { flags });
        }
        let theirs_sim = flags & FLAG_SIMULATED != 0;
        if theirs_sim != simulated {
            return Err(ParamsError::NicMismatch {
                ours: nic_name(simulated),
                theirs: nic_name(theirs_sim),
            });
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[24..40]);
        let p = ConnParams {
            visibility: if flags & FLAG_TRAILER != 0 {
                Visibility::Trailer
            } else {
                Visibility::Immediate
            },
            simulated: theirs_sim,
            qpn: u32_at(12),
            psn: u32_at(16),
            lid: u16_at(20),
            mtu: u16_at(22),
            gid,
            rkey: u32_at(40),
            rq_depth: u32_at(44),
            region_addr: u64_at(48),
            region_len: u64_at(56),
            capacity: u64_at(64),
        };
        for (what, value) in [("qpn", p.qpn), ("psn", p.psn)] {
            if value >= 1 << 24 {
                return Err(ParamsError::Wide { what, value });
            }
        }
        if !usize::try_from(p.capacity).is_ok_and(layout::valid_capacity) {
            return Err(ParamsError::BadCapacity {
                capacity: p.capacity,
            });
        }
        let need = layout::region_len(p.capacity as usize) as u64;
        if p.region_len != need {
            return Err(ParamsError::RegionLen {
                len: p.region_len,
                capacity: p.capacity,
                need,
            });
        }
        if ![256, 512, 1024, 2048, 4096].contains(&p.mtu) {
            return Err(ParamsError::BadMtu { mtu: p.mtu });
        }
        if p.rq_depth < 2 {
            return Err(ParamsError::BadRqDepth {
                rq_depth: p.rq_depth,
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConnParams {
        ConnParams {
            visibility: Visibility::Trailer,
            simulated: false,
            qpn: 0x1234,
            psn: 0xabcdef,
            lid: 7,
            mtu: 4096,
            gid: [0xfe; 16],
            rkey: 0xdead_beef,
            rq_depth: 256,
            region_addr: 0x7f00_0000_0000,
            region_len: 384 + 65536,
            capacity: 65536,
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        assert_eq!(ConnParams::decode(&p.encode(), false), Ok(p));
    }

    #[test]
    fn refusals_name_the_value() {
        let bad = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = sample().encode();
            f(&mut b);
            ConnParams::decode(&b, false).unwrap_err().to_string()
        };
        assert_eq!(
            bad(&|b| b[8] = 9),
            "connection parameters version 9, this build speaks 1"
        );
        assert_eq!(
            bad(&|b| b[64..72].copy_from_slice(&5000u64.to_le_bytes())),
            "peer ring capacity 5000 is not a power of two in 4096..=1073741824"
        );
        assert_eq!(
            bad(&|b| b[56..64].copy_from_slice(&100u64.to_le_bytes())),
            "peer region of 100 bytes does not hold a ring of 65536 (needs 65920)"
        );
        assert_eq!(
            bad(&|b| b[22..24].copy_from_slice(&1500u16.to_le_bytes())),
            "peer MTU 1500 is not one of 256, 512, 1024, 2048, 4096"
        );
        assert_eq!(
            bad(&|b| b[12..16].copy_from_slice(&0x0100_0000u32.to_le_bytes())),
            "peer qpn 0x1000000 does not fit 24 bits"
        );
        assert_eq!(
            bad(&|b| b[10] |= 2),
            "peer NIC is simulated, ours is hardware: both ends must set the same rdma.nic"
        );
        assert!(bad(&|b| b[0] = b'X').contains("not \"FTVMRDMA\""));
        assert_eq!(
            bad(&|b| b[44..48].copy_from_slice(&1u32.to_le_bytes())),
            "peer receive queue depth 1 is below 2"
        );
    }
}

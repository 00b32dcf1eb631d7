//! Payload layouts of the VMM's log entries (`docs/guest-abi.md`, "Entry
//! payloads") and [`describe_entry`] for `ftvm log inspect`.

use ftvm_wire::Kind;

/// Bytes before the device data in an input entry: `port: u16, reserved: u16`.
pub const INPUT_PREFIX_LEN: usize = 4;

/// FNV-1a 64 of `bytes` (the output digest; `ftvm_guest_abi::fnv`).
pub use ftvm_guest_abi::fnv::hash as fnv1a64;

fn u16_at(p: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(p.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(p: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(p: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(off..off + 8)?.try_into().ok()?))
}

/// Writes the input prefix for `port` into `out` (`INPUT_PREFIX_LEN` bytes).
pub fn put_input_prefix(out: &mut [u8], port: u16) {
    out[..2].copy_from_slice(&port.to_le_bytes());
    out[2..INPUT_PREFIX_LEN].fill(0);
}

/// The port of an input entry's payload, if the payload is long enough.
pub fn input_port(payload: &[u8]) -> Option<u16> {
    u16_at(payload, 0)
}

/// An OUTPUT entry's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputRecord {
    /// Port the output came from.
    pub port: u16,
    /// Length of the output in bytes.
    pub len: u32,
    /// FNV-1a 64 of the output.
    pub digest: u64,
}

impl OutputRecord {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// The record of `bytes` from `port`.
    pub fn of(port: u16, bytes: &[u8]) -> OutputRecord {
        OutputRecord {
            port,
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            digest: fnv1a64(bytes),
        }
    }

    /// Little-endian encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..2].copy_from_slice(&self.port.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.digest.to_le_bytes());
        b
    }

    /// Decodes; `None` if the payload is not exactly [`Self::LEN`] bytes.
    pub fn from_bytes(p: &[u8]) -> Option<OutputRecord> {
        if p.len() != Self::LEN {
            return None;
        }
        Some(OutputRecord {
            port: u16_at(p, 0)?,
            len: u32_at(p, 4)?,
            digest: u64_at(p, 8)?,
        })
    }
}

/// An `Interrupt` entry's payload: the vector injected.
pub fn interrupt_payload(vector: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&vector.to_le_bytes());
    b
}

/// The vector of an `Interrupt` payload.
pub fn interrupt_vector(p: &[u8]) -> Option<u32> {
    if p.len() != 8 {
        return None;
    }
    u32_at(p, 0)
}

/// A `Checkpoint` entry's payload: a digest of guest state at an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Combined digest (memory and vCPU).
    pub digest: u64,
    /// Digest of guest memory.
    pub mem_digest: u64,
    /// Digest of the vCPU state.
    pub cpu_digest: u64,
    /// The guest's rip at the exit.
    pub rip: u64,
    /// True on the last entry of a run (the primary stopped here).
    pub is_final: bool,
}

impl CheckpointRecord {
    /// Encoded length.
    pub const LEN: usize = 40;

    /// Little-endian encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.digest.to_le_bytes());
        b[8..16].copy_from_slice(&self.mem_digest.to_le_bytes());
        b[16..24].copy_from_slice(&self.cpu_digest.to_le_bytes());
        b[24..32].copy_from_slice(&self.rip.to_le_bytes());
        b[32..40].copy_from_slice(&u64::from(self.is_final).to_le_bytes());
        b
    }

    /// Decodes; `None` if the payload is malformed.
    pub fn from_bytes(p: &[u8]) -> Option<CheckpointRecord> {
        if p.len() != Self::LEN {
            return None;
        }
        let fin = u64_at(p, 32)?;
        if fin > 1 {
            return None;
        }
        Some(CheckpointRecord {
            digest: u64_at(p, 0)?,
            mem_digest: u64_at(p, 8)?,
            cpu_digest: u64_at(p, 16)?,
            rip: u64_at(p, 24)?,
            is_final: fin == 1,
        })
    }
}

impl std::fmt::Display for CheckpointRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x} (memory {:016x}, cpu {:016x}, rip {:#x})",
            self.digest, self.mem_digest, self.cpu_digest, self.rip
        )
    }
}

fn hex_prefix(data: &[u8], max: usize) -> String {
    let mut s: String = data.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if data.len() > max {
        s.push_str("..");
    }
    s
}

/// A readable one-line description of a VMM entry's payload (port, value,
/// sizes), for `ftvm log inspect`. Malformed payloads are described as such.
pub fn describe_entry(kind: Kind, payload: &[u8]) -> String {
    match kind {
        Kind::Checkpoint => match CheckpointRecord::from_bytes(payload) {
            Some(c) => format!("state {c}{}", if c.is_final { " final" } else { "" }),
            None => format!("malformed checkpoint ({} bytes)", payload.len()),
        },
        Kind::Interrupt => match interrupt_vector(payload) {
            Some(v) => format!("vector {v:#x}"),
            None => format!("malformed interrupt ({} bytes)", payload.len()),
        },
        k if k.is_output() => match OutputRecord::from_bytes(payload) {
            Some(o) => format!(
                "port {:#x} {} bytes digest {:016x}",
                o.port, o.len, o.digest
            ),
            None => format!("malformed output ({} bytes)", payload.len()),
        },
        Kind::Clock if payload.len() == INPUT_PREFIX_LEN + 8 => {
            let port = input_port(payload).unwrap_or(0);
            let ns = u64_at(payload, INPUT_PREFIX_LEN).unwrap_or(0);
            format!("port {port:#x} {ns} ns")
        }
        Kind::PortIn
        | Kind::MmioRead
        | Kind::PacketRx
        | Kind::DiskRead
        | Kind::Clock
        | Kind::Random => match input_port(payload) {
            Some(port) if payload.len() >= INPUT_PREFIX_LEN => {
                let data = &payload[INPUT_PREFIX_LEN..];
                format!(
                    "port {port:#x} {} bytes {}",
                    data.len(),
                    hex_prefix(data, 16)
                )
            }
            _ => format!("malformed input ({} bytes)", payload.len()),
        },
        other => format!("{} bytes (not a VMM entry kind: {other})", payload.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_describe() {
        let o = OutputRecord::of(0x10, b"hello\n");
        assert_eq!(OutputRecord::from_bytes(&o.to_bytes()), Some(o));
        assert_eq!(
            describe_entry(Kind::Console, &o.to_bytes()),
            format!("port 0x10 6 bytes digest {:016x}", fnv1a64(b"hello\n"))
        );
        let c = CheckpointRecord {
            digest: 1,
            mem_digest: 2,
            cpu_digest: 3,
            rip: 0x1234,
            is_final: true,
        };
        assert_eq!(CheckpointRecord::from_bytes(&c.to_bytes()), Some(c));
        assert!(describe_entry(Kind::Checkpoint, &c.to_bytes()).ends_with("rip 0x1234) final"));
        assert_eq!(
            describe_entry(Kind::Interrupt, &interrupt_payload(0x20)),
            "vector 0x20"
        );
        let mut p = vec![0xff; INPUT_PREFIX_LEN];
        put_input_prefix(&mut p, 0x20);
        p.extend_from_slice(&42u64.to_le_bytes());
        assert_eq!(describe_entry(Kind::Clock, &p), "port 0x20 42 ns");
        let mut p = vec![0xff; INPUT_PREFIX_LEN];
        put_input_prefix(&mut p, 0x21);
        p.extend_from_slice(&[0xab; 20]);
        assert_eq!(
            describe_entry(Kind::Random, &p),
            "port 0x21 20 bytes abababababababababababababababab.."
        );
        assert_eq!(
            describe_entry(Kind::Random, &[1]),
            "malformed input (1 bytes)"
        );
        assert_eq!(
            describe_entry(Kind::Checkpoint, &[0; 3]),
            "malformed checkpoint (3 bytes)"
        );
    }
}

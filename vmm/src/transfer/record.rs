//! The records of a state-transfer stream and their framing over any byte
//! stream (`std::io::Write` / `std::io::Read`). Normative:
//! `docs/protocol.md`, "State transfer".
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |            record_len (header + payload + pad, % 8 == 0)      |  0
//! +---------------------------------------------------------------+
//! |       crc32c (Castagnoli) over the record, this field = 0     |  4
//! +---------------------------------------------------------------+
//! |                  magic 0x54535446 ("FTST")                    |  8
//! +---------------+---------------+-------------------------------+
//! |    version    |     kind      |        reserved (0)           | 12
//! +---------------+---------------+-------------------------------+
//! |              index (u64): records of this stream from 0       | 16
//! +---------------------------------------------------------------+
//! |                          payload_len                          | 24
//! +---------------------------------------------------------------+
//! |                         reserved (0)                          | 28
//! +---------------------------------------------------------------+
//! |         payload (payload_len bytes) + zero pad to % 8         | 32
//! +---------------------------------------------------------------+
//! ```

use std::io::{Read, Write};

use crate::layout::PAGE_SIZE;
use crate::payload::CheckpointRecord;
use crate::persist::STATE_VERSION;
use crate::persist::section::{Cursor, DecodeSectionError};

/// `"FTST"` little-endian.
pub const MAGIC: u32 = 0x5453_5446;
/// Bytes of the record header.
pub const HEADER_LEN: usize = 32;
/// Largest payload (a page record of [`MAX_PAGES_PER_RECORD`] pages fits).
pub const MAX_PAYLOAD: usize = 1 << 20;
/// Most pages in one `Pages` record.
pub const MAX_PAGES_PER_RECORD: usize = 248;

/// Record kinds. `Invalid = 0`: a zeroed record means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Never valid.
    Invalid = 0,
    /// First record: who and what is transferred.
    Begin = 1,
    /// Guest pages with their contents.
    Pages = 2,
    /// Runs of all-zero pages.
    ZeroPages = 3,
    /// The `vcpu` section.
    VcpuState = 4,
    /// One device's section.
    DeviceState = 5,
    /// The VM's own sections (`timer`, `journal`) and the boundary's ordinal.
    VmState = 6,
    /// Last record: the join point and its state digest.
    End = 7,
    /// A local disk copy follows: its size.
    Disk = 8,
    /// Sectors of the local disk copy with their contents.
    DiskBlocks = 9,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Begin,
            2 => RecordKind::Pages,
            3 => RecordKind::ZeroPages,
            4 => RecordKind::VcpuState,
            5 => RecordKind::DeviceState,
            6 => RecordKind::VmState,
            7 => RecordKind::End,
            8 => RecordKind::Disk,
            9 => RecordKind::DiskBlocks,
            _ => return None,
        })
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Invalid => "invalid",
            RecordKind::Begin => "begin",
            RecordKind::Pages => "pages",
            RecordKind::ZeroPages => "zero-pages",
            RecordKind::VcpuState => "vcpu-state",
            RecordKind::DeviceState => "device-state",
            RecordKind::VmState => "vm-state",
            RecordKind::End => "end",
            RecordKind::Disk => "disk",
            RecordKind::DiskBlocks => "disk-blocks",
        }
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `Begin` payload: `u32 state_version, u32 page_size, u64 mem_bytes,
/// u64 image_digest, u64 attempt, u16 guest_len, guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// Format version of the state (this build: [`STATE_VERSION`]).
    pub state_version: u32,
    /// Page size (4096).
    pub page_size: u32,
    /// Guest memory in bytes.
    pub mem_bytes: u64,
    /// FNV-1a 64 of the guest image.
    pub image_digest: u64,
    /// The sender's number for this attempt (for logs).
    pub attempt: u64,
    /// Guest name.
    pub guest: String,
}

/// `End` payload: `u64 ordinal, u64 records (before End), u64 next_seq`,
/// then the 40-byte `CheckpointRecord` of the join digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Exit ordinal of the join point.
    pub ordinal: u64,
    /// Records in the stream before this one.
    pub records: u64,
    /// The sender's next log seq at the join point (0: it did not record).
    pub next_seq: u64,
    /// The sender's state digest at the join point.
    pub digest: CheckpointRecord,
}

/// A record's payload, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// See [`Begin`].
    Begin(Begin),
    /// `u32 round, u32 count, count x u32 page index, pad to 8, count x 4096 bytes`.
    Pages {
        /// Pre-copy round (0: the full copy).
        round: u32,
        /// Page indices.
        index: Vec<u32>,
        /// `index.len()` pages of data.
        data: Vec<u8>,
    },
    /// `u32 round, u32 runs, runs x (u32 first, u32 count)`.
    ZeroPages {
        /// Pre-copy round.
        round: u32,
        /// `(first page, count)` runs.
        runs: Vec<(u32, u32)>,
    },
    /// An encoded `vcpu` section.
    VcpuState(Vec<u8>),
    /// An encoded device section.
    DeviceState(Vec<u8>),
    /// `u64 ordinal`, then an encoded state tree (`timer`, `journal`).
    VmState {
        /// Exit ordinal of the boundary.
        ordinal: u64,
        /// The encoded tree.
        tree: Vec<u8>,
    },
    /// See [`End`].
    End(End),
    /// `u64 sectors, u32 sector size (512), u32 0`: the sender's local disk.
    Disk {
        /// Capacity in sectors.
        sectors: u64,
    },
    /// `u32 round, u32 0, u64 first sector, n x 512 bytes` (n >= 1).
    DiskBlocks {
        /// Pre-copy round (0: the full copy).
        round: u32,
        /// First sector.
        sector: u64,
        /// Whole sectors.
        data: Vec<u8>,
    },
}

/// Bytes per disk sector in `disk` / `disk-blocks` records.
pub const DISK_SECTOR: usize = 512;

impl Record {
    /// The kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Begin(_) => RecordKind::Begin,
            Record::Pages { .. } => RecordKind::Pages,
            Record::ZeroPages { .. } => RecordKind::ZeroPages,
            Record::VcpuState(_) => RecordKind::VcpuState,
            Record::DeviceState(_) => RecordKind::DeviceState,
            Record::VmState { .. } => RecordKind::VmState,
            Record::End(_) => RecordKind::End,
            Record::Disk { .. } => RecordKind::Disk,
            Record::DiskBlocks { .. } => RecordKind::DiskBlocks,
        }
    }

    /// Appends the payload to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Record::Begin(b) => {
                out.extend_from_slice(&b.state_version.to_le_bytes());
                out.extend_from_slice(&b.page_size.to_le_bytes());
                out.extend_from_slice(&b.mem_bytes.to_le_bytes());
                out.extend_from_slice(&b.image_digest.to_le_bytes());
                out.extend_from_slice(&b.attempt.to_le_bytes());
                let g = &b.guest.as_bytes()[..b.guest.len().min(usize::from(u16::MAX))];
                out.extend_from_slice(&(g.len() as u16).to_le_bytes());
                out.extend_from_slice(g);
            }
            Record::Pages { round, index, data } => {
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&(index.len() as u32).to_le_bytes());
                for i in index {
                    out.extend_from_slice(&i.to_le_bytes());
                }
                out.resize(out.len().next_multiple_of(8), 0);
                out.extend_from_slice(data);
            }
            Record::ZeroPages { round, runs } => {
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
                for (first, count) in runs {
                    out.extend_from_slice(&first.to_le_bytes());
                    out.extend_from_slice(&count.to_le_bytes());
                }
            }
            Record::VcpuState(b) | Record::DeviceState(b) => out.extend_from_slice(b),
            Record::VmState { ordinal, tree } => {
                out.extend_from_slice(&ordinal.to_le_bytes());
                out.extend_from_slice(tree);
            }
            Record::End(e) => {
                out.extend_from_slice(&e.ordinal.to_le_bytes());
                out.extend_from_slice(&e.records.to_le_bytes());
                out.extend_from_slice(&e.next_seq.to_le_bytes());
                out.extend_from_slice(&e.digest.to_bytes());
            }
            Record::Disk { sectors } => {
                out.extend_from_slice(&sectors.to_le_bytes());
                out.extend_from_slice(&(DISK_SECTOR as u32).to_le_bytes());
                out.extend_from_slice(&[0; 4]);
            }
            Record::DiskBlocks {
                round,
                sector,
                data,
            } => {
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&sector.to_le_bytes());
                out.extend_from_slice(data);
            }
        }
    }

    /// Decodes the payload of a `kind` record.
    pub fn decode(kind: RecordKind, p: &[u8]) -> Result<Record, DecodeSectionError> {
        let mut r = Cursor { b: p, at: 0 };
        let rec = match kind {
            RecordKind::Invalid => unreachable!("rejected by the reader"),
            RecordKind::Begin => {
                let state_version = r.u32("state version")?;
                let page_size = r.u32("page size")?;
                let mem_bytes = r.u64("memory size")?;
                let image_digest = r.u64("image digest")?;
                let attempt = r.u64("attempt")?;
                let guest = r.string("guest name")?;
                Record::Begin(Begin {
                    state_version,
                    page_size,
                    mem_bytes,
                    image_digest,
                    attempt,
                    guest,
                })
            }
            RecordKind::Pages => {
                let round = r.u32("round")?;
                let count = r.u32("page count")? as usize;
                if count > MAX_PAGES_PER_RECORD {
                    return Err(DecodeSectionError::Trailing {
                        what: format!("a page count of {count} (at most {MAX_PAGES_PER_RECORD})"),
                        extra: p.len(),
                    });
                }
                let idx = r.take(count * 4, "page indices")?;
                let index = idx
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let pad = r.at.next_multiple_of(8) - r.at;
                r.take(pad, "page index padding")?;
                let data = r.take(count * PAGE_SIZE, "page data")?.to_vec();
                Record::Pages { round, index, data }
            }
            RecordKind::ZeroPages => {
                let round = r.u32("round")?;
                let n = r.u32("run count")? as usize;
                let b = r.take(n.saturating_mul(8), "zero-page runs")?;
                let runs = b
                    .chunks_exact(8)
                    .map(|c| {
                        (
                            u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                            u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                        )
                    })
                    .collect();
                Record::ZeroPages { round, runs }
            }
            RecordKind::VcpuState => Record::VcpuState(r.take(p.len(), "section")?.to_vec()),
            RecordKind::DeviceState => Record::DeviceState(r.take(p.len(), "section")?.to_vec()),
            RecordKind::VmState => {
                let ordinal = r.u64("ordinal")?;
                let tree = r.take(p.len() - 8, "state tree")?.to_vec();
                Record::VmState { ordinal, tree }
            }
            RecordKind::End => {
                let ordinal = r.u64("ordinal")?;
                let records = r.u64("record count")?;
                let next_seq = r.u64("next seq")?;
                let d = r.take(CheckpointRecord::LEN, "digest")?;
                let digest = CheckpointRecord::from_bytes(d).ok_or_else(|| {
                    DecodeSectionError::Trailing {
                        what: "a malformed digest".into(),
                        extra: d.len(),
                    }
                })?;
                Record::End(End {
                    ordinal,
                    records,
                    next_seq,
                    digest,
                })
            }
            RecordKind::Disk => {
                let sectors = r.u64("disk sectors")?;
                let size = r.u32("sector size")?;
                let _ = r.u32("reserved")?;
                if size as usize != DISK_SECTOR {
                    return Err(DecodeSectionError::Trailing {
                        what: format!("a sector size of {size} (this build: {DISK_SECTOR})"),
                        extra: p.len(),
                    });
                }
                Record::Disk { sectors }
            }
            RecordKind::DiskBlocks => {
                let round = r.u32("round")?;
                let _ = r.u32("reserved")?;
                let sector = r.u64("first sector")?;
                let n = p.len() - r.at;
                if n == 0 || !n.is_multiple_of(DISK_SECTOR) {
                    return Err(DecodeSectionError::Trailing {
                        what: format!(
                            "{n} bytes of disk data (whole sectors of {DISK_SECTOR}, at least one)"
                        ),
                        extra: n,
                    });
                }
                let data = r.take(n, "disk data")?.to_vec();
                Record::DiskBlocks {
                    round,
                    sector,
                    data,
                }
            }
        };
        r.finish(&format!("the {kind} payload"))?;
        Ok(rec)
    }
}

/// CRC-32C of a record with its crc field read as zero.
fn record_crc(rec: &[u8]) -> u32 {
    let c = crc32c::crc32c(&rec[..4]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &rec[8..])
}

/// Writes records to a byte sink, numbering them from 0.
#[derive(Debug)]
pub struct RecordWriter<W> {
    out: W,
    index: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// A writer starting at record 0.
    pub fn new(out: W) -> RecordWriter<W> {
        RecordWriter {
            out,
            index: 0,
            bytes: 0,
            buf: Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD),
        }
    }

    /// Records written so far (the next one's index).
    pub fn records(&self) -> u64 {
        self.index
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Encodes and writes one record; returns its size in bytes.
    pub fn write(&mut self, rec: &Record) -> std::io::Result<usize> {
        let b = &mut self.buf;
        b.clear();
        b.resize(HEADER_LEN, 0);
        rec.encode_payload(b);
        let payload_len = b.len() - HEADER_LEN;
        assert!(payload_len <= MAX_PAYLOAD, "record payload {payload_len}");
        b.resize(b.len().next_multiple_of(8), 0);
        let len = b.len();
        b[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        b[8..12].copy_from_slice(&MAGIC.to_le_bytes());
        b[12] = STATE_VERSION as u8;
        b[13] = rec.kind() as u8;
        b[16..24].copy_from_slice(&self.index.to_le_bytes());
        b[24..28].copy_from_slice(&(payload_len as u32).to_le_bytes());
        let crc = record_crc(b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(b)?;
        self.index += 1;
        self.bytes += len as u64;
        Ok(len)
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// The sink.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reading the next record failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadRecordError {
    /// The stream ended between two records.
    #[error("the stream ended after {records} records, before the end record")]
    Ended {
        /// Records read.
        records: u64,
    },
    /// The stream ended inside a record.
    #[error("the stream was cut inside record {index}: {got} of {want} bytes")]
    Cut {
        /// The record's index.
        index: u64,
        /// Bytes received of it.
        got: usize,
        /// Bytes it should have.
        want: usize,
    },
    /// Reading the stream failed.
    #[error("reading record {index}")]
    Io {
        /// The record's index.
        index: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The record header is invalid.
    #[error("record {index}: {detail}")]
    Header {
        /// The record's index.
        index: u64,
        /// What was wrong, with the values.
        detail: String,
    },
    /// The record was written by another format version.
    #[error("record {index}: state version {found}, this build reads {reads}")]
    Version {
        /// The record's index.
        index: u64,
        /// Version in the record.
        found: u32,
        /// Version this build reads.
        reads: u32,
    },
    /// The record's payload is malformed.
    #[error("record {index} ({kind})")]
    Payload {
        /// The record's index.
        index: u64,
        /// Its kind.
        kind: RecordKind,
        /// What was wrong.
        #[source]
        source: DecodeSectionError,
    },
}

/// Reads records from a byte source, checking framing, CRC and numbering.
#[derive(Debug)]
pub struct RecordReader<R> {
    input: R,
    index: u64,
    bytes: u64,
    buf: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    /// A reader expecting record 0.
    pub fn new(input: R) -> RecordReader<R> {
        RecordReader {
            input,
            index: 0,
            bytes: 0,
            buf: Vec::with_capacity(HEADER_LEN + MAX_PAYLOAD),
        }
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.index
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fills `buf[from..]`; returns the bytes read (short only at EOF).
    fn fill(&mut self, from: usize) -> Result<usize, ReadRecordError> {
        let mut at = from;
        while at < self.buf.len() {
            match self.input.read(&mut self.buf[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ReadRecordError::Io {
                        index: self.index,
                        source,
                    });
                }
            }
        }
        Ok(at - from)
    }

    /// The next record.
    pub fn read(&mut self) -> Result<Record, ReadRecordError> {
        let index = self.index;
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        let got = self.fill(0)?;
        if got == 0 {
            return Err(ReadRecordError::Ended { records: index });
        }
        if got < HEADER_LEN {
            return Err(ReadRecordError::Cut {
                index,
                got,
                want: HEADER_LEN,
            });
        }
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let bad = |detail: String| ReadRecordError::Header { index, detail };
        let magic = u32_at(&self.buf, 8);
        if magic != MAGIC {
            return Err(bad(format!(
                "magic {magic:#010x}, expected {MAGIC:#010x} (not a state-transfer record)"
            )));
        }
        // Stable across versions: record_len, crc32c, magic, version.
        let len = u32_at(&self.buf, 0) as usize;
        if !(HEADER_LEN..=HEADER_LEN + MAX_PAYLOAD).contains(&len) || !len.is_multiple_of(8) {
            return Err(bad(format!(
                "record_len {len} is not a multiple of 8 in {HEADER_LEN}..={}",
                HEADER_LEN + MAX_PAYLOAD
            )));
        }
        self.buf.resize(len, 0);
        let got = self.fill(HEADER_LEN)?;
        if got < len - HEADER_LEN {
            return Err(ReadRecordError::Cut {
                index,
                got: HEADER_LEN + got,
                want: len,
            });
        }
        let crc = u32_at(&self.buf, 4);
        let want = record_crc(&self.buf);
        if crc != want {
            return Err(bad(format!(
                "crc32c {crc:#010x}, the record's bytes give {want:#010x}"
            )));
        }
        let version = u32::from(self.buf[12]);
        if version != STATE_VERSION {
            return Err(ReadRecordError::Version {
                index,
                found: version,
                reads: STATE_VERSION,
            });
        }
        let payload_len = u32_at(&self.buf, 24) as usize;
        if len != (HEADER_LEN + payload_len).next_multiple_of(8)
            || self.buf[14..16] != [0, 0]
            || u32_at(&self.buf, 28) != 0
        {
            return Err(bad(format!(
                "payload_len {payload_len} does not fit record_len {len}, or reserved bits are set"
            )));
        }
        let seq = u64::from_le_bytes(self.buf[16..24].try_into().unwrap_or([0; 8]));
        if seq != index {
            return Err(bad(format!(
                "is numbered {seq}, expected {index} (a record was lost or repeated)"
            )));
        }
        let kind = RecordKind::from_u8(self.buf[13])
            .ok_or_else(|| bad(format!("unknown kind {}", self.buf[13])))?;
        let payload = &self.buf[HEADER_LEN..HEADER_LEN + payload_len];
        if self.buf[HEADER_LEN + payload_len..].iter().any(|&b| b != 0) {
            return Err(bad("nonzero padding".into()));
        }
        let rec = Record::decode(kind, payload).map_err(|source| ReadRecordError::Payload {
            index,
            kind,
            source,
        })?;
        self.index += 1;
        self.bytes += len as u64;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record::Begin(Begin {
                state_version: STATE_VERSION,
                page_size: 4096,
                mem_bytes: 64 << 20,
                image_digest: 7,
                attempt: 1,
                guest: "kv".into(),
            }),
            Record::Pages {
                round: 0,
                index: vec![3, 9, 11],
                data: (0..3 * PAGE_SIZE).map(|i| i as u8).collect(),
            },
            Record::ZeroPages {
                round: 0,
                runs: vec![(0, 3), (4, 5)],
            },
            Record::VcpuState(vec![1, 2, 3]),
            Record::DeviceState(vec![]),
            Record::VmState {
                ordinal: 42,
                tree: vec![0; 4],
            },
            Record::End(End {
                ordinal: 42,
                records: 6,
                next_seq: 0,
                digest: CheckpointRecord {
                    digest: 1,
                    mem_digest: 2,
                    cpu_digest: 3,
                    rip: 4,
                    is_final: false,
                },
            }),
        ]
    }

    fn stream() -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new());
        for r in sample() {
            w.write(&r).unwrap();
        }
        w.into_inner()
    }

    #[test]
    fn records_round_trip() {
        let bytes = stream();
        assert!(bytes.len().is_multiple_of(8));
        let mut r = RecordReader::new(bytes.as_slice());
        for want in sample() {
            assert_eq!(r.read().unwrap(), want);
        }
        assert!(matches!(
            r.read().unwrap_err(),
            ReadRecordError::Ended { records: 7 }
        ));
    }

    #[test]
    fn a_cut_anywhere_and_any_flipped_bit_are_caught() {
        let bytes = stream();
        for cut in 0..bytes.len() {
            let mut r = RecordReader::new(&bytes[..cut]);
            let e = loop {
                match r.read() {
                    Ok(Record::End(_)) => panic!("cut {cut}: reached End"),
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(
                    e,
                    ReadRecordError::Cut { .. } | ReadRecordError::Ended { .. }
                ),
                "cut {cut}: {e}"
            );
        }
        for bit in (0..bytes.len() * 8).step_by(7) {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let mut r = RecordReader::new(b.as_slice());
            let ok = (0..7).all(|_| r.read().is_ok());
            assert!(!ok, "bit {bit} flipped unnoticed");
        }
    }

    #[test]
    fn another_version_is_named() {
        let mut b = stream();
        b[12] = 3;
        let len = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
        let crc = record_crc(&b[..len]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        let e = RecordReader::new(b.as_slice()).read().unwrap_err();
        assert_eq!(
            e.to_string(),
            "record 0: state version 3, this build reads 1"
        );
    }
}

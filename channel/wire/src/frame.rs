//! Header layout, kinds, flags, encode and decode. See the crate docs for the diagram.

use crate::error::{DecodeError, EncodeError, Reason};

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Every frame's length is a multiple of this.
pub const FRAME_ALIGN: usize = 8;
/// `b"FTVM"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FTVM");
/// The format version this crate writes and accepts.
pub const VERSION: u8 = 2;
/// Largest payload of one entry (1 MiB).
pub const MAX_PAYLOAD_LEN: usize = 1 << 20;
/// Largest frame: a maximum payload plus header and pad.
pub const MAX_FRAME_LEN: usize = frame_len(MAX_PAYLOAD_LEN);

const OFF_LEN: usize = 0;
const OFF_CRC: usize = 4;
const OFF_MAGIC: usize = 8;
const OFF_VERSION: usize = 12;
const OFF_KIND: usize = 13;
const OFF_FLAGS: usize = 14;
const OFF_SEQ: usize = 16;
const OFF_ORDINAL: usize = 24;
const OFF_PAYLOAD_LEN: usize = 32;
const OFF_RESERVED: usize = 36;

/// Whole frame length for a payload of `payload_len` bytes (header + payload + pad).
pub const fn frame_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// What an entry is. `Invalid = 0` so that a zeroed frame means nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// Never valid on the wire.
    Invalid = 0,
    /// Control: handshake ([`crate::control::Hello`]).
    Hello = 1,
    /// Control: orderly end of a stream ([`crate::control::Goodbye`]).
    Goodbye = 2,
    /// Control: liveness on an idle direction ([`crate::control::Tick`]).
    Tick = 3,
    /// Control: cumulative acknowledgement ([`crate::control::Ack`]).
    Ack = 4,
    /// Control: the backup stopped replaying ([`crate::control::Stop`]).
    Stop = 5,
    /// Control: the primary's released-through watermark ([`crate::control::Released`]).
    Released = 6,
    /// Digest of guest state at an exit, compared by the replayer.
    Checkpoint = 8,
    /// Value returned by a port `in`.
    PortIn = 16,
    /// Value returned by an MMIO read.
    MmioRead = 17,
    /// Packets placed in the guest's receive ring.
    PacketRx = 18,
    /// Data of a completed disk read.
    DiskRead = 19,
    /// Value of the paravirtual clock.
    Clock = 20,
    /// Bytes of the paravirtual random device.
    Random = 21,
    /// An interrupt injected at this exit.
    Interrupt = 22,
    /// Output: a packet the guest transmits.
    NetTx = 32,
    /// Output: a write to a shared disk.
    DiskWrite = 33,
    /// Output: console bytes.
    Console = 34,
    /// Opaque payload for tools and benchmarks (`ftvm channel source`).
    Opaque = 48,
    /// Opaque output for tools and benchmarks.
    OpaqueOutput = 49,
}

impl Kind {
    /// Every valid kind, for tests and tools.
    pub const ALL: [Kind; 19] = [
        Kind::Hello,
        Kind::Goodbye,
        Kind::Tick,
        Kind::Ack,
        Kind::Stop,
        Kind::Released,
        Kind::Checkpoint,
        Kind::PortIn,
        Kind::MmioRead,
        Kind::PacketRx,
        Kind::DiskRead,
        Kind::Clock,
        Kind::Random,
        Kind::Interrupt,
        Kind::NetTx,
        Kind::DiskWrite,
        Kind::Console,
        Kind::Opaque,
        Kind::OpaqueOutput,
    ];

    /// Decodes a kind byte; `None` for unknown values and for `Invalid`.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == v)
    }

    /// Control frames carry sequence number 0 and are not log entries.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            Kind::Hello | Kind::Goodbye | Kind::Tick | Kind::Ack | Kind::Stop | Kind::Released
        )
    }

    /// Outputs wait for the backup's ACK before leaving the primary.
    pub fn is_output(self) -> bool {
        matches!(
            self,
            Kind::NetTx | Kind::DiskWrite | Kind::Console | Kind::OpaqueOutput
        )
    }

    /// Lower-case name used by tools (`ftvm log inspect`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Invalid => "invalid",
            Kind::Hello => "hello",
            Kind::Goodbye => "goodbye",
            Kind::Tick => "tick",
            Kind::Ack => "ack",
            Kind::Stop => "stop",
            Kind::Released => "released",
            Kind::Checkpoint => "checkpoint",
            Kind::PortIn => "port-in",
            Kind::MmioRead => "mmio-read",
            Kind::PacketRx => "packet-rx",
            Kind::DiskRead => "disk-read",
            Kind::Clock => "clock",
            Kind::Random => "random",
            Kind::Interrupt => "interrupt",
            Kind::NetTx => "net-tx",
            Kind::DiskWrite => "disk-write",
            Kind::Console => "console",
            Kind::Opaque => "opaque",
            Kind::OpaqueOutput => "opaque-output",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Header flags. Unknown bits are rejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u16);

impl Flags {
    /// The entry is an output: set exactly when [`Kind::is_output`].
    pub const OUTPUT: Flags = Flags(1);
    /// Bits defined in this version.
    pub const KNOWN: u16 = 1;

    /// The flags a frame of `kind` must carry.
    pub fn for_kind(kind: Kind) -> Flags {
        if kind.is_output() {
            Flags::OUTPUT
        } else {
            Flags(0)
        }
    }

    /// Whether the OUTPUT bit is set.
    pub fn is_output(self) -> bool {
        self.0 & Flags::OUTPUT.0 != 0
    }
}

/// The decoded fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the entry is.
    pub kind: Kind,
    /// Sequence number: contiguous from 1 for log entries, 0 for control frames.
    pub seq: u64,
    /// Guest exit ordinal the entry belongs to (0 where meaningless).
    pub exit_ordinal: u64,
    /// Payload bytes (without pad).
    pub payload_len: u32,
}

impl Header {
    /// A header for `kind` with the given position and payload length.
    pub fn new(kind: Kind, seq: u64, exit_ordinal: u64, payload_len: usize) -> Header {
        Header {
            kind,
            seq,
            exit_ordinal,
            // Checked against MAX_PAYLOAD_LEN by `seal`/`encode`; saturate here.
            payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        }
    }

    /// Flags implied by the kind.
    pub fn flags(&self) -> Flags {
        Flags::for_kind(self.kind)
    }

    /// Whole frame length of this header's frame.
    pub fn frame_len(&self) -> usize {
        frame_len(self.payload_len as usize)
    }
}

/// A decoded, CRC-checked frame borrowing its payload from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The payload (without pad).
    pub payload: &'a [u8],
    /// The whole frame as it was on the wire (header, payload, pad).
    pub bytes: &'a [u8],
}

fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// CRC-32C of a frame whose CRC field is treated as zero.
fn frame_crc(frame: &[u8]) -> u32 {
    let c = crc32c::crc32c(&frame[..OFF_CRC]);
    let c = crc32c::crc32c_append(c, &[0u8; 4]);
    crc32c::crc32c_append(c, &frame[OFF_CRC + 4..])
}

/// Finishes a frame whose payload is already in place at `frame[HEADER_LEN..]`:
/// writes the header (including the length word), zeroes the pad and stores
/// the CRC. `frame` must be exactly `header.frame_len()` bytes.
///
/// This is the in-place half of [`encode`]: the log ring hands out a slice,
/// the VMM writes packet bytes straight into it, then seals.
pub fn seal(frame: &mut [u8], header: &Header) -> Result<(), EncodeError> {
    let payload_len = header.payload_len as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(EncodeError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    if header.kind == Kind::Invalid {
        return Err(EncodeError::InvalidKind);
    }
    if header.kind.is_control() != (header.seq == 0) {
        return Err(EncodeError::BadSeq {
            kind: header.kind,
            seq: header.seq,
        });
    }
    let len = frame_len(payload_len);
    if frame.len() != len {
        return Err(EncodeError::BufferSize {
            have: frame.len(),
            need: len,
        });
    }
    // `len <= MAX_FRAME_LEN` fits a u32 (checked above via payload_len).
    frame[OFF_LEN..OFF_LEN + 4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
    frame[OFF_VERSION] = VERSION;
    frame[OFF_KIND] = header.kind as u8;
    frame[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&header.flags().0.to_le_bytes());
    frame[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&header.seq.to_le_bytes());
    frame[OFF_ORDINAL..OFF_ORDINAL + 8].copy_from_slice(&header.exit_ordinal.to_le_bytes());
    frame[OFF_PAYLOAD_LEN..OFF_PAYLOAD_LEN + 4].copy_from_slice(&header.payload_len.to_le_bytes());
    frame[OFF_RESERVED..OFF_RESERVED + 4].fill(0);
    frame[HEADER_LEN + payload_len..].fill(0);
    let crc = frame_crc(frame);
    frame[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Writes a whole frame (header, `payload`, pad, CRC) at the start of `buf`
/// and returns its length.
pub fn encode(buf: &mut [u8], header: &Header, payload: &[u8]) -> Result<usize, EncodeError> {
    if payload.len() != header.payload_len as usize {
        return Err(EncodeError::PayloadMismatch {
            header: header.payload_len as usize,
            payload: payload.len(),
        });
    }
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(EncodeError::PayloadTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD_LEN,
        });
    }
    let len = frame_len(payload.len());
    if buf.len() < len {
        return Err(EncodeError::BufferSize {
            have: buf.len(),
            need: len,
        });
    }
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    seal(&mut buf[..len], header)?;
    Ok(len)
}

/// Reads and checks only the length word at the start of `buf`: `Ok(None)`
/// when fewer than 4 bytes are present, `Ok(Some(len))` for a plausible
/// length, an error for a length no valid frame has. Lets a stream reader
/// reject an oversized frame before waiting for its bytes.
pub fn peek_frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = get_u32(buf, OFF_LEN) as usize;
    if !(HEADER_LEN..=MAX_FRAME_LEN).contains(&len) || !len.is_multiple_of(FRAME_ALIGN) {
        return Err(DecodeError::new(Reason::BadFrameLen { frame_len: len }));
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf`, returning it and its length.
///
/// [`Reason::Truncated`] means `buf` holds a valid prefix so far; every other
/// reason means the bytes can never become a valid frame. The error carries
/// the header's sequence number once enough bytes are present to read it.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    let Some(len) = peek_frame_len(buf)? else {
        return Err(DecodeError::new(Reason::Truncated {
            have: buf.len(),
            need: HEADER_LEN,
        }));
    };
    // Header fields are checked as soon as the header is present, so a stream
    // reader rejects garbage without waiting for a whole (bogus) frame.
    let have_header = buf.len() >= HEADER_LEN;
    if !have_header {
        return Err(DecodeError::new(Reason::Truncated {
            have: buf.len(),
            need: len,
        }));
    }
    let seq = get_u64(buf, OFF_SEQ);
    let err = |reason| Err(DecodeError::new(reason).with_seq(seq));
    let magic = get_u32(buf, OFF_MAGIC);
    if magic != MAGIC {
        return err(Reason::BadMagic { found: magic });
    }
    let version = buf[OFF_VERSION];
    if version != VERSION {
        return err(Reason::UnknownVersion {
            found: version,
            supported: VERSION,
        });
    }
    let kind_byte = buf[OFF_KIND];
    let Some(kind) = Kind::from_u8(kind_byte) else {
        return err(Reason::UnknownKind { found: kind_byte });
    };
    let flags = Flags(get_u16(buf, OFF_FLAGS));
    if flags.0 & !Flags::KNOWN != 0 || flags != Flags::for_kind(kind) {
        return err(Reason::BadFlags {
            flags: flags.0,
            kind,
        });
    }
    let payload_len = get_u32(buf, OFF_PAYLOAD_LEN) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return err(Reason::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    if frame_len(payload_len) != len {
        return err(Reason::LengthMismatch {
            frame_len: len,
            payload_len,
        });
    }
    let reserved = get_u32(buf, OFF_RESERVED);
    if reserved != 0 {
        return err(Reason::NonZeroReserved { found: reserved });
    }
    if kind.is_control() != (seq == 0) {
        return err(Reason::BadSeq { kind, seq });
    }
    if buf.len() < len {
        return err(Reason::Truncated {
            have: buf.len(),
            need: len,
        });
    }
    let frame = &buf[..len];
    let stored = get_u32(frame, OFF_CRC);
    let computed = frame_crc(frame);
    if stored != computed {
        return err(Reason::CrcMismatch { stored, computed });
    }
    if frame[HEADER_LEN + payload_len..].iter().any(|b| *b != 0) {
        return err(Reason::NonZeroPad);
    }
    let header = Header {
        kind,
        seq,
        exit_ordinal: get_u64(frame, OFF_ORDINAL),
        payload_len: payload_len as u32,
    };
    Ok((
        Frame {
            header,
            payload: &frame[HEADER_LEN..HEADER_LEN + payload_len],
            bytes: frame,
        },
        len,
    ))
}

/// Fast accessors for code that walks frames it wrote itself (the sender
/// scanning its ring) or that [`decode`] already checked (a backup's replay
/// ring): no validation, callers must pass such a frame.
pub mod raw {
    use super::*;

    /// The frame at the start of `buf`, read without checking it (no CRC):
    /// for a frame [`decode`] accepted before (or [`seal`]/[`encode`] made).
    /// `None` only if `buf` does not even hold what its header claims or
    /// names no kind — which such a frame never does.
    pub fn frame(buf: &[u8]) -> Option<Frame<'_>> {
        let kind = Kind::from_u8(*buf.get(OFF_KIND)?)?;
        if buf.len() < HEADER_LEN {
            return None;
        }
        let payload_len = get_u32(buf, OFF_PAYLOAD_LEN) as usize;
        let len = frame_len(payload_len);
        let bytes = buf.get(..len)?;
        Some(Frame {
            header: Header {
                kind,
                seq: get_u64(bytes, OFF_SEQ),
                exit_ordinal: get_u64(bytes, OFF_ORDINAL),
                payload_len: payload_len as u32,
            },
            payload: &bytes[HEADER_LEN..HEADER_LEN + payload_len],
            bytes,
        })
    }

    /// The OUTPUT flag of a sealed frame.
    pub fn is_output(frame: &[u8]) -> bool {
        Flags(get_u16(frame, OFF_FLAGS)).is_output()
    }

    /// The sequence number of a sealed frame.
    pub fn seq(frame: &[u8]) -> u64 {
        get_u64(frame, OFF_SEQ)
    }

    /// The kind byte of a sealed frame.
    pub fn kind_byte(frame: &[u8]) -> u8 {
        frame[OFF_KIND]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; frame_len(payload.len())];
        let h = Header::new(kind, seq, 77, payload.len());
        encode(&mut buf, &h, payload).unwrap();
        buf
    }

    #[test]
    fn round_trip_every_kind() {
        for kind in Kind::ALL {
            let seq = if kind.is_control() { 0 } else { 42 };
            let buf = sample(kind, seq, b"hello world");
            let (f, n) = decode(&buf).unwrap();
            assert_eq!(n, buf.len());
            assert_eq!(n % FRAME_ALIGN, 0);
            assert_eq!(f.header.kind, kind);
            assert_eq!(f.header.seq, seq);
            assert_eq!(f.header.exit_ordinal, 77);
            assert_eq!(f.payload, b"hello world");
            assert_eq!(raw::is_output(&buf), kind.is_output());
            // The unchecked reader sees the same frame.
            let r = raw::frame(&buf).unwrap();
            assert_eq!(
                (r.header, r.payload, r.bytes),
                (f.header, f.payload, f.bytes)
            );
        }
    }

    #[test]
    fn zeroed_frame_is_rejected() {
        let e = decode(&[0u8; 64]).unwrap_err();
        assert!(
            matches!(e.reason, Reason::BadFrameLen { frame_len: 0 }),
            "{e}"
        );
    }

    #[test]
    fn oversized_length_rejected_before_payload_arrives() {
        let mut buf = sample(Kind::PacketRx, 5, &[1; 16]);
        buf[0..4].copy_from_slice(&((MAX_FRAME_LEN + 8) as u32).to_le_bytes());
        let e = decode(&buf[..8]).unwrap_err();
        assert!(matches!(e.reason, Reason::BadFrameLen { .. }), "{e}");
        assert!(e.to_string().contains(&(MAX_FRAME_LEN + 8).to_string()));
    }

    #[test]
    fn errors_name_reason_and_seq() {
        let mut buf = sample(Kind::NetTx, 9, b"abc");
        buf[12] = 7; // version
        let e = decode(&buf).unwrap_err();
        assert_eq!(e.seq, Some(9));
        let msg = e.to_string();
        assert!(msg.contains("version 7") && msg.contains("seq 9"), "{msg}");

        let mut buf = sample(Kind::NetTx, 9, b"abc");
        buf[41] ^= 1;
        let e = decode(&buf).unwrap_err();
        assert!(matches!(e.reason, Reason::CrcMismatch { .. }), "{e}");

        let buf = sample(Kind::NetTx, 9, &[3; 100]);
        let e = decode(&buf[..60]).unwrap_err();
        assert!(e.is_truncated());
        assert_eq!(e.seq, Some(9));
    }

    #[test]
    fn seal_refuses_bad_input() {
        let mut buf = vec![0u8; 48];
        assert!(seal(&mut buf, &Header::new(Kind::Invalid, 1, 0, 8)).is_err());
        assert!(seal(&mut buf, &Header::new(Kind::Tick, 3, 0, 8)).is_err());
        assert!(seal(&mut buf, &Header::new(Kind::NetTx, 0, 0, 8)).is_err());
        assert!(seal(&mut buf, &Header::new(Kind::NetTx, 1, 0, 9)).is_err());
        assert!(seal(&mut buf, &Header::new(Kind::NetTx, 1, 0, 8)).is_ok());
        let big = Header::new(Kind::NetTx, 1, 0, MAX_PAYLOAD_LEN + 1);
        assert!(matches!(
            encode(&mut buf, &big, &[]),
            Err(EncodeError::PayloadMismatch { .. })
        ));
    }

    fn any_kind() -> impl Strategy<Value = Kind> {
        prop::sample::select(Kind::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_behind_a_valid_prefix_never_panic(
            tail in prop::collection::vec(any::<u8>(), 0..120),
            len in prop::sample::select(vec![40u32, 48, 64, 128, 160]),
        ) {
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&MAGIC.to_le_bytes());
            bytes.push(VERSION);
            bytes.extend_from_slice(&tail);
            if let Ok((f, n)) = decode(&bytes) {
                prop_assert_eq!(n, len as usize);
                prop_assert!(f.payload.len() <= n);
            }
        }

        #[test]
        fn every_single_bit_flip_is_rejected(
            kind in any_kind(),
            seq in 1u64..u64::MAX,
            payload in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let seq = if kind.is_control() { 0 } else { seq };
            let frame = sample(kind, seq, &payload);
            prop_assert!(decode(&frame).is_ok());
            for bit in 0..frame.len() * 8 {
                let mut bad = frame.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode(&bad).is_err(), "flip of bit {} accepted", bit);
            }
        }
    }
}

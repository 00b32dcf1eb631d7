//! Typed errors of encoding and decoding, carrying the offending values.

use crate::frame::Kind;

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Fewer bytes than the frame needs; a stream reader waits for more.
    #[error("truncated frame: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The length word is below the header size, above the maximum or not a multiple of 8.
    #[error(
        "bad frame length {frame_len} (allowed {min}..={max}, multiple of 8)",
        min = crate::HEADER_LEN,
        max = crate::MAX_FRAME_LEN
    )]
    BadFrameLen {
        /// The length word found.
        frame_len: usize,
    },
    /// The magic is not `FTVM`.
    #[error("bad magic {found:#010x} (expected {expected:#010x})", expected = crate::MAGIC)]
    BadMagic {
        /// The magic found.
        found: u32,
    },
    /// A format version this build does not speak.
    #[error("unknown format version {found} (this build speaks version {supported})")]
    UnknownVersion {
        /// The version found.
        found: u8,
        /// The version supported.
        supported: u8,
    },
    /// A kind byte with no meaning in this version.
    #[error("unknown entry kind {found}")]
    UnknownKind {
        /// The kind byte found.
        found: u8,
    },
    /// Unknown flag bits, or an OUTPUT flag that disagrees with the kind.
    #[error("flags {flags:#06x} invalid for kind {kind}")]
    BadFlags {
        /// The flags found.
        flags: u16,
        /// The frame's kind.
        kind: Kind,
    },
    /// The payload length is over the maximum.
    #[error("payload length {len} exceeds maximum {max}")]
    PayloadTooLarge {
        /// The payload length found.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The length word disagrees with the payload length.
    #[error("frame length {frame_len} does not match payload length {payload_len}")]
    LengthMismatch {
        /// The length word.
        frame_len: usize,
        /// The payload length field.
        payload_len: usize,
    },
    /// The reserved header word is not zero.
    #[error("reserved header word is {found:#x}, must be 0")]
    NonZeroReserved {
        /// The value found.
        found: u32,
    },
    /// Control frames carry seq 0, log entries seq >= 1.
    #[error("sequence number {seq} invalid for kind {kind}")]
    BadSeq {
        /// The frame's kind.
        kind: Kind,
        /// The sequence number found.
        seq: u64,
    },
    /// The CRC-32C does not match the bytes.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// Pad bytes after the payload are not zero.
    #[error("non-zero pad bytes after the payload")]
    NonZeroPad,
}

/// A frame that failed to decode: the reason, plus the sequence number in
/// its header and its byte offset in the stream where known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}{}{}",
    .seq.map(|s| format!(" (header claims seq {s}, unverified)")).unwrap_or_default(),
    .offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
pub struct DecodeError {
    /// Why the bytes were rejected.
    pub reason: Reason,
    /// Sequence number read from the header (untrusted if the CRC failed).
    pub seq: Option<u64>,
    /// Byte offset of the frame in its stream or file.
    pub offset: Option<u64>,
}

impl DecodeError {
    /// An error with only a reason.
    pub fn new(reason: Reason) -> DecodeError {
        DecodeError {
            reason,
            seq: None,
            offset: None,
        }
    }

    /// Adds the header's sequence number.
    pub fn with_seq(mut self, seq: u64) -> DecodeError {
        self.seq = Some(seq);
        self
    }

    /// Adds the frame's byte offset.
    pub fn at_offset(mut self, offset: u64) -> DecodeError {
        self.offset = Some(offset);
        self
    }

    /// True when more bytes could still make the frame valid.
    pub fn is_truncated(&self) -> bool {
        matches!(self.reason, Reason::Truncated { .. })
    }
}

/// Why a frame could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload is over the maximum.
    #[error("payload length {len} exceeds maximum {max}")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The header's payload length differs from the payload given.
    #[error("header payload length {header} differs from payload of {payload} bytes")]
    PayloadMismatch {
        /// From the header.
        header: usize,
        /// Of the slice.
        payload: usize,
    },
    /// The buffer is not the size the frame needs.
    #[error("frame buffer of {have} bytes, frame needs {need}")]
    BufferSize {
        /// Buffer size.
        have: usize,
        /// Frame size.
        need: usize,
    },
    /// `Kind::Invalid` is never written.
    #[error("kind invalid cannot be encoded")]
    InvalidKind,
    /// Control frames need seq 0, log entries seq >= 1.
    #[error("sequence number {seq} invalid for kind {kind}")]
    BadSeq {
        /// The kind.
        kind: Kind,
        /// The sequence number.
        seq: u64,
    },
}

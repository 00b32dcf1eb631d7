//! Errors of the datagram codec. No `std`: `Display` is written by hand so the
//! guest can print them through its console.

use core::fmt;

/// A datagram that is not a valid request or reply. Every variant names the
/// field and the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDecodeError {
    /// The datagram ends before a field does.
    Truncated {
        /// The field that does not fit.
        field: &'static str,
        /// Bytes needed up to the end of that field.
        need: usize,
        /// Bytes in the datagram.
        have: usize,
    },
    /// The first four bytes are not the expected magic.
    BadMagic {
        /// Magic expected.
        expected: u32,
        /// Magic found.
        found: u32,
    },
    /// The op byte is not PUT, GET, APPEND or CAS.
    BadOp {
        /// Value found.
        value: u8,
    },
    /// The status byte of a reply is not a known status.
    BadStatus {
        /// Value found.
        value: u8,
    },
    /// A length field exceeds its limit.
    TooLong {
        /// The field.
        field: &'static str,
        /// Length found.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// A field that must be zero (reserved, or a value an op does not take) is not.
    NotZero {
        /// The field.
        field: &'static str,
        /// Value found.
        value: u64,
    },
    /// The datagram is longer than its header says.
    TrailingBytes {
        /// Length implied by the header.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
}

impl fmt::Display for KvDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KvDecodeError::Truncated { field, need, have } => write!(
                f,
                "datagram truncated in field {field}: need {need} bytes, have {have}"
            ),
            KvDecodeError::BadMagic { expected, found } => {
                write!(f, "bad magic {found:#010x}, expected {expected:#010x}")
            }
            KvDecodeError::BadOp { value } => {
                write!(
                    f,
                    "field op: invalid value {value} (PUT=1 GET=2 APPEND=3 CAS=4)"
                )
            }
            KvDecodeError::BadStatus { value } => {
                write!(f, "field status: invalid value {value}")
            }
            KvDecodeError::TooLong { field, len, max } => {
                write!(f, "field {field}: length {len} exceeds maximum {max}")
            }
            KvDecodeError::NotZero { field, value } => {
                write!(f, "field {field} must be 0, found {value}")
            }
            KvDecodeError::TrailingBytes { expected, actual } => write!(
                f,
                "datagram is {actual} bytes, its header describes {expected}"
            ),
        }
    }
}

impl core::error::Error for KvDecodeError {}

/// A request or reply that cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvEncodeError {
    /// A key or value exceeds its limit.
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// The output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A field the op does not take is not empty (e.g. a value on GET).
    Unexpected {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

impl fmt::Display for KvEncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KvEncodeError::TooLong { field, len, max } => {
                write!(f, "field {field}: length {len} exceeds maximum {max}")
            }
            KvEncodeError::BufferTooSmall { need, have } => {
                write!(f, "output buffer of {have} bytes, need {need}")
            }
            KvEncodeError::Unexpected { field, len } => {
                write!(
                    f,
                    "field {field} must be empty for this op, has {len} bytes"
                )
            }
        }
    }
}

impl core::error::Error for KvEncodeError {}

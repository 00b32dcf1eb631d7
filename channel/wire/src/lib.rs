//! ftvm-wire: the log-entry wire format. Normative spec: `docs/protocol.md`.
//!
//! Contract: every byte string either decodes to a valid [`Frame`] or to a
//! [`DecodeError`] naming the reason (and the sequence number / offset where
//! known); nothing here panics on input, performs I/O, or uses `unsafe`.
//!
//! # Frame layout (version 1, all fields little-endian)
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |                 frame_len (whole frame, % 8 == 0)             |  0
//! +---------------------------------------------------------------+
//! |        crc32c (Castagnoli) over the frame, this field = 0     |  4
//! +---------------------------------------------------------------+
//! |                       magic "FTVM"                            |  8
//! +---------------+---------------+-------------------------------+
//! |    version    |     kind      |             flags             | 12
//! +---------------+---------------+-------------------------------+
//! |                     seq (u64, per direction)                  | 16
//! |                                                               |
//! +---------------------------------------------------------------+
//! |                exit_ordinal (u64, guest exits)                | 24
//! |                                                               |
//! +---------------------------------------------------------------+
//! |                         payload_len                           | 32
//! +---------------------------------------------------------------+
//! |                      reserved (must be 0)                     | 36
//! +---------------------------------------------------------------+
//! |         payload (payload_len bytes) + zero pad to % 8         | 40
//! +---------------------------------------------------------------+
//! ```
//!
//! `frame_len == align8(40 + payload_len)` always; the pad bytes are zero and
//! covered by the CRC. Because the length word is first and frames are 8-byte
//! aligned, a frame is also a record of the log ring (`ftvm-ring`): the
//! channel ships ring bytes as they are.
//!
//! # The main flow
//!
//! 1. A producer reserves [`frame_len`]`(payload_len)` bytes, writes the payload
//!    at [`HEADER_LEN`] and calls [`seal`] (or [`encode`] with a payload slice).
//! 2. A receiver calls [`decode`] on its buffer: `Ok` gives the frame and the
//!    bytes consumed; [`Reason::Truncated`] means "wait for more bytes"; every
//!    other reason is fatal for that stream.
//! 3. Control frames ([`Kind::Hello`], [`Kind::Ack`], [`Kind::Tick`],
//!    [`Kind::Goodbye`]) carry typed payloads from [`control`] and sequence
//!    number 0; log entries carry contiguous sequence numbers from 1.
//!
//! # Versioning
//!
//! `version` is bumped on any incompatible change of the header or of a kind's
//! payload. A receiver rejects versions it does not know ([`Reason::UnknownVersion`]);
//! peers exchange versions in [`control::Hello`] before any entry. New kinds
//! may be added within a version only as kinds an older receiver may reject.

#![forbid(unsafe_code)]

pub mod control;
mod error;
mod frame;
pub mod logfile;

pub use error::{DecodeError, EncodeError, Reason};
pub use frame::{
    FRAME_ALIGN, Flags, Frame, HEADER_LEN, Header, Kind, MAGIC, MAX_FRAME_LEN, MAX_PAYLOAD_LEN,
    VERSION, decode, encode, frame_len, peek_frame_len, raw, seal,
};

//! The request and reply datagrams.
//!
//! Both start with a 32-byte little-endian header; the variable fields follow
//! back to back, with explicit lengths in the header, and nothing after them.
//!
//! ```text
//! request                                   reply
//! 0  u32 magic "FKVQ"                       0  u32 magic "FKVA"
//! 4  u8  op (PUT=1 GET=2 APPEND=3 CAS=4)    4  u8  status (OK=1 ...)
//! 5  u8  reserved, 0                        5  u8  op echoed (0 if unknown)
//! 6  u16 key_len    (<= 64)                 6  u16 reserved, 0
//! 8  u16 value_len  (<= 512)                8  u16 value_len (<= 512)
//! 10 u16 new_value_len (<= 512, CAS only)   10 u16 reserved, 0
//! 12 u32 reserved, 0                        12 u32 reserved, 0
//! 16 u64 client_id                          16 u64 client_id
//! 24 u64 request_no (>= 1)                  24 u64 request_no
//! 32 key, value, new_value                  32 value
//! ```
//!
//! `value` is the value to PUT or APPEND, or the expected old value of a CAS;
//! `new_value` is the value a CAS installs. A reply's value is the stored
//! value for GET, the value after an APPEND, and the current value for a CAS
//! that did not match; it is empty otherwise.

use crate::error::{KvDecodeError, KvEncodeError};

/// Longest key in bytes.
pub const MAX_KEY: usize = 64;
/// Longest value in bytes (also the longest value an APPEND may produce).
pub const MAX_VALUE: usize = 512;
/// Longest datagram either way; the NIC's packet buffers hold at least this.
pub const MAX_DATAGRAM: usize = 1400;
/// Header length of requests and replies.
pub const HEADER_LEN: usize = 32;
/// Request magic: the bytes `FKVQ`.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"FKVQ");
/// Reply magic: the bytes `FKVA`.
pub const REPLY_MAGIC: u32 = u32::from_le_bytes(*b"FKVA");

// The largest request fits a datagram (checked at compile time).
const _: () = assert!(HEADER_LEN + MAX_KEY + 2 * MAX_VALUE <= MAX_DATAGRAM);

/// A kv operation. 0 is invalid on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Set `key` to `value`.
    Put = 1,
    /// Read `key`.
    Get = 2,
    /// Append `value` to `key` (creating it), reply with the result.
    Append = 3,
    /// If `key` holds `value`, set it to `new_value`.
    Cas = 4,
}

impl Op {
    /// The op for a wire byte, or `None`.
    pub fn from_u8(v: u8) -> Option<Op> {
        match v {
            1 => Some(Op::Put),
            2 => Some(Op::Get),
            3 => Some(Op::Append),
            4 => Some(Op::Cas),
            _ => None,
        }
    }

    /// Upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::Append => "APPEND",
            Op::Cas => "CAS",
        }
    }
}

/// The outcome of a request. 0 is invalid on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done; the reply value is described in the module doc.
    Ok = 1,
    /// GET or CAS of a key that does not exist.
    NotFound = 2,
    /// CAS whose expected value differs; the reply carries the current value.
    CasMismatch = 3,
    /// The datagram was not a valid request (or `request_no` was 0).
    BadRequest = 4,
    /// An APPEND would make the value longer than [`MAX_VALUE`].
    TooLarge = 5,
    /// `request_no` is older than the client's last one: not applied.
    Stale = 6,
    /// The store's key or client table is full: not applied.
    Full = 7,
}

impl Status {
    /// The status for a wire byte, or `None`.
    pub fn from_u8(v: u8) -> Option<Status> {
        match v {
            1 => Some(Status::Ok),
            2 => Some(Status::NotFound),
            3 => Some(Status::CasMismatch),
            4 => Some(Status::BadRequest),
            5 => Some(Status::TooLarge),
            6 => Some(Status::Stale),
            7 => Some(Status::Full),
            _ => None,
        }
    }

    /// Upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::CasMismatch => "CAS_MISMATCH",
            Status::BadRequest => "BAD_REQUEST",
            Status::TooLarge => "TOO_LARGE",
            Status::Stale => "STALE",
            Status::Full => "FULL",
        }
    }
}

/// A request; the byte fields borrow the datagram it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The operation.
    pub op: Op,
    /// Who asks; a client's requests are deduplicated by `request_no`.
    pub client_id: u64,
    /// Per-client request number, from 1, one higher for each new request;
    /// a retry repeats it.
    pub request_no: u64,
    /// The key.
    pub key: &'a [u8],
    /// PUT/APPEND: the value; CAS: the expected value; GET: empty.
    pub value: &'a [u8],
    /// CAS: the value to install; otherwise empty.
    pub new_value: &'a [u8],
}

/// A reply; `value` borrows the datagram or the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The outcome.
    pub status: Status,
    /// The op answered (`None` when the request could not be decoded).
    pub op: Option<Op>,
    /// Echo of the request's client id.
    pub client_id: u64,
    /// Echo of the request's number.
    pub request_no: u64,
    /// See the module doc.
    pub value: &'a [u8],
}

fn le_u16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), KvEncodeError> {
    if len > max {
        return Err(KvEncodeError::TooLong { field, len, max });
    }
    Ok(())
}

fn check_empty(field: &'static str, bytes: &[u8]) -> Result<(), KvEncodeError> {
    if !bytes.is_empty() {
        return Err(KvEncodeError::Unexpected {
            field,
            len: bytes.len(),
        });
    }
    Ok(())
}

/// Checks the magic, then that `len(datagram) >= HEADER_LEN`.
fn check_header(b: &[u8], magic: u32) -> Result<(), KvDecodeError> {
    if b.len() < 4 {
        return Err(KvDecodeError::Truncated {
            field: "magic",
            need: 4,
            have: b.len(),
        });
    }
    let found = le_u32(b, 0);
    if found != magic {
        return Err(KvDecodeError::BadMagic {
            expected: magic,
            found,
        });
    }
    if b.len() < HEADER_LEN {
        return Err(KvDecodeError::Truncated {
            field: "header",
            need: HEADER_LEN,
            have: b.len(),
        });
    }
    Ok(())
}

fn need_zero(field: &'static str, value: u64) -> Result<(), KvDecodeError> {
    if value != 0 {
        return Err(KvDecodeError::NotZero { field, value });
    }
    Ok(())
}

fn decoded_len(field: &'static str, len: usize, max: usize) -> Result<usize, KvDecodeError> {
    if len > max {
        return Err(KvDecodeError::TooLong { field, len, max });
    }
    Ok(len)
}

/// Splits `len` bytes for `field` off the front of `b[*at..]`.
fn take<'a>(
    b: &'a [u8],
    at: &mut usize,
    len: usize,
    field: &'static str,
) -> Result<&'a [u8], KvDecodeError> {
    let end = *at + len;
    if end > b.len() {
        return Err(KvDecodeError::Truncated {
            field,
            need: end,
            have: b.len(),
        });
    }
    let s = &b[*at..end];
    *at = end;
    Ok(s)
}

impl<'a> Request<'a> {
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.key.len() + self.value.len() + self.new_value.len()
    }

    /// Writes the datagram into `out`, returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, KvEncodeError> {
        check_len("key", self.key.len(), MAX_KEY)?;
        check_len("value", self.value.len(), MAX_VALUE)?;
        check_len("new_value", self.new_value.len(), MAX_VALUE)?;
        match self.op {
            Op::Get => {
                check_empty("value", self.value)?;
                check_empty("new_value", self.new_value)?;
            }
            Op::Put | Op::Append => check_empty("new_value", self.new_value)?,
            Op::Cas => {}
        }
        let need = self.encoded_len();
        if out.len() < need {
            return Err(KvEncodeError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let h = &mut out[..HEADER_LEN];
        h.fill(0);
        h[0..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
        h[4] = self.op as u8;
        // Lengths were checked against limits far below u16::MAX above.
        h[6..8].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        h[8..10].copy_from_slice(&(self.value.len() as u16).to_le_bytes());
        h[10..12].copy_from_slice(&(self.new_value.len() as u16).to_le_bytes());
        h[16..24].copy_from_slice(&self.client_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.request_no.to_le_bytes());
        let mut at = HEADER_LEN;
        for part in [self.key, self.value, self.new_value] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Ok(at)
    }

    /// Parses a request datagram; `Err` names the bad field and value.
    pub fn decode(b: &'a [u8]) -> Result<Request<'a>, KvDecodeError> {
        check_header(b, REQUEST_MAGIC)?;
        let op = Op::from_u8(b[4]).ok_or(KvDecodeError::BadOp { value: b[4] })?;
        need_zero("reserved[5]", u64::from(b[5]))?;
        need_zero("reserved[12]", u64::from(le_u32(b, 12)))?;
        let key_len = decoded_len("key_len", le_u16(b, 6), MAX_KEY)?;
        let value_len = decoded_len("value_len", le_u16(b, 8), MAX_VALUE)?;
        let new_len = decoded_len("new_value_len", le_u16(b, 10), MAX_VALUE)?;
        match op {
            Op::Get => {
                need_zero("value_len", value_len as u64)?;
                need_zero("new_value_len", new_len as u64)?;
            }
            Op::Put | Op::Append => need_zero("new_value_len", new_len as u64)?,
            Op::Cas => {}
        }
        let mut at = HEADER_LEN;
        let key = take(b, &mut at, key_len, "key")?;
        let value = take(b, &mut at, value_len, "value")?;
        let new_value = take(b, &mut at, new_len, "new_value")?;
        if at != b.len() {
            return Err(KvDecodeError::TrailingBytes {
                expected: at,
                actual: b.len(),
            });
        }
        Ok(Request {
            op,
            client_id: le_u64(b, 16),
            request_no: le_u64(b, 24),
            key,
            value,
            new_value,
        })
    }

    /// The client id and request number of a datagram whose header is
    /// readable even if the rest is not (to address a BAD_REQUEST reply).
    pub fn peek_ids(b: &[u8]) -> Option<(u64, u64)> {
        check_header(b, REQUEST_MAGIC).ok()?;
        Some((le_u64(b, 16), le_u64(b, 24)))
    }
}

impl<'a> Reply<'a> {
    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.value.len()
    }

    /// Writes the datagram into `out`, returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, KvEncodeError> {
        check_len("value", self.value.len(), MAX_VALUE)?;
        let need = self.encoded_len();
        if out.len() < need {
            return Err(KvEncodeError::BufferTooSmall {
                need,
                have: out.len(),
            });
        }
        let h = &mut out[..HEADER_LEN];
        h.fill(0);
        h[0..4].copy_from_slice(&REPLY_MAGIC.to_le_bytes());
        h[4] = self.status as u8;
        h[5] = self.op.map_or(0, |op| op as u8);
        h[8..10].copy_from_slice(&(self.value.len() as u16).to_le_bytes());
        h[16..24].copy_from_slice(&self.client_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.request_no.to_le_bytes());
        out[HEADER_LEN..need].copy_from_slice(self.value);
        Ok(need)
    }

    /// Parses a reply datagram; `Err` names the bad field and value.
    pub fn decode(b: &'a [u8]) -> Result<Reply<'a>, KvDecodeError> {
        check_header(b, REPLY_MAGIC)?;
        let status = Status::from_u8(b[4]).ok_or(KvDecodeError::BadStatus { value: b[4] })?;
        let op = match b[5] {
            0 => None,
            v => Some(Op::from_u8(v).ok_or(KvDecodeError::BadOp { value: v })?),
        };
        need_zero("reserved[6]", le_u16(b, 6) as u64)?;
        need_zero("reserved[10]", le_u16(b, 10) as u64)?;
        need_zero("reserved[12]", u64::from(le_u32(b, 12)))?;
        let value_len = decoded_len("value_len", le_u16(b, 8), MAX_VALUE)?;
        let mut at = HEADER_LEN;
        let value = take(b, &mut at, value_len, "value")?;
        if at != b.len() {
            return Err(KvDecodeError::TrailingBytes {
                expected: at,
                actual: b.len(),
            });
        }
        Ok(Reply {
            status,
            op,
            client_id: le_u64(b, 16),
            request_no: le_u64(b, 24),
            value,
        })
    }
}

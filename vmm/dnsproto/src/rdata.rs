//! Record data in canonical form: how the zone stores it and compares it.
//!
//! Canonical form is the uncompressed wire form with the names inside NS,
//! CNAME, PTR, MX and SOA data lower-cased (RFC 4034 §6.2), so that two
//! records that differ only in the case of such a name are the same record,
//! as DNS compares them. A, AAAA, TXT, MX, SOA and SRV data are checked
//! against their layout; every other type is opaque bytes (RFC 3597).

use crate::error::DnsDecodeError;
use crate::name::Name;
use crate::rtype;
use crate::wire::Rr;

/// Longest record data the zone stores.
pub const MAX_RDATA: usize = 512;

/// Record data that cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdataError {
    /// The data does not match its type's layout (FORMERR).
    Bad(DnsDecodeError),
    /// The canonical data is longer than [`MAX_RDATA`] (REFUSED).
    TooLong {
        /// The record type.
        rtype: u16,
        /// Canonical length (at least).
        len: usize,
    },
}

/// Where names sit in a type's data: the bytes before the first name, the
/// number of names, and the fixed bytes after them.
pub(crate) fn name_layout(t: u16) -> Option<(usize, usize, usize)> {
    match t {
        rtype::NS | rtype::CNAME | rtype::PTR => Some((0, 1, 0)),
        rtype::MX => Some((2, 1, 0)),
        rtype::SOA => Some((0, 2, 20)),
        _ => None,
    }
}

fn bad(rr: &Rr<'_>, why: &'static str) -> RdataError {
    RdataError::Bad(DnsDecodeError::BadRdata {
        rtype: rr.rtype,
        at: rr.rdata_at,
        len: rr.rdata.len(),
        why,
    })
}

/// Writes the canonical form of `rr`'s data into `out` and returns its
/// length (see the module doc).
pub fn canonical(rr: &Rr<'_>, out: &mut [u8; MAX_RDATA]) -> Result<usize, RdataError> {
    let d = rr.rdata;
    let too_long = |len| RdataError::TooLong {
        rtype: rr.rtype,
        len,
    };
    match rr.rtype {
        rtype::A if d.len() != 4 => return Err(bad(rr, "an A record has 4 bytes")),
        rtype::AAAA if d.len() != 16 => return Err(bad(rr, "an AAAA record has 16 bytes")),
        rtype::TXT => check_strings(d).map_err(|why| bad(rr, why))?,
        rtype::SRV if d.len() < 7 => {
            return Err(bad(rr, "an SRV record has 6 bytes and a target name"));
        }
        _ => {}
    }
    let Some((head, names, tail)) = name_layout(rr.rtype) else {
        if d.len() > MAX_RDATA {
            return Err(too_long(d.len()));
        }
        out[..d.len()].copy_from_slice(d);
        return Ok(d.len());
    };
    if d.len() < head {
        return Err(bad(rr, "shorter than its fixed fields"));
    }
    out[..head].copy_from_slice(&d[..head]);
    let mut len = head;
    let end = rr.rdata_at + d.len();
    let mut pos = rr.rdata_at + head;
    for _ in 0..names {
        if pos >= end {
            return Err(bad(rr, "a name is missing"));
        }
        let (name, next) = Name::parse(rr.msg, pos).map_err(RdataError::Bad)?;
        if next > end {
            return Err(bad(rr, "a name runs past the record data"));
        }
        let w = name.lowercased();
        let w = w.as_wire();
        if len + w.len() > MAX_RDATA {
            return Err(too_long(len + w.len()));
        }
        out[len..len + w.len()].copy_from_slice(w);
        len += w.len();
        pos = next;
    }
    if end - pos != tail {
        return Err(bad(rr, "bytes after the names do not match the type"));
    }
    if len + tail > MAX_RDATA {
        return Err(too_long(len + tail));
    }
    out[len..len + tail].copy_from_slice(&rr.msg[pos..end]);
    Ok(len + tail)
}

/// TXT data: one or more length-prefixed strings, exactly filling the data.
fn check_strings(d: &[u8]) -> Result<(), &'static str> {
    if d.is_empty() {
        return Err("a TXT record holds at least one string");
    }
    let mut pos = 0;
    while pos < d.len() {
        pos += 1 + usize::from(d[pos]);
    }
    if pos != d.len() {
        return Err("a TXT string runs past the record data");
    }
    Ok(())
}

/// Offset of the serial in canonical SOA data.
fn soa_serial_at(soa: &[u8]) -> Option<usize> {
    let (_, m) = Name::parse(soa, 0).ok()?;
    let (_, r) = Name::parse(soa, m).ok()?;
    (r + 20 <= soa.len()).then_some(r)
}

/// The serial of canonical SOA data.
pub fn soa_serial(soa: &[u8]) -> Option<u32> {
    let at = soa_serial_at(soa)?;
    Some(u32::from_be_bytes(soa[at..at + 4].try_into().ok()?))
}

/// The minimum field of canonical SOA data (the negative-caching TTL).
pub fn soa_minimum(soa: &[u8]) -> Option<u32> {
    let at = soa_serial_at(soa)? + 16;
    Some(u32::from_be_bytes(soa[at..at + 4].try_into().ok()?))
}

/// Sets the serial of canonical SOA data.
pub(crate) fn set_soa_serial(soa: &mut [u8], serial: u32) {
    if let Some(at) = soa_serial_at(soa) {
        soa[at..at + 4].copy_from_slice(&serial.to_be_bytes());
    }
}

/// RFC 1982 serial comparison: `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

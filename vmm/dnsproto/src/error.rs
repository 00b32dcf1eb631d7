//! Errors of the codec and of zone loading. No `std`: `Display` is written by
//! hand so the guest can print them through its console.

use core::fmt;

/// A datagram that is not a valid DNS message (answered FORMERR). Every
/// variant names the field or offset and the offending values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsDecodeError {
    /// The datagram ends before a field does.
    Truncated {
        /// The field that does not fit.
        field: &'static str,
        /// Bytes needed up to the end of that field.
        need: usize,
        /// Bytes in the datagram.
        have: usize,
    },
    /// A label starts with the reserved bit patterns 01 or 10.
    BadLabelType {
        /// Offset of the label's first byte.
        at: usize,
        /// That byte.
        byte: u8,
    },
    /// A compression pointer does not point strictly before the name data
    /// read so far (a loop or a forward reference).
    BadPointer {
        /// Offset of the pointer.
        at: usize,
        /// The offset it points to.
        target: usize,
        /// Targets must be below this offset.
        limit: usize,
    },
    /// A name is longer than 255 bytes in wire form.
    NameTooLong {
        /// Offset where the name starts.
        at: usize,
        /// Its length so far.
        len: usize,
    },
    /// The message has bytes after its last section.
    TrailingBytes {
        /// Where the last section ends.
        end: usize,
        /// The datagram's length.
        len: usize,
    },
    /// More than one OPT record, or an OPT not owned by the root.
    BadOpt {
        /// Offset of the offending OPT record.
        at: usize,
    },
    /// A TSIG record that is not the last record of the message.
    TsigNotLast {
        /// Offset of the TSIG record.
        at: usize,
    },
    /// Record data that does not match its type's layout.
    BadRdata {
        /// The record type.
        rtype: u16,
        /// Offset of the record data.
        at: usize,
        /// Its length.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for DnsDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DnsDecodeError::Truncated { field, need, have } => write!(
                f,
                "message truncated in field {field}: need {need} bytes, have {have}"
            ),
            DnsDecodeError::BadLabelType { at, byte } => {
                write!(f, "label at offset {at}: reserved label type {byte:#04x}")
            }
            DnsDecodeError::BadPointer { at, target, limit } => write!(
                f,
                "compression pointer at offset {at} points to {target}, must point below {limit}"
            ),
            DnsDecodeError::NameTooLong { at, len } => write!(
                f,
                "name at offset {at}: {len} bytes exceeds the maximum of 255"
            ),
            DnsDecodeError::TrailingBytes { end, len } => {
                write!(f, "message is {len} bytes, its sections end at {end}")
            }
            DnsDecodeError::BadOpt { at } => write!(
                f,
                "OPT record at offset {at}: a second OPT or an owner other than the root"
            ),
            DnsDecodeError::TsigNotLast { at } => {
                write!(f, "TSIG record at offset {at} is not the last record")
            }
            DnsDecodeError::BadRdata {
                rtype,
                at,
                len,
                why,
            } => write!(
                f,
                "record data of type {rtype} at offset {at} ({len} bytes): {why}"
            ),
        }
    }
}

impl core::error::Error for DnsDecodeError {}

/// A domain name in text form that cannot be a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameTextError {
    /// A label longer than 63 bytes.
    LabelTooLong {
        /// Its length.
        len: usize,
    },
    /// The name is longer than 255 bytes in wire form.
    NameTooLong {
        /// Its wire length.
        len: usize,
    },
    /// An empty label (`a..b`, or a leading dot).
    EmptyLabel,
    /// A bad `\` escape.
    BadEscape,
    /// A relative name where no origin is known.
    Relative,
}

impl fmt::Display for NameTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NameTextError::LabelTooLong { len } => {
                write!(f, "label of {len} bytes exceeds the maximum of 63")
            }
            NameTextError::NameTooLong { len } => {
                write!(f, "name of {len} bytes exceeds the maximum of 255")
            }
            NameTextError::EmptyLabel => f.write_str("empty label"),
            NameTextError::BadEscape => f.write_str("bad \\ escape"),
            NameTextError::Relative => f.write_str("relative name and no $ORIGIN"),
        }
    }
}

impl core::error::Error for NameTextError {}

/// Master-file text that cannot be loaded, with its line number (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneLoadError {
    /// A name that is not a valid name.
    Name {
        /// Line.
        line: usize,
        /// Why.
        err: NameTextError,
    },
    /// A record type the loader does not know.
    UnknownType {
        /// Line.
        line: usize,
    },
    /// A class other than IN.
    Class {
        /// Line.
        line: usize,
    },
    /// Record data that does not parse for its type.
    Rdata {
        /// Line.
        line: usize,
        /// The record type.
        rtype: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// A line missing a field, an unbalanced parenthesis or quote.
    Syntax {
        /// Line.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A record outside the zone of the first SOA, or no SOA first.
    OutOfZone {
        /// Line.
        line: usize,
    },
    /// The zone's record table is full.
    Full {
        /// Line.
        line: usize,
        /// The table's capacity.
        capacity: usize,
    },
}

impl fmt::Display for ZoneLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ZoneLoadError::Name { line, err } => write!(f, "line {line}: bad name: {err}"),
            ZoneLoadError::UnknownType { line } => write!(
                f,
                "line {line}: unknown record type (A, AAAA, NS, CNAME, PTR, MX, TXT, SOA, SRV, TYPEnnn)"
            ),
            ZoneLoadError::Class { line } => write!(f, "line {line}: only class IN is served"),
            ZoneLoadError::Rdata { line, rtype, why } => {
                write!(f, "line {line}: record data of type {rtype}: {why}")
            }
            ZoneLoadError::Syntax { line, why } => write!(f, "line {line}: {why}"),
            ZoneLoadError::OutOfZone { line } => write!(
                f,
                "line {line}: record outside the zone (the first record must be the zone's SOA)"
            ),
            ZoneLoadError::Full { line, capacity } => {
                write!(
                    f,
                    "line {line}: the zone's {capacity} record slots are full"
                )
            }
        }
    }
}

impl core::error::Error for ZoneLoadError {}

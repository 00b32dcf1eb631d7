//! ftvm-dnsproto: the dns reference service shared by the dns guest and the host.
//!
//! Contract: an authoritative DNS server for one zone over UDP, as a `no_std`,
//! allocation-free and dependency-free state machine, so the dns guest runs
//! exactly the code the host tests. [`Server::serve`] turns any datagram into
//! a reply or into no reply at all (`None`: shorter than a header, or itself a
//! response) — never a panic, and in time bounded by the datagram's length.
//! Decode problems are [`DnsDecodeError`]s naming the field and the offending
//! values; on the wire they become FORMERR. With feature `std` the crate adds
//! the host side: a UDP server thread ([`host`]), and runners of the real
//! `dnsperf` ([`dnsperf`]), `dig` and `nsupdate` ([`tools`]). The normative description is `docs/dns.md`.
//!
//! # The main flow
//!
//! 1. The zone is loaded from master-file text ([`master`], the built-in
//!    [`BUILTIN_ZONE`] by default) into a [`Zone`]: fixed-capacity record
//!    slots the caller provides (a `Vec` on the guest's heap), kept in an
//!    index sorted by reversed-label name [`Key`], so a lookup is a binary
//!    search and the names below a node follow it contiguously.
//! 2. Each datagram goes to [`Server::serve`]: [`Message::parse`] checks the
//!    header and every section (name compression only backwards, every
//!    length within the datagram, at most one OPT), then
//!    * QUERY (RFC 1035): [`query`] answers A, AAAA, TXT, SOA, NS, MX, CNAME
//!      (followed inside the zone), ANY and any stored type; NXDOMAIN and
//!      NODATA carry the SOA; names are compressed; an OPT is echoed with a
//!      UDP size of [`EDNS_UDP_SIZE`]; an answer that does not fit sets TC.
//!    * UPDATE (RFC 2136): first the duplicate table ([`DupTable`]): a
//!      datagram with the same source, id and digest as one of the last few
//!      updates gets the stored reply and is not applied again. Otherwise
//!      [`update`] checks the zone section, the prerequisites and the update
//!      section, applies the whole update or nothing, and bumps the SOA serial
//!      once if the zone changed; the reply is remembered.
//!    * Anything else gets the rcode RFC 1035 / 2136 / 6891 asks for (FORMERR,
//!      NOTIMP, REFUSED, NOTAUTH, BADVERS).
//! 3. [`Server::digest`] hashes the zone and the duplicate table: two servers
//!    that served the same datagrams in the same order have equal digests.
//!
//! ```
//! use ftvm_dnsproto::{DupSlot, RecordSlot, Server, BUILTIN_ZONE, MAX_REPLY};
//!
//! let mut server = Server::new(vec![RecordSlot::EMPTY; 64], vec![0; 64], vec![DupSlot::EMPTY; 8]);
//! server.load_master(BUILTIN_ZONE).unwrap();
//! // A query for www.example.test A (id 0x1234, RD set), as dig sends it.
//! let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
//! q.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
//! let mut out = [0u8; MAX_REPLY];
//! let n = server.serve(&q, &[0; 24], &mut out).unwrap();
//! assert_eq!(&out[..2], &[0x12, 0x34]);
//! assert_eq!(out[3] & 0x0f, 0, "NOERROR");
//! assert_eq!(u16::from_be_bytes([out[6], out[7]]), 1, "one answer");
//! assert_eq!(&out[n - 4..n], &[192, 0, 2, 10]);
//! ```

#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

mod dup;
mod error;
pub mod master;
mod name;
pub mod query;
pub mod rdata;
mod server;
pub mod update;
mod wire;
mod writer;
mod zone;

#[cfg(feature = "std")]
pub mod dnsperf;
#[cfg(feature = "std")]
pub mod host;
#[cfg(feature = "std")]
pub mod tools;

pub use dup::{DUP_REPLY_MAX, DupSlot, DupTable, PEER_LEN};
pub use error::{DnsDecodeError, NameTextError, ZoneLoadError};
pub use master::BUILTIN_ZONE;
pub use name::{Key, MAX_NAME, Name};
pub use server::{Server, ServerStats, host_name};
pub use wire::{Edns, HEADER_LEN, Header, Message, Question, Rr, RrIter, Section};
pub use writer::Writer;
pub use zone::{Change, NameState, RecordSlot, Zone, ZoneFull};

/// The UDP payload size the server advertises in its OPT record (the DNS
/// flag day 2020 value; fits the NIC's 2016-byte slots).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Largest reply: the caller's output buffer must have this many bytes.
pub const MAX_REPLY: usize = EDNS_UDP_SIZE as usize;
/// Largest reply to a client without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_SIZE: usize = 512;

/// Header flag bits (the second 16-bit word of the header).
pub mod flags {
    /// Response.
    pub const QR: u16 = 0x8000;
    /// Authoritative answer.
    pub const AA: u16 = 0x0400;
    /// Truncated.
    pub const TC: u16 = 0x0200;
    /// Recursion desired (copied into the reply).
    pub const RD: u16 = 0x0100;
    /// Recursion available (never set: authoritative only).
    pub const RA: u16 = 0x0080;
    /// Checking disabled (copied into the reply).
    pub const CD: u16 = 0x0010;
}

/// Opcodes.
pub mod opcode {
    /// Standard query (RFC 1035).
    pub const QUERY: u8 = 0;
    /// Zone change notification (RFC 1996): answered NOTIMP.
    pub const NOTIFY: u8 = 4;
    /// Dynamic update (RFC 2136).
    pub const UPDATE: u8 = 5;
}

/// Response codes (4 bits in the header; BADVERS needs the OPT's extension).
pub mod rcode {
    /// No error.
    pub const NOERROR: u16 = 0;
    /// The message could not be interpreted.
    pub const FORMERR: u16 = 1;
    /// The server failed (an update that does not fit the zone's capacity).
    pub const SERVFAIL: u16 = 2;
    /// The name does not exist (also: a prerequisite "name in use" failed).
    pub const NXDOMAIN: u16 = 3;
    /// Opcode or query type not implemented.
    pub const NOTIMP: u16 = 4;
    /// Refused by policy (not our zone, class, or a record over the limits).
    pub const REFUSED: u16 = 5;
    /// A name exists that should not (prerequisite).
    pub const YXDOMAIN: u16 = 6;
    /// An RRset exists that should not (prerequisite).
    pub const YXRRSET: u16 = 7;
    /// An RRset does not exist that should (prerequisite).
    pub const NXRRSET: u16 = 8;
    /// Not authoritative for the zone (or a signed message: no TSIG support).
    pub const NOTAUTH: u16 = 9;
    /// A name outside the zone section's zone.
    pub const NOTZONE: u16 = 10;
    /// EDNS version not supported (RFC 6891; extended rcode).
    pub const BADVERS: u16 = 16;

    /// Upper-case mnemonic.
    pub fn name(rcode: u16) -> &'static str {
        match rcode {
            NOERROR => "NOERROR",
            FORMERR => "FORMERR",
            SERVFAIL => "SERVFAIL",
            NXDOMAIN => "NXDOMAIN",
            NOTIMP => "NOTIMP",
            REFUSED => "REFUSED",
            YXDOMAIN => "YXDOMAIN",
            YXRRSET => "YXRRSET",
            NXRRSET => "NXRRSET",
            NOTAUTH => "NOTAUTH",
            NOTZONE => "NOTZONE",
            BADVERS => "BADVERS",
            _ => "RCODE?",
        }
    }
}

/// Record types the server knows by name (any other type is stored and
/// served as opaque data, RFC 3597).
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Pointer.
    pub const PTR: u16 = 12;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text strings.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location (its target is never compressed, RFC 2782).
    pub const SRV: u16 = 33;
    /// EDNS pseudo-record (RFC 6891).
    pub const OPT: u16 = 41;
    /// Transaction key (meta).
    pub const TKEY: u16 = 249;
    /// Transaction signature (meta; not supported).
    pub const TSIG: u16 = 250;
    /// Incremental zone transfer (not supported).
    pub const IXFR: u16 = 251;
    /// Zone transfer (not supported).
    pub const AXFR: u16 = 252;
    /// Mailbox records (obsolete meta query).
    pub const MAILB: u16 = 253;
    /// Mail agent records (obsolete meta query).
    pub const MAILA: u16 = 254;
    /// Any type.
    pub const ANY: u16 = 255;

    /// True for types that can never be stored in a zone (meta and
    /// pseudo types, and the reserved 0).
    pub fn is_meta(t: u16) -> bool {
        t == 0 || t == OPT || (128..=255).contains(&t)
    }

    /// Upper-case mnemonic (`None` for types served as opaque data).
    pub fn name(t: u16) -> Option<&'static str> {
        Some(match t {
            A => "A",
            NS => "NS",
            CNAME => "CNAME",
            SOA => "SOA",
            PTR => "PTR",
            MX => "MX",
            TXT => "TXT",
            AAAA => "AAAA",
            SRV => "SRV",
            OPT => "OPT",
            TSIG => "TSIG",
            AXFR => "AXFR",
            IXFR => "IXFR",
            ANY => "ANY",
            _ => return None,
        })
    }

    /// The type of an upper- or lower-case mnemonic, or of `TYPEnnn`.
    pub fn from_name(s: &str) -> Option<u16> {
        const NAMED: [(&str, u16); 9] = [
            ("A", A),
            ("NS", NS),
            ("CNAME", CNAME),
            ("SOA", SOA),
            ("PTR", PTR),
            ("MX", MX),
            ("TXT", TXT),
            ("AAAA", AAAA),
            ("SRV", SRV),
        ];
        for (n, t) in NAMED {
            if n.eq_ignore_ascii_case(s) {
                return Some(t);
            }
        }
        let digits = s
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("TYPE"))
            .map(|_| &s[4..])?;
        digits.parse().ok()
    }
}

/// Classes.
pub mod class {
    /// Internet: the zone's class.
    pub const IN: u16 = 1;
    /// CHAOS: `digest.ftvm. CH TXT` answers the server digest.
    pub const CH: u16 = 3;
    /// NONE (RFC 2136: prerequisite "does not exist", delete one RR).
    pub const NONE: u16 = 254;
    /// ANY.
    pub const ANY: u16 = 255;
}

/// FNV-1a, 64 bit (`ftvm_guest_abi::fnv`): the fixed hash of the digests
/// and the duplicate table.
pub(crate) use ftvm_guest_abi::fnv::extend as fnv1a;

/// FNV-1a's offset basis.
pub(crate) use ftvm_guest_abi::fnv::OFFSET as FNV_START;

//! Reading DNS messages (RFC 1035 §4.1): the header, questions, resource
//! records, and a whole-message check.
//!
//! ```text
//!  0  id            2  flags: QR | opcode(4) | AA TC RD RA | Z AD CD | rcode(4)
//!  4  qdcount       6  ancount       8  nscount      10  arcount      (big-endian)
//! 12  questions: name, u16 type, u16 class
//!     records:   name, u16 type, u16 class, u32 ttl, u16 rdlength, rdata
//! ```
//!
//! [`Message::parse`] walks every section once before anything is served:
//! each name (with the pointer rule of `name.rs`), each fixed field and each
//! rdata length must lie inside the datagram, the additional section may hold
//! one OPT (owned by the root) and a TSIG only as its last record, and the
//! sections must end exactly at the datagram's end. Every record needs at
//! least 11 bytes, so counts of 65535 in a short datagram fail as
//! [`DnsDecodeError::Truncated`] after at most one pass. The iterators then
//! re-read sections that are known to be sound.

use crate::error::DnsDecodeError;
use crate::name::Name;
use crate::rtype;

/// Length of the header.
pub const HEADER_LEN: usize = 12;

/// The message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message id (a reply carries the request's).
    pub id: u16,
    /// QR, opcode, AA, TC, RD, RA, Z, AD, CD and rcode bits.
    pub flags: u16,
    /// Questions (UPDATE: zones).
    pub qdcount: u16,
    /// Answers (UPDATE: prerequisites).
    pub ancount: u16,
    /// Authority records (UPDATE: updates).
    pub nscount: u16,
    /// Additional records.
    pub arcount: u16,
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

impl Header {
    /// The header of `d`, or `None` if `d` is shorter than a header.
    pub fn parse(d: &[u8]) -> Option<Header> {
        if d.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            id: be16(d, 0),
            flags: be16(d, 2),
            qdcount: be16(d, 4),
            ancount: be16(d, 6),
            nscount: be16(d, 8),
            arcount: be16(d, 10),
        })
    }

    /// Writes the header into `out[..12]`.
    pub fn write(&self, out: &mut [u8]) {
        let words = [
            self.id,
            self.flags,
            self.qdcount,
            self.ancount,
            self.nscount,
            self.arcount,
        ];
        for (i, w) in words.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
        }
    }

    /// The opcode.
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// True for a response (QR set).
    pub fn is_response(&self) -> bool {
        self.flags & crate::flags::QR != 0
    }

    /// The 4-bit rcode.
    pub fn rcode(&self) -> u16 {
        self.flags & 0xf
    }

    /// The count of records in `section`.
    pub fn count(&self, section: Section) -> u16 {
        match section {
            Section::Question => self.qdcount,
            Section::Answer => self.ancount,
            Section::Authority => self.nscount,
            Section::Additional => self.arcount,
        }
    }
}

/// The four sections. In an UPDATE they are the zone, prerequisite, update
/// and additional sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Questions; UPDATE: the zone.
    Question = 0,
    /// Answers; UPDATE: prerequisites.
    Answer = 1,
    /// Authority records; UPDATE: updates.
    Authority = 2,
    /// Additional records.
    Additional = 3,
}

/// One question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// The name asked about (case as sent).
    pub name: Name,
    /// The type asked for.
    pub qtype: u16,
    /// The class.
    pub qclass: u16,
}

impl Question {
    /// The question at `at` and the offset after it.
    pub fn parse(msg: &[u8], at: usize) -> Result<(Question, usize), DnsDecodeError> {
        let (name, pos) = Name::parse(msg, at)?;
        if pos + 4 > msg.len() {
            return Err(DnsDecodeError::Truncated {
                field: "question type and class",
                need: pos + 4,
                have: msg.len(),
            });
        }
        let q = Question {
            name,
            qtype: be16(msg, pos),
            qclass: be16(msg, pos + 2),
        };
        Ok((q, pos + 4))
    }
}

/// One resource record as it stands in a message (its rdata may hold
/// compressed names, hence the message reference; see `rdata::canonical`).
#[derive(Clone, Copy, Debug)]
pub struct Rr<'m> {
    /// Owner name.
    pub name: Name,
    /// Type.
    pub rtype: u16,
    /// Class.
    pub class: u16,
    /// TTL.
    pub ttl: u32,
    /// Offset of the rdata in the message.
    pub rdata_at: usize,
    /// The rdata bytes as sent.
    pub rdata: &'m [u8],
    /// The whole message (for names compressed inside the rdata).
    pub msg: &'m [u8],
}

impl<'m> Rr<'m> {
    /// The record at `at` and the offset after it.
    pub fn parse(msg: &'m [u8], at: usize) -> Result<(Rr<'m>, usize), DnsDecodeError> {
        let (name, pos) = Name::parse(msg, at)?;
        if pos + 10 > msg.len() {
            return Err(DnsDecodeError::Truncated {
                field: "record type, class, ttl and rdlength",
                need: pos + 10,
                have: msg.len(),
            });
        }
        let rdlen = usize::from(be16(msg, pos + 8));
        let rdata_at = pos + 10;
        if rdata_at + rdlen > msg.len() {
            return Err(DnsDecodeError::Truncated {
                field: "rdata",
                need: rdata_at + rdlen,
                have: msg.len(),
            });
        }
        let rr = Rr {
            name,
            rtype: be16(msg, pos),
            class: be16(msg, pos + 2),
            ttl: be32(msg, pos + 4),
            rdata_at,
            rdata: &msg[rdata_at..rdata_at + rdlen],
            msg,
        };
        Ok((rr, rdata_at + rdlen))
    }
}

/// The EDNS parameters of a message's OPT record (RFC 6891 §6.1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    /// The sender's UDP payload size.
    pub udp_size: u16,
    /// Upper 8 bits of the extended rcode.
    pub ext_rcode: u8,
    /// EDNS version (only 0 is served; others get BADVERS).
    pub version: u8,
    /// The DNSSEC OK bit (not honoured: no DNSSEC).
    pub dnssec_ok: bool,
}

/// A message whose every section has been checked (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct Message<'m> {
    msg: &'m [u8],
    /// The header.
    pub header: Header,
    starts: [usize; 4],
    /// The OPT record's parameters, if the message has one.
    pub edns: Option<Edns>,
    /// True if the message ends with a TSIG record (signed; not supported).
    pub tsig: bool,
}

impl<'m> Message<'m> {
    /// Checks the whole message (see the module doc).
    pub fn parse(msg: &'m [u8]) -> Result<Message<'m>, DnsDecodeError> {
        let header = Header::parse(msg).ok_or(DnsDecodeError::Truncated {
            field: "header",
            need: HEADER_LEN,
            have: msg.len(),
        })?;
        let mut pos = HEADER_LEN;
        let mut starts = [0usize; 4];
        starts[0] = pos;
        for _ in 0..header.qdcount {
            pos = Question::parse(msg, pos)?.1;
        }
        let (mut edns, mut tsig) = (None, false);
        for (i, section) in [Section::Answer, Section::Authority, Section::Additional]
            .into_iter()
            .enumerate()
        {
            starts[i + 1] = pos;
            let count = header.count(section);
            for n in 0..count {
                let at = pos;
                let (rr, next) = Rr::parse(msg, pos)?;
                pos = next;
                if section != Section::Additional {
                    continue;
                }
                if rr.rtype == rtype::OPT {
                    if edns.is_some() || !rr.name.is_root() {
                        return Err(DnsDecodeError::BadOpt { at });
                    }
                    edns = Some(Edns {
                        udp_size: rr.class,
                        ext_rcode: (rr.ttl >> 24) as u8,
                        version: (rr.ttl >> 16) as u8,
                        dnssec_ok: rr.ttl & 0x8000 != 0,
                    });
                } else if rr.rtype == rtype::TSIG {
                    if n + 1 != count {
                        return Err(DnsDecodeError::TsigNotLast { at });
                    }
                    tsig = true;
                }
            }
        }
        if pos != msg.len() {
            return Err(DnsDecodeError::TrailingBytes {
                end: pos,
                len: msg.len(),
            });
        }
        Ok(Message {
            msg,
            header,
            starts,
            edns,
            tsig,
        })
    }

    /// The datagram.
    pub fn bytes(&self) -> &'m [u8] {
        self.msg
    }

    /// The first question (UPDATE: the zone), if there is one.
    pub fn question(&self) -> Option<Question> {
        if self.header.qdcount == 0 {
            return None;
        }
        Question::parse(self.msg, self.starts[0]).ok().map(|q| q.0)
    }

    /// The records of `section` (`Section::Question` yields none: use
    /// [`Message::question`]).
    pub fn records(&self, section: Section) -> RrIter<'m> {
        let left = match section {
            Section::Question => 0,
            s => self.header.count(s),
        };
        RrIter {
            msg: self.msg,
            pos: self.starts[section as usize],
            left,
        }
    }
}

/// Iterator over the records of a checked section.
#[derive(Clone, Debug)]
pub struct RrIter<'m> {
    msg: &'m [u8],
    pos: usize,
    left: u16,
}

impl<'m> Iterator for RrIter<'m> {
    type Item = Rr<'m>;
    fn next(&mut self) -> Option<Rr<'m>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The section was checked by `Message::parse`; a failure cannot
        // happen, and would only end the iteration.
        let (rr, next) = Rr::parse(self.msg, self.pos).ok()?;
        self.pos = next;
        Some(rr)
    }
}

//! The whole service for one datagram: [`Server::serve`].
//!
//! 1. No reply to a datagram shorter than a header or to a response (QR
//!    set): nothing to answer, and answering responses invites loops.
//! 2. Opcodes other than QUERY and UPDATE: NOTIMP (header only).
//! 3. [`Message::parse`] fails: FORMERR (header only).
//! 4. EDNS version other than 0: BADVERS; a TSIG-signed message: NOTAUTH
//!    (TSIG is not supported).
//! 5. QUERY: one question and no answer or authority records (else FORMERR);
//!    class IN or ANY inside the zone → [`query::answer`]; outside the zone
//!    → REFUSED (authoritative only, no recursion); meta types OPT, TSIG,
//!    TKEY → FORMERR; AXFR, IXFR, MAILA, MAILB → NOTIMP (no zone transfer);
//!    `digest.ftvm.` class CH, type TXT or ANY → the server digest in hex;
//!    any other class → REFUSED.
//! 6. UPDATE: the [`DupTable`] first, then [`update::apply`]; the reply
//!    (header, the zone section, an OPT if the request had one) is
//!    remembered.
//!
//! Replies copy the id, opcode, RD and CD bits; AA is set on answers from
//! the zone, RA never. With an OPT in the request the reply carries one
//! advertising [`EDNS_UDP_SIZE`] and is limited to the client's size
//! (between 512 and 1232 bytes); without, to 512 bytes.

use crate::dup::{DupSlot, DupTable};
use crate::error::ZoneLoadError;
use crate::name::Name;
use crate::query;
use crate::update;
use crate::wire::{HEADER_LEN, Header, Message, Question};
use crate::writer::Writer;
use crate::zone::{RecordSlot, Zone, ZoneFull};
use crate::{CLASSIC_UDP_SIZE, EDNS_UDP_SIZE, MAX_REPLY, class, flags, opcode, rcode, rtype};

/// Counters of a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Queries answered (any rcode).
    pub queries: u64,
    /// UPDATEs processed (not counting duplicates).
    pub updates: u64,
    /// UPDATEs that changed the zone.
    pub updates_applied: u64,
    /// Retransmitted UPDATEs answered from the duplicate table.
    pub duplicates: u64,
    /// FORMERR replies.
    pub formerr: u64,
    /// NOTIMP replies.
    pub notimp: u64,
    /// REFUSED replies.
    pub refused: u64,
    /// NXDOMAIN replies.
    pub nxdomain: u64,
    /// Replies with TC set.
    pub truncated: u64,
    /// Datagrams not answered (too short, or responses).
    pub dropped: u64,
}

/// The dns service: a zone, the duplicate table and counters. A clone is an
/// independent copy of all three (the dns fuzz target serves every input on a
/// copy of one loaded server).
#[derive(Clone, Debug)]
pub struct Server<R, I, D> {
    zone: Zone<R, I>,
    dups: DupTable<D>,
    stats: ServerStats,
}

/// The CHAOS name that answers the server digest.
const DIGEST_NAME: &[u8] = b"\x06digest\x04ftvm\x00";

impl<R, I, D> Server<R, I, D>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
    D: AsRef<[DupSlot]> + AsMut<[DupSlot]>,
{
    /// A server with an empty zone over `slots` and `index` (see
    /// [`Zone::new`]) and a duplicate table over `dups`.
    pub fn new(slots: R, index: I, dups: D) -> Self {
        Server {
            zone: Zone::new(slots, index),
            dups: DupTable::new(dups),
            stats: ServerStats::default(),
        }
    }

    /// Replaces the zone with the one in master-file `text` (see
    /// [`master`](crate::master)); returns the records loaded.
    pub fn load_master(&mut self, text: &str) -> Result<usize, ZoneLoadError> {
        crate::master::load(&mut self.zone, text)
    }

    /// Adds `count` synthetic hosts `h0`, `h1`, ... below the apex, each an
    /// A record `10.a.b.c` (the host number in the low 24 bits) with TTL
    /// 300: a zone of any size for load tests.
    pub fn add_hosts(&mut self, count: u32) -> Result<(), ZoneFull> {
        let mut label = [0u8; 11];
        for i in 0..count {
            let n = host_label(i, &mut label);
            let name = self
                .zone
                .origin()
                .prepend(&label[..n])
                .map_err(|_| ZoneFull {
                    capacity: self.zone.capacity(),
                })?;
            let ip = i.to_be_bytes();
            self.zone
                .insert(&name.key(), rtype::A, 300, &[10, ip[1], ip[2], ip[3]])?;
        }
        Ok(())
    }

    /// The zone.
    pub fn zone(&self) -> &Zone<R, I> {
        &self.zone
    }

    /// The duplicate table.
    pub fn dups(&self) -> &DupTable<D> {
        &self.dups
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// A digest of the state (the zone and the duplicate table): equal for
    /// servers that served the same datagrams in the same order.
    pub fn digest(&self) -> u64 {
        self.dups.digest(crate::fnv1a(
            crate::FNV_START,
            &self.zone.digest().to_le_bytes(),
        ))
    }

    /// Serves one datagram from `peer` (the source address as the NIC
    /// encodes it, at most 24 bytes; only compared) and writes the reply
    /// into `out`. `None`: no reply (see the module doc).
    pub fn serve(
        &mut self,
        datagram: &[u8],
        peer: &[u8],
        out: &mut [u8; MAX_REPLY],
    ) -> Option<usize> {
        let Some(h) = Header::parse(datagram) else {
            self.stats.dropped += 1;
            return None;
        };
        if h.is_response() {
            self.stats.dropped += 1;
            return None;
        }
        let op = h.opcode();
        let reply = Header {
            id: h.id,
            flags: flags::QR | (u16::from(op) << 11) | (h.flags & (flags::RD | flags::CD)),
            qdcount: 0,
            ancount: 0,
            nscount: 0,
            arcount: 0,
        };
        if op != opcode::QUERY && op != opcode::UPDATE {
            self.stats.notimp += 1;
            return Some(self.bare(reply, rcode::NOTIMP, out));
        }
        let Ok(msg) = Message::parse(datagram) else {
            return Some(self.bare(reply, rcode::FORMERR, out));
        };
        if op == opcode::UPDATE {
            let digest = crate::fnv1a(crate::FNV_START, datagram);
            if let Some(stored) = self.dups.find(peer, h.id, digest) {
                self.stats.duplicates += 1;
                out[..stored.len()].copy_from_slice(stored);
                return Some(stored.len());
            }
            let n = self.update(&msg, reply, out);
            self.dups.remember(peer, h.id, digest, &out[..n]);
            return Some(n);
        }
        Some(self.query(&msg, reply, out))
    }

    /// A reply of just the header with `rc`.
    fn bare(&mut self, mut reply: Header, rc: u16, out: &mut [u8; MAX_REPLY]) -> usize {
        if rc == rcode::FORMERR {
            self.stats.formerr += 1;
        }
        reply.flags |= rc;
        reply.write(&mut out[..HEADER_LEN]);
        HEADER_LEN
    }

    /// Finishes a reply: the OPT if the request had one, then the header.
    fn finish(&mut self, w: &mut Writer<'_>, mut reply: Header, rc: u16, edns: bool) -> usize {
        match rc {
            rcode::FORMERR => self.stats.formerr += 1,
            rcode::NOTIMP => self.stats.notimp += 1,
            rcode::REFUSED => self.stats.refused += 1,
            rcode::NXDOMAIN => self.stats.nxdomain += 1,
            _ => {}
        }
        if reply.flags & flags::TC != 0 {
            self.stats.truncated += 1;
        }
        w.set_limit(MAX_REPLY);
        if edns && w.opt(EDNS_UDP_SIZE, (rc >> 4) as u8).is_ok() {
            reply.arcount += 1;
        }
        reply.flags |= rc & 0xf;
        w.header(&reply);
        w.len()
    }

    fn query(&mut self, msg: &Message<'_>, mut reply: Header, out: &mut [u8; MAX_REPLY]) -> usize {
        self.stats.queries += 1;
        let edns = msg.edns.is_some();
        let limit = match msg.edns {
            Some(e) => usize::from(e.udp_size).clamp(CLASSIC_UDP_SIZE, MAX_REPLY) - 11,
            None => CLASSIC_UDP_SIZE,
        };
        let mut w = Writer::new(out, limit);
        let h = msg.header;
        let q = match msg.question() {
            Some(q) if h.qdcount == 1 && h.ancount == 0 && h.nscount == 0 => q,
            _ => return self.finish(&mut w, reply, rcode::FORMERR, edns),
        };
        // A question always fits: 12 + 255 + 4 bytes < 501.
        if w.question(&q).is_ok() {
            reply.qdcount = 1;
        }
        if let Some(e) = msg.edns
            && e.version != 0
        {
            return self.finish(&mut w, reply, rcode::BADVERS, edns);
        }
        if msg.tsig {
            return self.finish(&mut w, reply, rcode::NOTAUTH, edns);
        }
        let rc = match (q.qclass, q.qtype) {
            (_, rtype::OPT | rtype::TSIG | rtype::TKEY) => rcode::FORMERR,
            (class::IN | class::ANY, rtype::AXFR | rtype::IXFR | rtype::MAILA | rtype::MAILB) => {
                rcode::NOTIMP
            }
            (class::IN | class::ANY, _) if self.zone.contains(&q.name.key()) => {
                let a = query::answer(&self.zone, &q, &mut w);
                reply.flags |= flags::AA;
                if a.truncated {
                    reply.flags |= flags::TC;
                }
                reply.ancount = a.answers;
                reply.nscount = a.authority;
                reply.arcount = a.additional;
                a.rcode
            }
            (class::CH, rtype::TXT | rtype::ANY)
                if q.name.as_wire().eq_ignore_ascii_case(DIGEST_NAME) =>
            {
                self.digest_txt(&q, &mut w, &mut reply)
            }
            _ => rcode::REFUSED,
        };
        self.finish(&mut w, reply, rc, edns)
    }

    /// `digest.ftvm. CH TXT "<16 hex digits>"`.
    fn digest_txt(&self, q: &Question, w: &mut Writer<'_>, reply: &mut Header) -> u16 {
        let mut txt = [0u8; 17];
        txt[0] = 16;
        let d = self.digest();
        for (i, b) in txt[1..].iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((d >> (60 - 4 * i)) & 0xf) as usize];
        }
        if w.record(&q.name, rtype::TXT, class::CH, 0, &txt).is_ok() {
            reply.ancount = 1;
        }
        reply.flags |= flags::AA;
        rcode::NOERROR
    }

    fn update(&mut self, msg: &Message<'_>, mut reply: Header, out: &mut [u8; MAX_REPLY]) -> usize {
        self.stats.updates += 1;
        let edns = msg.edns.is_some();
        let mut w = Writer::new(out, MAX_REPLY - 11);
        if msg.header.qdcount == 1
            && let Some(z) = msg.question()
            && w.question(&z).is_ok()
        {
            reply.qdcount = 1;
        }
        let rc = if msg.edns.is_some_and(|e| e.version != 0) {
            rcode::BADVERS
        } else if msg.tsig {
            rcode::NOTAUTH
        } else {
            let o = update::apply(&mut self.zone, msg);
            if o.rcode == rcode::NOERROR && o.changed {
                self.stats.updates_applied += 1;
            }
            o.rcode
        };
        self.finish(&mut w, reply, rc, edns)
    }
}

/// Writes `h<i>` into `out`; returns its length.
fn host_label(i: u32, out: &mut [u8; 11]) -> usize {
    let mut digits = [0u8; 10];
    let (mut n, mut v) = (0, i);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out[0] = b'h';
    for k in 0..n {
        out[1 + k] = digits[n - 1 - k];
    }
    1 + n
}

/// The name of synthetic host `i` below `origin` (see [`Server::add_hosts`]).
pub fn host_name(origin: &Name, i: u32) -> Option<Name> {
    let mut label = [0u8; 11];
    let n = host_label(i, &mut label);
    origin.prepend(&label[..n]).ok()
}

//! Answering a standard query for a name inside the zone (RFC 1035 §4.3.2,
//! RFC 2308 for negative answers).
//!
//! 1. The name owns records: the RRset of the type asked (every record of
//!    the node for ANY). A CNAME answers any other type and is followed to
//!    its target while the target is inside the zone (at most
//!    [`MAX_CNAME_CHAIN`] links); the rcode is then the target's.
//! 2. The name owns no record of the type (NODATA), owns none at all but
//!    names below it do (an empty non-terminal: NODATA), or does not exist
//!    (NXDOMAIN): the authority section carries the apex SOA with the TTL
//!    `min(SOA TTL, SOA minimum)`.
//! 3. NS and MX answers add the A and AAAA records of their targets that are
//!    in the zone as additional data, while they fit.
//!
//! An answer or SOA that does not fit the size limit sets TC (the client
//! would retry over TCP, which this server does not serve); additional data
//! that does not fit is left out.

use crate::name::Name;
use crate::rcode;
use crate::rdata;
use crate::rtype;
use crate::wire::Question;
use crate::writer::Writer;
use crate::zone::{NameState, RecordSlot, Zone};
use crate::{class, name::Key};

/// CNAME links followed inside the zone.
pub const MAX_CNAME_CHAIN: usize = 8;

/// The sections of an answer as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The rcode.
    pub rcode: u16,
    /// Records in the answer section.
    pub answers: u16,
    /// Records in the authority section.
    pub authority: u16,
    /// Records in the additional section.
    pub additional: u16,
    /// Something required did not fit (TC).
    pub truncated: bool,
}

/// Answers `q` (whose name is in the zone) into `w`, after the question.
pub fn answer<R, I>(zone: &Zone<R, I>, q: &Question, w: &mut Writer<'_>) -> Answer
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let mut a = Answer::default();
    let mut owner = q.name;
    let mut key = owner.key();
    for link in 0..=MAX_CNAME_CHAIN {
        match zone.name_state(&key) {
            NameState::Missing => {
                a.rcode = rcode::NXDOMAIN;
                negative(zone, w, &mut a);
                return a;
            }
            NameState::EmptyNonTerminal => {
                negative(zone, w, &mut a);
                return a;
            }
            NameState::Data => {}
        }
        if q.qtype == rtype::ANY {
            for r in zone.node(&key) {
                if !put(w, &owner, r, r.ttl(), &mut a.answers) {
                    a.truncated = true;
                    break;
                }
            }
            return a;
        }
        if q.qtype != rtype::CNAME
            && let Some(c) = zone.rrset(&key, rtype::CNAME).next()
        {
            if !put(w, &owner, c, c.ttl(), &mut a.answers) {
                a.truncated = true;
                return a;
            }
            let Some(target) = Name::from_wire(c.rdata()) else {
                return a;
            };
            let target_key = target.key();
            if !zone.contains(&target_key) || link == MAX_CNAME_CHAIN {
                return a;
            }
            owner = target;
            key = target_key;
            continue;
        }
        let before = a.answers;
        for r in zone.rrset(&key, q.qtype) {
            if !put(w, &owner, r, r.ttl(), &mut a.answers) {
                a.truncated = true;
                return a;
            }
        }
        if a.answers == before {
            negative(zone, w, &mut a);
        } else if q.qtype == rtype::NS || q.qtype == rtype::MX {
            additional(zone, &key, q.qtype, w, &mut a);
        }
        return a;
    }
    a
}

/// Writes `r` owned by `owner`; false if it did not fit.
fn put(w: &mut Writer<'_>, owner: &Name, r: &RecordSlot, ttl: u32, count: &mut u16) -> bool {
    let ok = w
        .record(owner, r.rtype(), class::IN, ttl, r.rdata())
        .is_ok();
    if ok {
        *count += 1;
    }
    ok
}

/// The apex SOA in the authority section (RFC 2308 §3).
fn negative<R, I>(zone: &Zone<R, I>, w: &mut Writer<'_>, a: &mut Answer)
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let Some(soa) = zone.soa() else { return };
    let ttl = rdata::soa_minimum(soa.rdata()).map_or(soa.ttl(), |m| m.min(soa.ttl()));
    if !put(w, zone.origin(), soa, ttl, &mut a.authority) {
        a.truncated = true;
    }
}

/// A and AAAA records of the in-zone targets of the NS or MX RRset at `key`.
fn additional<R, I>(zone: &Zone<R, I>, key: &Key, t: u16, w: &mut Writer<'_>, a: &mut Answer)
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let skip = if t == rtype::MX { 2 } else { 0 };
    for r in zone.rrset(key, t) {
        let Some(target) = r.rdata().get(skip..).and_then(Name::from_wire) else {
            continue;
        };
        let tk = target.key();
        if !zone.contains(&tk) {
            continue;
        }
        for at in [rtype::A, rtype::AAAA] {
            for g in zone.rrset(&tk, at) {
                if !put(w, &target, g, g.ttl(), &mut a.additional) {
                    return;
                }
            }
        }
    }
}

//! Dynamic updates (RFC 2136), applied whole or not at all.
//!
//! 1. Zone section (§3.1): exactly one record, type SOA, else FORMERR; its
//!    name and class must be the zone's, else NOTAUTH.
//! 2. Prerequisites (§3.2), against the zone before the update; TTL must be
//!    0 and every name in the zone (NOTZONE):
//!    * class ANY, type ANY: the name owns records, else NXDOMAIN;
//!    * class ANY, type T: an RRset of type T exists, else NXRRSET;
//!    * class NONE, type ANY: the name owns no record, else YXDOMAIN;
//!    * class NONE, type T: no RRset of type T, else YXRRSET;
//!    * class IN: the RRsets given exist with exactly these records (value
//!      dependent, compared after all the others), else NXRRSET.
//! 3. Update section prescan (§3.4.1): names in the zone (NOTZONE), classes
//!    and fields as the RFC allows (FORMERR), record data well formed
//!    (FORMERR) and within [`MAX_RDATA`] (REFUSED),
//!    and room for every addition in the zone's slots (SERVFAIL otherwise —
//!    counted before anything changes, so nothing is half applied).
//! 4. Apply in order (§3.4.2): class IN adds (a duplicate only refreshes
//!    the RRset's TTL; an SOA replaces the apex SOA only with a greater
//!    serial; a CNAME is ignored beside other data and replaces a CNAME;
//!    other data is ignored beside a CNAME); class ANY deletes an RRset, or
//!    every RRset of a name for type ANY; class NONE deletes one record. At
//!    the apex the SOA and the NS RRset are never deleted by type or ANY
//!    deletes, the SOA never by value, and the last NS record is kept.
//! 5. If the zone's contents changed (net: `Zone::content_sum` differs
//!    from before the update) and the update did not set the SOA itself,
//!    the serial is incremented (RFC 1982 arithmetic) — once per update.

use crate::name::Key;
use crate::rdata::{self, MAX_RDATA, RdataError};
use crate::wire::{Message, Rr, Section};
use crate::zone::{Change, NameState, RecordSlot, Zone};
use crate::{class, rcode, rtype};

/// What an update did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The rcode of the reply.
    pub rcode: u16,
    /// Records added.
    pub added: u32,
    /// Records deleted.
    pub deleted: u32,
    /// True if the zone's contents changed (and so the serial moved).
    pub changed: bool,
}

fn fail(rcode: u16) -> UpdateOutcome {
    UpdateOutcome {
        rcode,
        ..UpdateOutcome::default()
    }
}

/// Applies the UPDATE `msg` to `zone` (see the module doc).
pub fn apply<R, I>(zone: &mut Zone<R, I>, msg: &Message<'_>) -> UpdateOutcome
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    match msg.question() {
        Some(z) if msg.header.qdcount == 1 && z.qtype == rtype::SOA => {
            if z.qclass != class::IN || z.name != *zone.origin() {
                return fail(rcode::NOTAUTH);
            }
        }
        _ => return fail(rcode::FORMERR),
    }
    if let Err(rc) = prerequisites(zone, msg) {
        return fail(rc);
    }
    let adds = match prescan(zone, msg) {
        Ok(adds) => adds,
        Err(rc) => return fail(rc),
    };
    if zone.len() + adds > zone.capacity() {
        return fail(rcode::SERVFAIL);
    }
    let mut out = UpdateOutcome::default();
    let before = zone.content_sum();
    let mut soa_set = false;
    let mut buf = [0u8; MAX_RDATA];
    for rr in msg.records(Section::Authority) {
        let key = rr.name.key();
        let apex = key == *zone.origin_key();
        match rr.class {
            class::IN => {
                let Ok(n) = rdata::canonical(&rr, &mut buf) else {
                    continue;
                };
                let d = &buf[..n];
                if add(zone, &key, &rr, d, apex, &mut out) && rr.rtype == rtype::SOA {
                    soa_set = true;
                }
            }
            class::ANY => {
                let deleted = if rr.rtype == rtype::ANY {
                    zone.delete_node(&key, |t| apex && (t == rtype::SOA || t == rtype::NS))
                } else if apex && (rr.rtype == rtype::SOA || rr.rtype == rtype::NS) {
                    0
                } else {
                    zone.delete_rrset(&key, rr.rtype)
                };
                out.deleted += deleted as u32;
            }
            _ => {
                // class NONE (the prescan allowed nothing else).
                let Ok(n) = rdata::canonical(&rr, &mut buf) else {
                    continue;
                };
                let last_ns =
                    apex && rr.rtype == rtype::NS && zone.rrset(&key, rtype::NS).count() == 1;
                if rr.rtype != rtype::SOA && !last_ns && zone.delete_rr(&key, rr.rtype, &buf[..n]) {
                    out.deleted += 1;
                }
            }
        }
    }
    // Net change: an update that adds and deletes the same record, or only
    // re-adds what exists, leaves the serial alone (as BIND does).
    out.changed = zone.content_sum() != before;
    if out.changed
        && !soa_set
        && let Some(serial) = zone.serial()
    {
        zone.set_serial(serial.wrapping_add(1));
    }
    out
}

/// Adds one update record (class IN); true if the zone changed.
fn add<R, I>(
    zone: &mut Zone<R, I>,
    key: &Key,
    rr: &Rr<'_>,
    d: &[u8],
    apex: bool,
    out: &mut UpdateOutcome,
) -> bool
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    match rr.rtype {
        rtype::SOA => {
            let newer = match (zone.serial(), rdata::soa_serial(d)) {
                (Some(old), Some(new)) => rdata::serial_gt(new, old),
                _ => false,
            };
            if !apex || !newer {
                return false;
            }
            out.deleted += zone.delete_rrset(key, rtype::SOA) as u32;
        }
        rtype::CNAME => {
            if zone.node(key).any(|r| r.rtype() != rtype::CNAME) {
                return false;
            }
            if zone.rrset(key, rtype::CNAME).any(|r| r.rdata() != d) {
                out.deleted += zone.delete_rrset(key, rtype::CNAME) as u32;
            }
        }
        _ => {
            if zone.rrset(key, rtype::CNAME).next().is_some() {
                return false;
            }
        }
    }
    match zone.insert(key, rr.rtype, rr.ttl, d) {
        Ok(Change::Added) => {
            out.added += 1;
            true
        }
        Ok(Change::TtlChanged) => true,
        // Unchanged; or full, which the capacity check rules out.
        Ok(Change::Unchanged) | Err(_) => false,
    }
}

/// Checks the prerequisite section; `Err(rcode)` on the first failure.
fn prerequisites<R, I>(zone: &Zone<R, I>, msg: &Message<'_>) -> Result<(), u16>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let mut value_dependent = false;
    for rr in msg.records(Section::Answer) {
        if rr.ttl != 0 {
            return Err(rcode::FORMERR);
        }
        let key = rr.name.key();
        if !zone.contains(&key) {
            return Err(rcode::NOTZONE);
        }
        let exists = || zone.rrset(&key, rr.rtype).next().is_some();
        match rr.class {
            class::ANY | class::NONE if !rr.rdata.is_empty() => return Err(rcode::FORMERR),
            class::ANY if rr.rtype == rtype::ANY => {
                if zone.name_state(&key) != NameState::Data {
                    return Err(rcode::NXDOMAIN);
                }
            }
            class::ANY => {
                if !exists() {
                    return Err(rcode::NXRRSET);
                }
            }
            class::NONE if rr.rtype == rtype::ANY => {
                if zone.name_state(&key) == NameState::Data {
                    return Err(rcode::YXDOMAIN);
                }
            }
            class::NONE => {
                if exists() {
                    return Err(rcode::YXRRSET);
                }
            }
            class::IN if !rtype::is_meta(rr.rtype) => value_dependent = true,
            _ => return Err(rcode::FORMERR),
        }
    }
    if value_dependent {
        rrsets_match(zone, msg)?;
    }
    Ok(())
}

/// The value-dependent prerequisites: for each (name, type) given with
/// class IN, the zone's RRset holds exactly the distinct records given.
/// Each group is checked once, from its first record: O(P²) in the number
/// of prerequisites, bounded by the datagram.
fn rrsets_match<R, I>(zone: &Zone<R, I>, msg: &Message<'_>) -> Result<(), u16>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let same_set =
        |a: &Rr<'_>, b: &Rr<'_>| b.class == class::IN && a.rtype == b.rtype && a.name == b.name;
    let (mut a, mut b) = ([0u8; MAX_RDATA], [0u8; MAX_RDATA]);
    for (i, lead) in msg.records(Section::Answer).enumerate() {
        if lead.class != class::IN
            || msg
                .records(Section::Answer)
                .take(i)
                .any(|e| same_set(&lead, &e))
        {
            continue;
        }
        let key = lead.name.key();
        let mut distinct = 0usize;
        let members = msg.records(Section::Answer).skip(i);
        for (j, m) in members.enumerate().filter(|(_, m)| same_set(&lead, m)) {
            let n = match rdata::canonical(&m, &mut a) {
                Ok(n) => n,
                Err(RdataError::Bad(_)) => return Err(rcode::FORMERR),
                Err(RdataError::TooLong { .. }) => return Err(rcode::NXRRSET),
            };
            if !zone.rrset(&key, m.rtype).any(|r| r.rdata() == &a[..n]) {
                return Err(rcode::NXRRSET);
            }
            let repeated = msg
                .records(Section::Answer)
                .skip(i)
                .take(j)
                .filter(|e| same_set(&lead, e))
                .any(|e| rdata::canonical(&e, &mut b).is_ok_and(|k| b[..k] == a[..n]));
            if !repeated {
                distinct += 1;
            }
        }
        if zone.rrset(&key, lead.rtype).count() != distinct {
            return Err(rcode::NXRRSET);
        }
    }
    Ok(())
}

/// Checks the update section; returns the number of additions.
fn prescan<R, I>(zone: &Zone<R, I>, msg: &Message<'_>) -> Result<usize, u16>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let mut adds = 0usize;
    let mut buf = [0u8; MAX_RDATA];
    for rr in msg.records(Section::Authority) {
        if !zone.contains(&rr.name.key()) {
            return Err(rcode::NOTZONE);
        }
        match rr.class {
            class::IN => {
                if rtype::is_meta(rr.rtype) {
                    return Err(rcode::FORMERR);
                }
                match rdata::canonical(&rr, &mut buf) {
                    Ok(_) => adds += 1,
                    Err(RdataError::Bad(_)) => return Err(rcode::FORMERR),
                    Err(RdataError::TooLong { .. }) => return Err(rcode::REFUSED),
                }
            }
            class::ANY => {
                if rr.ttl != 0
                    || !rr.rdata.is_empty()
                    || (rtype::is_meta(rr.rtype) && rr.rtype != rtype::ANY)
                {
                    return Err(rcode::FORMERR);
                }
            }
            class::NONE => {
                if rr.ttl != 0 || rtype::is_meta(rr.rtype) {
                    return Err(rcode::FORMERR);
                }
                if let Err(RdataError::Bad(_)) = rdata::canonical(&rr, &mut buf) {
                    return Err(rcode::FORMERR);
                }
            }
            _ => return Err(rcode::FORMERR),
        }
    }
    Ok(adds)
}

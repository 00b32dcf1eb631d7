//! The zone: records in caller-provided fixed-capacity slots, and an index
//! of slot numbers sorted by (name [`Key`], type).
//!
//! Nothing allocates: the slots are a `[RecordSlot; N]` or a `Vec` made by
//! the caller, the index a `[u32; N]`. A lookup is a binary search of the
//! index; an RRset and a node (every type at a name) are contiguous runs of
//! it, and the names below a node follow it contiguously (see [`Key`]), so
//! an empty non-terminal is "the next key starts with this one". Inserting
//! or deleting shifts the tail of the index (4 bytes per record), which is
//! cheap beside a datagram's exit cost. The order of everything is fixed by
//! the records and the order of the operations, so two zones fed the same
//! operations are identical, slot for slot.

use core::cmp::Ordering;
use core::fmt;

use crate::name::{Key, MAX_NAME, Name};
use crate::rdata::{self, MAX_RDATA};
use crate::rtype;

/// One record of the zone (class IN), or a free slot.
#[derive(Clone, Copy)]
pub struct RecordSlot {
    used: bool,
    key_len: u8,
    rtype: u16,
    ttl: u32,
    rdata_len: u16,
    key: [u8; MAX_NAME - 1],
    rdata: [u8; MAX_RDATA],
}

impl RecordSlot {
    /// A free slot (to fill a table with).
    pub const EMPTY: RecordSlot = RecordSlot {
        used: false,
        key_len: 0,
        rtype: 0,
        ttl: 0,
        rdata_len: 0,
        key: [0; MAX_NAME - 1],
        rdata: [0; MAX_RDATA],
    };

    /// The owner's key bytes.
    pub fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    /// The owner name (lower case).
    pub fn name(&self) -> Name {
        Key::from_stored(self.key()).to_name()
    }

    /// The type.
    pub fn rtype(&self) -> u16 {
        self.rtype
    }

    /// The TTL.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The data in canonical form.
    pub fn rdata(&self) -> &[u8] {
        &self.rdata[..usize::from(self.rdata_len)]
    }

    fn cmp_entry(&self, key: &[u8], t: u16) -> Ordering {
        self.key().cmp(key).then(self.rtype.cmp(&t))
    }
}

impl fmt::Debug for RecordSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.used {
            return f.write_str("RecordSlot(free)");
        }
        write!(
            f,
            "RecordSlot({} {} type {} rdata {:02x?})",
            self.name(),
            self.ttl,
            self.rtype,
            self.rdata()
        )
    }
}

/// The zone's record slots are all used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneFull {
    /// The number of slots.
    pub capacity: usize,
}

impl fmt::Display for ZoneFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the zone's {} record slots are all used", self.capacity)
    }
}

impl core::error::Error for ZoneFull {}

/// What a name is in the zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameState {
    /// It owns records.
    Data,
    /// It owns none, but names below it do (it exists: NODATA, not NXDOMAIN).
    EmptyNonTerminal,
    /// Neither.
    Missing,
}

/// What [`Zone::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new record.
    Added,
    /// The record existed; its RRset took the new TTL.
    TtlChanged,
    /// The record existed with this TTL.
    Unchanged,
}

/// The zone (see the module doc). `R` holds the record slots, `I` the index.
#[derive(Clone, Debug)]
pub struct Zone<R, I> {
    origin: Name,
    origin_key: Key,
    slots: R,
    index: I,
    len: usize,
    next_free: usize,
    sum: u64,
}

/// A record's share of [`Zone::content_sum`]: FNV-1a of its fields, then
/// the splitmix64 finalizer, so that sums of different record sets differ.
fn record_hash(key: &[u8], t: u16, ttl: u32, rdata: &[u8]) -> u64 {
    let mut h = crate::fnv1a(crate::FNV_START, &[key.len() as u8]);
    h = crate::fnv1a(h, key);
    h = crate::fnv1a(h, &t.to_be_bytes());
    h = crate::fnv1a(h, &ttl.to_be_bytes());
    h = crate::fnv1a(h, rdata);
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl RecordSlot {
    fn hash(&self) -> u64 {
        record_hash(self.key(), self.rtype, self.ttl, self.rdata())
    }
}

/// Iterator over records in index order.
#[derive(Debug, Clone)]
pub struct Records<'z> {
    slots: &'z [RecordSlot],
    index: &'z [u32],
}

impl<'z> Iterator for Records<'z> {
    type Item = &'z RecordSlot;
    fn next(&mut self) -> Option<&'z RecordSlot> {
        let (&i, rest) = self.index.split_first()?;
        self.index = rest;
        self.slots.get(i as usize)
    }
}

impl<R, I> Zone<R, I>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    /// An empty zone of the root over `slots` (every one
    /// [`RecordSlot::EMPTY`]) and `index` (any values); its capacity is the
    /// shorter of the two. [`Zone::reset`] gives it its origin.
    pub fn new(slots: R, index: I) -> Self {
        Zone {
            origin: Name::ROOT,
            origin_key: Key::ROOT,
            slots,
            index,
            len: 0,
            next_free: 0,
            sum: 0,
        }
    }

    /// Empties the zone and makes `origin` its apex.
    pub fn reset(&mut self, origin: &Name) {
        for s in self.slots.as_mut() {
            s.used = false;
        }
        self.origin = origin.lowercased();
        self.origin_key = origin.key();
        self.len = 0;
        self.next_free = 0;
        self.sum = 0;
    }

    /// The sum of a hash of every record: it depends only on the set of
    /// records (not on the order of the operations that made it) and is
    /// kept up to date at every change, so comparing it before and after
    /// an update tells in O(1) whether the zone's contents changed.
    pub fn content_sum(&self) -> u64 {
        self.sum
    }

    /// The apex.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The apex's key.
    pub fn origin_key(&self) -> &Key {
        &self.origin_key
    }

    /// Records the zone can hold.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len().min(self.index.as_ref().len())
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the zone holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `key` is the apex or below it.
    pub fn contains(&self, key: &Key) -> bool {
        key.is_in(&self.origin_key)
    }

    fn at(&self, pos: usize) -> &RecordSlot {
        &self.slots.as_ref()[self.index.as_ref()[pos] as usize]
    }

    /// First index position whose entry is not below (key, t) (with
    /// `upper`: above it).
    fn bound(&self, key: &[u8], t: u16, upper: bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let below = match self.at(mid).cmp_entry(key, t) {
                Ordering::Less => true,
                Ordering::Equal => upper,
                Ordering::Greater => false,
            };
            if below {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn run(&self, lo: usize, hi: usize) -> Records<'_> {
        Records {
            slots: self.slots.as_ref(),
            index: &self.index.as_ref()[lo..hi],
        }
    }

    /// Every record, in index order.
    pub fn records(&self) -> Records<'_> {
        self.run(0, self.len)
    }

    /// The RRset of type `t` at `key`.
    pub fn rrset(&self, key: &Key, t: u16) -> Records<'_> {
        let k = key.as_bytes();
        self.run(self.bound(k, t, false), self.bound(k, t, true))
    }

    /// Every record at `key`, by type.
    pub fn node(&self, key: &Key) -> Records<'_> {
        let k = key.as_bytes();
        self.run(self.bound(k, 0, false), self.bound(k, u16::MAX, true))
    }

    /// Whether `key` owns records, only has names below it, or neither.
    pub fn name_state(&self, key: &Key) -> NameState {
        let k = key.as_bytes();
        let pos = self.bound(k, 0, false);
        if pos == self.len {
            return NameState::Missing;
        }
        let found = self.at(pos).key();
        if found == k {
            NameState::Data
        } else if found.starts_with(k) {
            NameState::EmptyNonTerminal
        } else {
            NameState::Missing
        }
    }

    /// Adds a record (canonical `rdata`, at most [`MAX_RDATA`] bytes), or
    /// finds it already there. The whole RRset takes `ttl` (RFC 2181 §5.2:
    /// one TTL per RRset).
    pub fn insert(
        &mut self,
        key: &Key,
        t: u16,
        ttl: u32,
        rdata: &[u8],
    ) -> Result<Change, ZoneFull> {
        let k = key.as_bytes();
        let (lo, hi) = (self.bound(k, t, false), self.bound(k, t, true));
        let exists = (lo..hi).any(|p| self.at(p).rdata() == rdata);
        let ttl_differs = (lo..hi).any(|p| self.at(p).ttl != ttl);
        if !exists {
            let capacity = self.capacity();
            if self.len == capacity || rdata.len() > MAX_RDATA {
                return Err(ZoneFull { capacity });
            }
            let slots = self.slots.as_mut();
            let mut free = self.next_free % capacity;
            while slots[free].used {
                free = (free + 1) % capacity;
            }
            let s = &mut slots[free];
            s.used = true;
            s.key_len = k.len() as u8;
            s.key[..k.len()].copy_from_slice(k);
            s.rtype = t;
            s.ttl = ttl;
            s.rdata_len = rdata.len() as u16;
            s.rdata[..rdata.len()].copy_from_slice(rdata);
            self.sum = self.sum.wrapping_add(s.hash());
            self.next_free = free + 1;
            let index = self.index.as_mut();
            index.copy_within(hi..self.len, hi + 1);
            index[hi] = free as u32;
            self.len += 1;
        }
        if ttl_differs {
            self.set_ttl(lo, hi + usize::from(!exists), ttl);
        }
        Ok(match (exists, ttl_differs) {
            (false, _) => Change::Added,
            (true, true) => Change::TtlChanged,
            (true, false) => Change::Unchanged,
        })
    }

    fn set_ttl(&mut self, lo: usize, hi: usize, ttl: u32) {
        for p in lo..hi {
            let i = self.index.as_ref()[p] as usize;
            let s = &mut self.slots.as_mut()[i];
            self.sum = self.sum.wrapping_sub(s.hash());
            s.ttl = ttl;
            self.sum = self.sum.wrapping_add(s.hash());
        }
    }

    fn remove_at(&mut self, pos: usize) {
        let index = self.index.as_mut();
        let slot = index[pos] as usize;
        index.copy_within(pos + 1..self.len, pos);
        self.len -= 1;
        let s = &mut self.slots.as_mut()[slot];
        s.used = false;
        self.sum = self.sum.wrapping_sub(s.hash());
        self.next_free = slot;
    }

    /// Deletes the record with this data; true if it existed.
    pub fn delete_rr(&mut self, key: &Key, t: u16, rdata: &[u8]) -> bool {
        let k = key.as_bytes();
        let (lo, hi) = (self.bound(k, t, false), self.bound(k, t, true));
        match (lo..hi).find(|&p| self.at(p).rdata() == rdata) {
            Some(p) => {
                self.remove_at(p);
                true
            }
            None => false,
        }
    }

    /// Deletes the RRset of type `t` at `key`; returns the records deleted.
    pub fn delete_rrset(&mut self, key: &Key, t: u16) -> usize {
        let k = key.as_bytes();
        let (lo, hi) = (self.bound(k, t, false), self.bound(k, t, true));
        for p in (lo..hi).rev() {
            self.remove_at(p);
        }
        hi - lo
    }

    /// Deletes every record at `key` whose type `keep` does not keep;
    /// returns the records deleted.
    pub fn delete_node(&mut self, key: &Key, keep: impl Fn(u16) -> bool) -> usize {
        let k = key.as_bytes();
        let (lo, hi) = (self.bound(k, 0, false), self.bound(k, u16::MAX, true));
        let mut deleted = 0;
        for p in (lo..hi).rev() {
            if !keep(self.at(p).rtype) {
                self.remove_at(p);
                deleted += 1;
            }
        }
        deleted
    }

    /// The apex SOA record.
    pub fn soa(&self) -> Option<&RecordSlot> {
        self.rrset(&self.origin_key, rtype::SOA).next()
    }

    /// The SOA serial.
    pub fn serial(&self) -> Option<u32> {
        self.soa().and_then(|s| rdata::soa_serial(s.rdata()))
    }

    /// Sets the SOA serial (no-op without an SOA).
    pub fn set_serial(&mut self, serial: u32) {
        let k = self.origin_key;
        let k = k.as_bytes();
        let lo = self.bound(k, rtype::SOA, false);
        if lo < self.bound(k, rtype::SOA, true) {
            let i = self.index.as_ref()[lo] as usize;
            let s = &mut self.slots.as_mut()[i];
            let len = usize::from(s.rdata_len);
            self.sum = self.sum.wrapping_sub(s.hash());
            rdata::set_soa_serial(&mut s.rdata[..len], serial);
            self.sum = self.sum.wrapping_add(s.hash());
        }
    }

    /// A digest of the contents (origin, then every record in index order:
    /// key, type, TTL, data): equal for zones with equal records.
    pub fn digest(&self) -> u64 {
        let mut h = crate::fnv1a(crate::FNV_START, self.origin.as_wire());
        for r in self.records() {
            h = crate::fnv1a(h, &[r.key_len]);
            h = crate::fnv1a(h, r.key());
            h = crate::fnv1a(h, &r.rtype.to_be_bytes());
            h = crate::fnv1a(h, &r.ttl.to_be_bytes());
            h = crate::fnv1a(h, &r.rdata_len.to_be_bytes());
            h = crate::fnv1a(h, r.rdata());
        }
        h
    }
}

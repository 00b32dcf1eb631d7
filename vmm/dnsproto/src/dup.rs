//! The duplicate table: the replies of the most recent UPDATEs, so that a
//! retransmitted UPDATE is answered again and not applied twice.
//!
//! DNS has no request numbers. A client that retries an UPDATE (nsupdate
//! after its timeout, or any client after a failover lost the reply) sends
//! the same datagram again: the same message id from the same source
//! address and port. Applied twice, a non-idempotent update (an add after a
//! delete, a serial bump) would change the zone twice. The table keys each
//! UPDATE by (source, id, FNV-1a digest of the whole datagram) and keeps
//! its reply; a datagram that matches gets the stored reply byte for byte.
//! A different update that happens to reuse a source and id has another
//! digest and is applied normally.
//!
//! **The window** is counted in updates, not time: the table is a ring of N
//! slots (the guest uses 256), each new UPDATE replacing the oldest. A
//! retry is recognised while fewer than N other UPDATEs have been served
//! since the original — nsupdate retries after 3 s, so at 256 slots a retry
//! is safe up to about 85 updates/s of other traffic in between. Counting
//! needs no clock, so the table is the same on a replaying backup.
//! Queries are idempotent and never enter the table.

use core::fmt;

/// Bytes of a source address as the NIC encodes it (`docs/devices.md`).
pub const PEER_LEN: usize = 24;
/// Longest reply remembered (UPDATE replies carry the zone section only:
/// at most 12 + 259 + 11 bytes).
pub const DUP_REPLY_MAX: usize = 320;

/// One remembered UPDATE.
#[derive(Clone, Copy)]
pub struct DupSlot {
    used: bool,
    id: u16,
    reply_len: u16,
    peer: [u8; PEER_LEN],
    digest: u64,
    reply: [u8; DUP_REPLY_MAX],
}

impl DupSlot {
    /// An empty slot (to fill a table with).
    pub const EMPTY: DupSlot = DupSlot {
        used: false,
        id: 0,
        reply_len: 0,
        peer: [0; PEER_LEN],
        digest: 0,
        reply: [0; DUP_REPLY_MAX],
    };
}

impl fmt::Debug for DupSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DupSlot(used {} id {} digest {:016x} reply {} bytes)",
            self.used, self.id, self.digest, self.reply_len
        )
    }
}

/// The ring of recent UPDATE replies (see the module doc).
#[derive(Clone, Debug)]
pub struct DupTable<D> {
    slots: D,
    next: usize,
}

fn peer_bytes(peer: &[u8]) -> [u8; PEER_LEN] {
    let mut p = [0u8; PEER_LEN];
    let n = peer.len().min(PEER_LEN);
    p[..n].copy_from_slice(&peer[..n]);
    p
}

impl<D> DupTable<D>
where
    D: AsRef<[DupSlot]> + AsMut<[DupSlot]>,
{
    /// A table over `slots` (every one [`DupSlot::EMPTY`]).
    pub fn new(slots: D) -> Self {
        DupTable { slots, next: 0 }
    }

    /// The window: UPDATEs remembered.
    pub fn window(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// The stored reply of the UPDATE from `peer` with `id` and `digest`.
    pub fn find(&self, peer: &[u8], id: u16, digest: u64) -> Option<&[u8]> {
        let p = peer_bytes(peer);
        self.slots
            .as_ref()
            .iter()
            .find(|s| s.used && s.digest == digest && s.id == id && s.peer == p)
            .map(|s| &s.reply[..usize::from(s.reply_len)])
    }

    /// Remembers `reply` for the UPDATE, replacing the oldest entry. A reply
    /// longer than [`DUP_REPLY_MAX`] is not remembered.
    pub fn remember(&mut self, peer: &[u8], id: u16, digest: u64, reply: &[u8]) {
        let slots = self.slots.as_mut();
        if slots.is_empty() || reply.len() > DUP_REPLY_MAX {
            return;
        }
        let s = &mut slots[self.next];
        s.used = true;
        s.id = id;
        s.peer = peer_bytes(peer);
        s.digest = digest;
        s.reply_len = reply.len() as u16;
        s.reply[..reply.len()].copy_from_slice(reply);
        self.next = (self.next + 1) % slots.len();
    }

    /// Mixes the table (ring position and every entry) into `h`.
    pub fn digest(&self, h: u64) -> u64 {
        let mut h = crate::fnv1a(h, &(self.next as u64).to_le_bytes());
        for s in self.slots.as_ref().iter().filter(|s| s.used) {
            h = crate::fnv1a(h, &s.peer);
            h = crate::fnv1a(h, &s.id.to_le_bytes());
            h = crate::fnv1a(h, &s.digest.to_le_bytes());
            h = crate::fnv1a(h, &s.reply[..usize::from(s.reply_len)]);
        }
        h
    }
}

//! The kv store as a `no_std` state machine over fixed-capacity tables.
//!
//! [`Store::apply`] is the whole service: it deduplicates by client (a retry
//! of the client's last request is answered again from the stored reply and
//! not applied twice; an older request gets [`Status::Stale`]) and then
//! applies the op to the key table. Both tables are open-addressed hash
//! tables with linear probing over caller-provided slot arrays (`[Slot; N]`
//! in a guest's static memory, a `Vec` on the host), so nothing allocates.
//! Keys are never deleted, which keeps probing simple.

use crate::format::{MAX_DATAGRAM, MAX_KEY, MAX_VALUE, Op, Reply, Request, Status};

/// One slot of the key table.
#[derive(Clone, Copy, Debug)]
pub struct KeySlot {
    used: bool,
    key_len: u8,
    value_len: u16,
    key: [u8; MAX_KEY],
    value: [u8; MAX_VALUE],
}

impl KeySlot {
    /// An empty slot (to fill a table with).
    pub const EMPTY: KeySlot = KeySlot {
        used: false,
        key_len: 0,
        value_len: 0,
        key: [0; MAX_KEY],
        value: [0; MAX_VALUE],
    };

    fn key(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len)]
    }

    fn value(&self) -> &[u8] {
        &self.value[..usize::from(self.value_len)]
    }

    fn set_value(&mut self, v: &[u8]) {
        self.value[..v.len()].copy_from_slice(v);
        // v.len() <= MAX_VALUE (checked by the codec or by the caller).
        self.value_len = v.len() as u16;
    }
}

/// One slot of the client table: the client's last request and its reply.
#[derive(Clone, Copy, Debug)]
pub struct ClientSlot {
    used: bool,
    client_id: u64,
    last_request_no: u64,
    status: Status,
    op: Op,
    value_len: u16,
    value: [u8; MAX_VALUE],
}

impl ClientSlot {
    /// An empty slot (to fill a table with).
    pub const EMPTY: ClientSlot = ClientSlot {
        used: false,
        client_id: 0,
        last_request_no: 0,
        status: Status::Ok,
        op: Op::Get,
        value_len: 0,
        value: [0; MAX_VALUE],
    };

    fn reply(&self) -> Reply<'_> {
        Reply {
            status: self.status,
            op: Some(self.op),
            client_id: self.client_id,
            request_no: self.last_request_no,
            value: &self.value[..usize::from(self.value_len)],
        }
    }
}

/// Counters of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Requests applied (new request numbers).
    pub applied: u64,
    /// Retries answered from the client table.
    pub duplicates: u64,
    /// Requests refused as stale.
    pub stale: u64,
    /// Requests refused as bad or because a table was full.
    pub refused: u64,
    /// Keys stored.
    pub keys: usize,
    /// Clients known.
    pub clients: usize,
}

/// The kv state machine. `K` and `C` are the key and client slot tables.
#[derive(Debug)]
pub struct Store<K, C> {
    keys: K,
    clients: C,
    stats: StoreStats,
}

/// FNV-1a, 64 bit: a fixed hash, so that table layout (and so a guest's
/// memory image) is the same on every run.
use ftvm_guest_abi::fnv::hash as fnv1a;

/// Where `probe` found the key: its slot, or the first free slot.
enum Probe {
    Found(usize),
    Free(usize),
    Full,
}

fn probe<T>(slots: &[T], hash: u64, used: impl Fn(&T) -> bool, is: impl Fn(&T) -> bool) -> Probe {
    let n = slots.len();
    if n == 0 {
        return Probe::Full;
    }
    let start = (hash % n as u64) as usize;
    for i in 0..n {
        let at = (start + i) % n;
        let s = &slots[at];
        if !used(s) {
            return Probe::Free(at);
        }
        if is(s) {
            return Probe::Found(at);
        }
    }
    Probe::Full
}

impl<K, C> Store<K, C>
where
    K: AsRef<[KeySlot]> + AsMut<[KeySlot]>,
    C: AsRef<[ClientSlot]> + AsMut<[ClientSlot]>,
{
    /// A store over empty tables (every slot [`KeySlot::EMPTY`] /
    /// [`ClientSlot::EMPTY`]). `const` so a guest can place it in a static.
    pub const fn new(keys: K, clients: C) -> Self {
        Store {
            keys,
            clients,
            stats: StoreStats {
                applied: 0,
                duplicates: 0,
                stale: 0,
                refused: 0,
                keys: 0,
                clients: 0,
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let slots = self.keys.as_ref();
        match probe(slots, fnv1a(key), |s| s.used, |s| s.key() == key) {
            Probe::Found(i) => Some(slots[i].value()),
            Probe::Free(_) | Probe::Full => None,
        }
    }

    /// A digest of the contents (key slots with their positions, values, the
    /// client table): two stores that applied the same requests in the same
    /// order have equal digests.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (i, s) in self.keys.as_ref().iter().enumerate() {
            if s.used {
                mix(&(i as u64).to_le_bytes());
                mix(s.key());
                mix(&[0xff]);
                mix(s.value());
            }
        }
        for s in self.clients.as_ref() {
            if s.used {
                mix(&s.client_id.to_le_bytes());
                mix(&s.last_request_no.to_le_bytes());
                mix(&[s.status as u8, s.op as u8]);
                mix(&s.value[..usize::from(s.value_len)]);
            }
        }
        h
    }

    /// Applies one request and returns its reply (see the module doc).
    pub fn apply(&mut self, req: &Request<'_>) -> Reply<'_> {
        let refused = |status| Reply {
            status,
            op: Some(req.op),
            client_id: req.client_id,
            request_no: req.request_no,
            value: &[],
        };
        if req.request_no == 0 {
            self.stats.refused += 1;
            return refused(Status::BadRequest);
        }
        let id = req.client_id;
        let slot = match probe(
            self.clients.as_ref(),
            fnv1a(&id.to_le_bytes()),
            |s| s.used,
            |s| s.client_id == id,
        ) {
            Probe::Found(i) => i,
            Probe::Free(i) => {
                let c = &mut self.clients.as_mut()[i];
                *c = ClientSlot::EMPTY;
                c.used = true;
                c.client_id = id;
                self.stats.clients += 1;
                i
            }
            Probe::Full => {
                self.stats.refused += 1;
                return refused(Status::Full);
            }
        };
        let last = self.clients.as_ref()[slot].last_request_no;
        if req.request_no < last {
            self.stats.stale += 1;
            return refused(Status::Stale);
        }
        if req.request_no == last {
            self.stats.duplicates += 1;
            return self.clients.as_ref()[slot].reply();
        }
        self.stats.applied += 1;
        let client = &mut self.clients.as_mut()[slot];
        client.last_request_no = req.request_no;
        client.op = req.op;
        let (status, value_len) = execute(
            self.keys.as_mut(),
            &mut self.stats.keys,
            req,
            &mut client.value,
        );
        client.status = status;
        // value_len <= MAX_VALUE by construction in `execute`.
        client.value_len = value_len as u16;
        client.reply()
    }

    /// The whole service for one datagram: decode, apply, encode the reply
    /// into `out` (at least [`MAX_DATAGRAM`] bytes). A datagram whose header
    /// is readable but whose body is not gets a BAD_REQUEST reply; one that
    /// is not a request at all gets none (`None`).
    pub fn serve(&mut self, datagram: &[u8], out: &mut [u8; MAX_DATAGRAM]) -> Option<usize> {
        let reply = match Request::decode(datagram) {
            Ok(req) => self.apply(&req).encode(out),
            Err(_) => {
                let (client_id, request_no) = Request::peek_ids(datagram)?;
                self.stats.refused += 1;
                let op = Op::from_u8(datagram[4]);
                Reply {
                    status: Status::BadRequest,
                    op,
                    client_id,
                    request_no,
                    value: &[],
                }
                .encode(out)
            }
        };
        // Replies are at most HEADER_LEN + MAX_VALUE < MAX_DATAGRAM bytes.
        reply.ok()
    }
}

/// Runs `req` against the key table; the reply value goes to `out`.
fn execute(
    keys: &mut [KeySlot],
    key_count: &mut usize,
    req: &Request<'_>,
    out: &mut [u8; MAX_VALUE],
) -> (Status, usize) {
    let key = req.key;
    let found = probe(keys, fnv1a(key), |s| s.used, |s| s.key() == key);
    let mut insert = |at: usize| -> usize {
        let s = &mut keys[at];
        *s = KeySlot::EMPTY;
        s.used = true;
        s.key[..key.len()].copy_from_slice(key);
        // key.len() <= MAX_KEY = 64 (checked by the codec).
        s.key_len = key.len() as u8;
        *key_count += 1;
        at
    };
    match req.op {
        Op::Put => {
            let at = match found {
                Probe::Found(i) => i,
                Probe::Free(i) => insert(i),
                Probe::Full => return (Status::Full, 0),
            };
            keys[at].set_value(req.value);
            (Status::Ok, 0)
        }
        Op::Get => match found {
            Probe::Found(i) => {
                let v = keys[i].value();
                out[..v.len()].copy_from_slice(v);
                (Status::Ok, v.len())
            }
            Probe::Free(_) | Probe::Full => (Status::NotFound, 0),
        },
        Op::Append => {
            let at = match found {
                Probe::Found(i) => i,
                Probe::Free(i) => insert(i),
                Probe::Full => return (Status::Full, 0),
            };
            let s = &mut keys[at];
            let old = usize::from(s.value_len);
            let new = old + req.value.len();
            if new > MAX_VALUE {
                return (Status::TooLarge, 0);
            }
            s.value[old..new].copy_from_slice(req.value);
            s.value_len = new as u16;
            out[..new].copy_from_slice(&s.value[..new]);
            (Status::Ok, new)
        }
        Op::Cas => match found {
            Probe::Found(i) => {
                let s = &mut keys[i];
                if s.value() == req.value {
                    s.set_value(req.new_value);
                    (Status::Ok, 0)
                } else {
                    let v = s.value();
                    out[..v.len()].copy_from_slice(v);
                    (Status::CasMismatch, v.len())
                }
            }
            Probe::Free(_) | Probe::Full => (Status::NotFound, 0),
        },
    }
}

//! Writing replies with name compression (RFC 1035 §4.1.4) and a size limit.
//!
//! The writer remembers where it wrote each name suffix (up to
//! [`MAX_MARKS`] of them below offset 0x4000) and writes a later name as
//! its new labels plus a pointer to the longest suffix already in the
//! message, compared without case. Names inside NS, CNAME, PTR, MX and SOA
//! data are compressed too (RFC 3597 §4 allows it for these types only).
//! Each record is written whole or not at all: one that would pass the
//! limit is rolled back and reported as [`Full`], and the caller decides
//! whether that means TC (an answer) or just a shorter reply (additional
//! data).

use crate::name::Name;
use crate::rdata::name_layout;
use crate::wire::{HEADER_LEN, Header, Question};

/// Name suffix offsets remembered for compression.
pub const MAX_MARKS: usize = 64;

/// A record did not fit the reply's size limit (it was not written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A reply under construction (see the module doc).
#[derive(Debug)]
pub struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
    limit: usize,
    marks: [u16; MAX_MARKS],
    nmarks: usize,
}

/// A position to roll back to.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    len: usize,
    nmarks: usize,
}

impl<'b> Writer<'b> {
    /// A writer of at most `limit` bytes into `buf` (at least a header
    /// long), positioned after the header, which [`Writer::header`] writes
    /// last.
    pub fn new(buf: &'b mut [u8], limit: usize) -> Writer<'b> {
        let limit = limit.min(buf.len()).max(HEADER_LEN);
        Writer {
            buf,
            len: HEADER_LEN,
            limit,
            marks: [0; MAX_MARKS],
            nmarks: 0,
        }
    }

    /// Bytes written so far (the header included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing follows the header yet.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN
    }

    /// The size limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Changes the size limit (never beyond the buffer).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(self.buf.len()).max(HEADER_LEN);
    }

    /// The current position.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            len: self.len,
            nmarks: self.nmarks,
        }
    }

    /// Forgets everything written after `cp`.
    pub fn rollback(&mut self, cp: Checkpoint) {
        self.len = cp.len;
        self.nmarks = cp.nmarks;
    }

    /// Writes the header at the start of the reply.
    pub fn header(&mut self, h: &Header) {
        h.write(&mut self.buf[..HEADER_LEN]);
    }

    /// The reply so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        let end = self.len + bytes.len();
        if end > self.limit {
            return Err(Full);
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Runs `f` as one unit: on [`Full`] nothing it wrote stays.
    fn atomic(&mut self, f: impl FnOnce(&mut Self) -> Result<(), Full>) -> Result<(), Full> {
        let cp = self.checkpoint();
        let r = f(self);
        if r.is_err() {
            self.rollback(cp);
        }
        r
    }

    /// True if the name at `off` in the reply equals the wire name `suffix`
    /// (without case).
    fn equals_at(&self, off: usize, suffix: &[u8]) -> bool {
        let (mut p, mut s, mut hops) = (off, 0usize, 0);
        loop {
            let Some(&b) = self.buf[..self.len].get(p) else {
                return false;
            };
            if b & 0xc0 == 0xc0 {
                let Some(&lo) = self.buf[..self.len].get(p + 1) else {
                    return false;
                };
                p = (usize::from(b & 0x3f) << 8) | usize::from(lo);
                hops += 1;
                if hops > MAX_MARKS {
                    return false;
                }
                continue;
            }
            if suffix.get(s) != Some(&b) {
                return false;
            }
            let l = usize::from(b);
            if l == 0 {
                return true;
            }
            let (Some(x), Some(y)) = (
                self.buf[..self.len].get(p + 1..p + 1 + l),
                suffix.get(s + 1..s + 1 + l),
            ) else {
                return false;
            };
            if !x.eq_ignore_ascii_case(y) {
                return false;
            }
            p += 1 + l;
            s += 1 + l;
        }
    }

    fn find(&self, suffix: &[u8]) -> Option<u16> {
        self.marks[..self.nmarks]
            .iter()
            .copied()
            .find(|&m| self.equals_at(usize::from(m), suffix))
    }

    fn mark(&mut self, off: usize) {
        if off < 0x4000 && self.nmarks < MAX_MARKS {
            self.marks[self.nmarks] = off as u16;
            self.nmarks += 1;
        }
    }

    /// Writes `name`, compressed against the names already written.
    pub fn name(&mut self, name: &Name) -> Result<(), Full> {
        self.atomic(|w| {
            let wire = name.as_wire();
            let mut pos = 0usize;
            while wire[pos] != 0 {
                if let Some(target) = w.find(&wire[pos..]) {
                    w.labels(&wire[..pos])?;
                    return w.put(&(0xc000 | target).to_be_bytes());
                }
                pos += 1 + usize::from(wire[pos]);
            }
            w.labels(&wire[..pos])?;
            w.put(&[0])
        })
    }

    /// Writes uncompressed labels (no root byte), remembering each suffix.
    fn labels(&mut self, labels: &[u8]) -> Result<(), Full> {
        let mut pos = 0usize;
        while pos < labels.len() {
            let start = self.len;
            let l = 1 + usize::from(labels[pos]);
            self.put(&labels[pos..pos + l])?;
            self.mark(start);
            pos += l;
        }
        Ok(())
    }

    /// Writes a question.
    pub fn question(&mut self, q: &Question) -> Result<(), Full> {
        self.atomic(|w| {
            w.name(&q.name)?;
            w.put(&q.qtype.to_be_bytes())?;
            w.put(&q.qclass.to_be_bytes())
        })
    }

    /// Writes a record whose data is in canonical form.
    pub fn record(
        &mut self,
        owner: &Name,
        rtype: u16,
        class: u16,
        ttl: u32,
        rdata: &[u8],
    ) -> Result<(), Full> {
        self.atomic(|w| {
            w.name(owner)?;
            w.put(&rtype.to_be_bytes())?;
            w.put(&class.to_be_bytes())?;
            w.put(&ttl.to_be_bytes())?;
            let len_at = w.len;
            w.put(&[0, 0])?;
            match name_layout(rtype) {
                Some((head, names, _)) if rdata.len() >= head => {
                    w.put(&rdata[..head])?;
                    let mut pos = head;
                    for _ in 0..names {
                        let Ok((n, next)) = Name::parse(rdata, pos) else {
                            break;
                        };
                        w.name(&n)?;
                        pos = next;
                    }
                    w.put(&rdata[pos..])?;
                }
                _ => w.put(rdata)?,
            }
            let rdlen = (w.len - len_at - 2) as u16;
            w.buf[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
            Ok(())
        })
    }

    /// Writes an OPT record (RFC 6891 §6.1.2) advertising `udp_size`, with
    /// the upper bits of the extended rcode, version 0, no flags, no options.
    pub fn opt(&mut self, udp_size: u16, ext_rcode: u8) -> Result<(), Full> {
        self.atomic(|w| {
            w.put(&[0])?;
            w.put(&crate::rtype::OPT.to_be_bytes())?;
            w.put(&udp_size.to_be_bytes())?;
            w.put(&[ext_rcode, 0, 0, 0])?;
            w.put(&[0, 0])
        })
    }
}

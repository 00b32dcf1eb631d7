//! Domain names: [`Name`] (wire form, case preserved, compared without case)
//! and [`Key`] (labels reversed and lower-cased: the zone's sort key).
//!
//! Reading a name from a message follows compression pointers (RFC 1035
//! §4.1.4) with one rule that makes every loop impossible: a pointer must
//! point strictly below the lowest offset read so far for this name (the
//! name's start, then each earlier pointer's target). Offsets strictly
//! decrease at every jump, so a name costs at most one pass over the
//! datagram. Legitimate compression always satisfies the rule: a pointer
//! refers to a name written earlier, whose own pointers refer to names
//! written earlier still.

use core::fmt;

use crate::error::{DnsDecodeError, NameTextError};

/// Longest name in wire form (RFC 1035 §2.3.4), the root byte included.
pub const MAX_NAME: usize = 255;
/// Longest label.
pub const MAX_LABEL: usize = 63;
/// Most labels a name can have (`a.a.a...`: 2 bytes each, plus the root).
const MAX_LABELS: usize = 127;

/// A domain name in uncompressed wire form (length-prefixed labels ending
/// with the root's zero byte). Case is kept as received; `==` ignores ASCII
/// case, as DNS names compare.
#[derive(Clone, Copy)]
pub struct Name {
    len: u8,
    wire: [u8; MAX_NAME],
}

impl Name {
    /// The root name `.`.
    pub const ROOT: Name = Name {
        len: 1,
        wire: [0; MAX_NAME],
    };

    /// The name at `at` in `msg`, following compression pointers, and the
    /// offset just after the name's bytes in place (after its first pointer,
    /// or after its root byte).
    pub fn parse(msg: &[u8], at: usize) -> Result<(Name, usize), DnsDecodeError> {
        let mut name = Name::ROOT;
        let mut len = 0usize;
        let mut pos = at;
        let mut limit = at;
        let mut end = None;
        loop {
            let b = *msg.get(pos).ok_or(DnsDecodeError::Truncated {
                field: "name",
                need: pos + 1,
                have: msg.len(),
            })?;
            match b >> 6 {
                0 => {
                    let l = usize::from(b);
                    if l == 0 {
                        name.wire[len] = 0;
                        name.len = (len + 1) as u8;
                        return Ok((name, end.unwrap_or(pos + 1)));
                    }
                    if pos + 1 + l > msg.len() {
                        return Err(DnsDecodeError::Truncated {
                            field: "label",
                            need: pos + 1 + l,
                            have: msg.len(),
                        });
                    }
                    // The label plus the root byte that must still follow.
                    if len + 1 + l + 1 > MAX_NAME {
                        return Err(DnsDecodeError::NameTooLong {
                            at,
                            len: len + 1 + l + 1,
                        });
                    }
                    name.wire[len..len + 1 + l].copy_from_slice(&msg[pos..pos + 1 + l]);
                    len += 1 + l;
                    pos += 1 + l;
                }
                3 => {
                    let lo = *msg.get(pos + 1).ok_or(DnsDecodeError::Truncated {
                        field: "compression pointer",
                        need: pos + 2,
                        have: msg.len(),
                    })?;
                    let target = (usize::from(b & 0x3f) << 8) | usize::from(lo);
                    if target >= limit {
                        return Err(DnsDecodeError::BadPointer {
                            at: pos,
                            target,
                            limit,
                        });
                    }
                    end.get_or_insert(pos + 2);
                    limit = target;
                    pos = target;
                }
                _ => return Err(DnsDecodeError::BadLabelType { at: pos, byte: b }),
            }
        }
    }

    /// A name from uncompressed wire bytes (exactly one name, nothing after).
    pub fn from_wire(bytes: &[u8]) -> Option<Name> {
        match Name::parse(bytes, 0) {
            Ok((n, end)) if end == bytes.len() && usize::from(n.len) == bytes.len() => Some(n),
            _ => None,
        }
    }

    /// A name from text: `www.example.test.` (absolute), `www` (relative to
    /// `origin`), `@` (the origin), `.` (the root). `\.`, `\\` and `\DDD`
    /// escapes are understood.
    pub fn from_text(s: &str, origin: Option<&Name>) -> Result<Name, NameTextError> {
        if s == "@" {
            return origin.copied().ok_or(NameTextError::Relative);
        }
        if s == "." {
            return Ok(Name::ROOT);
        }
        let b = s.as_bytes();
        let mut name = Name::ROOT;
        let mut len = 0usize;
        let mut label = [0u8; MAX_LABEL + 1];
        let mut llen = 0usize;
        let mut i = 0usize;
        let mut absolute = false;
        let flush = |label: &[u8], name: &mut Name, len: &mut usize| {
            if label.is_empty() {
                return Err(NameTextError::EmptyLabel);
            }
            if *len + 1 + label.len() + 1 > MAX_NAME {
                return Err(NameTextError::NameTooLong {
                    len: *len + 1 + label.len() + 1,
                });
            }
            name.wire[*len] = label.len() as u8;
            name.wire[*len + 1..*len + 1 + label.len()].copy_from_slice(label);
            *len += 1 + label.len();
            Ok(())
        };
        while i < b.len() {
            let c = b[i];
            let byte = match c {
                b'.' => {
                    flush(&label[..llen], &mut name, &mut len)?;
                    llen = 0;
                    i += 1;
                    if i == b.len() {
                        absolute = true;
                    }
                    continue;
                }
                b'\\' => {
                    let d = b.get(i + 1..i + 4).unwrap_or(&[]);
                    if d.len() == 3 && d.iter().all(u8::is_ascii_digit) {
                        let v = d.iter().fold(0u32, |v, &x| v * 10 + u32::from(x - b'0'));
                        i += 4;
                        u8::try_from(v).map_err(|_| NameTextError::BadEscape)?
                    } else {
                        let e = *b.get(i + 1).ok_or(NameTextError::BadEscape)?;
                        if e.is_ascii_digit() {
                            return Err(NameTextError::BadEscape);
                        }
                        i += 2;
                        e
                    }
                }
                _ => {
                    i += 1;
                    c
                }
            };
            if llen == MAX_LABEL {
                return Err(NameTextError::LabelTooLong { len: llen + 1 });
            }
            label[llen] = byte;
            llen += 1;
        }
        if !absolute {
            flush(&label[..llen], &mut name, &mut len)?;
            let origin = origin.ok_or(NameTextError::Relative)?;
            let o = origin.as_wire();
            if len + o.len() > MAX_NAME {
                return Err(NameTextError::NameTooLong { len: len + o.len() });
            }
            name.wire[len..len + o.len()].copy_from_slice(o);
            name.len = (len + o.len()) as u8;
            return Ok(name);
        }
        name.wire[len] = 0;
        name.len = (len + 1) as u8;
        Ok(name)
    }

    /// The wire bytes (uncompressed, ending with the root byte).
    pub fn as_wire(&self) -> &[u8] {
        &self.wire[..usize::from(self.len)]
    }

    /// The labels from the leftmost, without the root.
    pub fn labels(&self) -> Labels<'_> {
        Labels {
            wire: self.as_wire(),
            pos: 0,
        }
    }

    /// Number of labels, the root not counted.
    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// True for the root name.
    pub fn is_root(&self) -> bool {
        self.len == 1
    }

    /// True if `self` is `zone` or a name below it.
    pub fn is_in(&self, zone: &Name) -> bool {
        self.key().is_in(&zone.key())
    }

    /// `label.self`.
    pub fn prepend(&self, label: &[u8]) -> Result<Name, NameTextError> {
        if label.is_empty() {
            return Err(NameTextError::EmptyLabel);
        }
        if label.len() > MAX_LABEL {
            return Err(NameTextError::LabelTooLong { len: label.len() });
        }
        let len = 1 + label.len() + usize::from(self.len);
        if len > MAX_NAME {
            return Err(NameTextError::NameTooLong { len });
        }
        let mut n = Name::ROOT;
        n.wire[0] = label.len() as u8;
        n.wire[1..1 + label.len()].copy_from_slice(label);
        n.wire[1 + label.len()..len].copy_from_slice(self.as_wire());
        n.len = len as u8;
        Ok(n)
    }

    /// The name with ASCII letters lower-cased.
    pub fn lowercased(&self) -> Name {
        let mut n = *self;
        // Length bytes are at most 63, below b'A': lowering them is a no-op.
        n.wire[..usize::from(n.len)].make_ascii_lowercase();
        n
    }

    /// The sort key of the name (see [`Key`]).
    pub fn key(&self) -> Key {
        let mut starts = [0u8; MAX_LABELS];
        let mut n = 0;
        let w = self.as_wire();
        let mut pos = 0usize;
        while w[pos] != 0 {
            starts[n] = pos as u8;
            n += 1;
            pos += 1 + usize::from(w[pos]);
        }
        let mut key = Key::ROOT;
        let mut len = 0usize;
        for &s in starts[..n].iter().rev() {
            let s = usize::from(s);
            let l = 1 + usize::from(w[s]);
            key.bytes[len..len + l].copy_from_slice(&w[s..s + l]);
            len += l;
        }
        key.bytes[..len].make_ascii_lowercase();
        key.len = len as u8;
        key
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_wire().eq_ignore_ascii_case(other.as_wire())
    }
}

impl Eq for Name {}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str(".");
        }
        for label in self.labels() {
            for &c in label {
                match c {
                    b'.' | b'\\' => write!(f, "\\{}", c as char)?,
                    0x21..=0x7e => write!(f, "{}", c as char)?,
                    _ => write!(f, "\\{c:03}")?,
                }
            }
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// Iterator over a name's labels (see [`Name::labels`]).
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    wire: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let l = usize::from(*self.wire.get(self.pos)?);
        if l == 0 {
            return None;
        }
        let label = &self.wire[self.pos + 1..self.pos + 1 + l];
        self.pos += 1 + l;
        Some(label)
    }
}

/// A name's sort key: its labels from the root side, each with its length
/// byte, ASCII lower-cased, without the root byte. `www.example.test` is
/// `\x04test\x07example\x03www`.
///
/// Byte order of keys puts every name right before the names below it, and
/// those contiguously: the keys of the names below `n` are exactly the keys
/// that start with `n`'s key. A zone sorted by key finds a node and its
/// descendants with one binary search.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    len: u8,
    bytes: [u8; MAX_NAME - 1],
}

impl Key {
    /// The key of the root name (empty).
    pub const ROOT: Key = Key {
        len: 0,
        bytes: [0; MAX_NAME - 1],
    };

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// A key from its bytes as stored in a zone slot (which only ever holds
    /// keys made by [`Name::key`]).
    pub(crate) fn from_stored(bytes: &[u8]) -> Key {
        let mut k = Key::ROOT;
        let n = bytes.len().min(MAX_NAME - 1);
        k.bytes[..n].copy_from_slice(&bytes[..n]);
        k.len = n as u8;
        k
    }

    /// True if the key's name is `zone` or below it.
    pub fn is_in(&self, zone: &Key) -> bool {
        self.as_bytes().starts_with(zone.as_bytes())
    }

    /// The name of the key (lower case).
    pub fn to_name(&self) -> Name {
        let b = self.as_bytes();
        let mut starts = [0u8; MAX_LABELS];
        let mut n = 0;
        let mut pos = 0usize;
        while pos < b.len() && n < MAX_LABELS {
            starts[n] = pos as u8;
            n += 1;
            pos += 1 + usize::from(b[pos]);
        }
        let mut name = Name::ROOT;
        let mut len = 0usize;
        for &s in starts[..n].iter().rev() {
            let s = usize::from(s);
            let l = (1 + usize::from(b[s])).min(b.len() - s);
            name.wire[len..len + l].copy_from_slice(&b[s..s + l]);
            len += l;
        }
        name.wire[len] = 0;
        name.len = (len + 1) as u8;
        name
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_name())
    }
}

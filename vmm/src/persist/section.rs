//! The encoding of saved state: a [`Section`] per component (id, version,
//! named fields), and the [`StateTree`] of sections keyed by component id
//! (Cloud Hypervisor's `Snapshot`). Normative: `docs/protocol.md`,
//! "State transfer".
//!
//! ```text
//! section: u16 id_len | id (UTF-8) | u32 version | u32 fields
//!          fields x ( u16 name_len | name | u32 value_len | value )
//! tree:    u32 sections | sections x ( u32 section_len | section )
//! ```
//!
//! All integers little-endian. Fields are looked up by name, so a missing
//! or malformed field is reported by name ([`FieldError`]).

use std::collections::BTreeMap;

/// A field is missing or its value is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("field {field}: {detail}")]
pub struct FieldError {
    /// The field's name.
    pub field: String,
    /// What was wrong, with the values.
    pub detail: String,
}

impl FieldError {
    /// A field error with `detail`.
    pub fn new(field: &str, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            detail: detail.into(),
        }
    }
}

/// Bytes are not a well-formed section or tree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeSectionError {
    /// The bytes end inside `what`.
    #[error("{what} is cut off at byte {at} of {len}")]
    Truncated {
        /// The part being read.
        what: String,
        /// Offset where it was needed.
        at: usize,
        /// Bytes available.
        len: usize,
    },
    /// A name is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// The part being read.
        what: String,
    },
    /// Bytes follow the last section or field.
    #[error("{extra} bytes after {what}")]
    Trailing {
        /// The part read last.
        what: String,
        /// Bytes left over.
        extra: usize,
    },
    /// The same component id appears twice.
    #[error("component {id} appears twice")]
    Duplicate {
        /// The id.
        id: String,
    },
}

/// The saved state of one component: id, layout version, named fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    /// Component id (`vcpu`, `timer`, `journal`, `net`, `block`, `clock`).
    pub id: String,
    /// Layout version of this component's fields.
    pub version: u32,
    fields: Vec<(String, Vec<u8>)>,
}

impl Section {
    /// An empty section.
    pub fn new(id: &str, version: u32) -> Section {
        Section {
            id: id.to_string(),
            version,
            fields: Vec::new(),
        }
    }

    /// Adds a field with raw bytes.
    pub fn put_bytes(&mut self, name: &str, value: &[u8]) {
        self.fields.push((name.to_string(), value.to_vec()));
    }

    /// Adds a `u64` field.
    pub fn put_u64(&mut self, name: &str, v: u64) {
        self.put_bytes(name, &v.to_le_bytes());
    }

    /// Adds a `u32` field.
    pub fn put_u32(&mut self, name: &str, v: u32) {
        self.put_bytes(name, &v.to_le_bytes());
    }

    /// Adds a `bool` field (one byte, 0 or 1).
    pub fn put_bool(&mut self, name: &str, v: bool) {
        self.put_bytes(name, &[u8::from(v)]);
    }

    /// The field names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(n, _)| n.as_str())
    }

    /// A field's bytes.
    pub fn bytes(&self, name: &str) -> Result<&[u8], FieldError> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| FieldError::new(name, "missing"))
    }

    fn fixed<const N: usize>(&self, name: &str) -> Result<[u8; N], FieldError> {
        let b = self.bytes(name)?;
        b.try_into()
            .map_err(|_| FieldError::new(name, format!("{} bytes, expected {N}", b.len())))
    }

    /// A `u64` field.
    pub fn u64(&self, name: &str) -> Result<u64, FieldError> {
        self.fixed::<8>(name).map(u64::from_le_bytes)
    }

    /// A `u32` field.
    pub fn u32(&self, name: &str) -> Result<u32, FieldError> {
        self.fixed::<4>(name).map(u32::from_le_bytes)
    }

    /// A `bool` field.
    pub fn bool(&self, name: &str) -> Result<bool, FieldError> {
        match self.fixed::<1>(name)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [v] => Err(FieldError::new(name, format!("value {v}, expected 0 or 1"))),
        }
    }

    /// Encoded form (module doc).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, &self.id);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for (name, value) in &self.fields {
            put_str(out, name);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
    }

    /// Decodes one section that fills `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Section, DecodeSectionError> {
        let mut r = Cursor { b: bytes, at: 0 };
        let id = r.string("section id")?;
        let what = format!("section {id}");
        let version = r.u32(&what)?;
        let count = r.u32(&what)?;
        let mut fields = Vec::new();
        for i in 0..count {
            let name = r.string(&format!("{what} field {i} name"))?;
            let len = r.u32(&format!("{what} field {name}"))? as usize;
            let value = r.take(len, &format!("{what} field {name}"))?.to_vec();
            fields.push((name, value));
        }
        r.finish(&what)?;
        Ok(Section {
            id,
            version,
            fields,
        })
    }
}

/// Sections keyed by component id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateTree {
    /// The sections.
    pub sections: BTreeMap<String, Section>,
}

impl StateTree {
    /// Adds (or replaces) a section under its id.
    pub fn insert(&mut self, s: Section) {
        self.sections.insert(s.id.clone(), s);
    }

    /// The section of component `id`.
    pub fn get(&self, id: &str) -> Option<&Section> {
        self.sections.get(id)
    }

    /// Encoded form (module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.sections.len() as u32).to_le_bytes());
        let mut buf = Vec::new();
        for s in self.sections.values() {
            buf.clear();
            s.encode(&mut buf);
            out.extend_from_slice(&(buf.len() as u32).to_le_bytes());
            out.extend_from_slice(&buf);
        }
        out
    }

    /// Decodes a tree that fills `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<StateTree, DecodeSectionError> {
        let mut r = Cursor { b: bytes, at: 0 };
        let count = r.u32("state tree")?;
        let mut tree = StateTree::default();
        for i in 0..count {
            let len = r.u32(&format!("state tree section {i}"))? as usize;
            let s = Section::decode(r.take(len, &format!("state tree section {i}"))?)?;
            if tree.sections.contains_key(&s.id) {
                return Err(DecodeSectionError::Duplicate { id: s.id });
            }
            tree.insert(s);
        }
        r.finish("state tree")?;
        Ok(tree)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// A bounds-checked reader over encoded bytes.
pub(crate) struct Cursor<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeSectionError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| DecodeSectionError::Truncated {
                what: what.to_string(),
                at: self.at,
                len: self.b.len(),
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, DecodeSectionError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, DecodeSectionError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, DecodeSectionError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, DecodeSectionError> {
        let n = usize::from(self.u16(what)?);
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeSectionError::NotUtf8 {
            what: what.to_string(),
        })
    }

    pub(crate) fn finish(&self, what: &str) -> Result<(), DecodeSectionError> {
        match self.b.len() - self.at {
            0 => Ok(()),
            extra => Err(DecodeSectionError::Trailing {
                what: what.to_string(),
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Section {
        let mut s = Section::new("net", 1);
        s.put_u32("rx_prod", 17);
        s.put_u64("bytes", u64::MAX);
        s.put_bool("attached", true);
        s.put_bytes("blob", b"abc");
        s
    }

    #[test]
    fn sections_and_trees_round_trip() {
        let mut t = StateTree::default();
        t.insert(sample());
        t.insert(Section::new("clock", 2));
        let bytes = t.encode();
        let back = StateTree::decode(&bytes).unwrap();
        assert_eq!(back, t);
        let s = back.get("net").unwrap();
        assert_eq!(s.u32("rx_prod").unwrap(), 17);
        assert_eq!(s.u64("bytes").unwrap(), u64::MAX);
        assert!(s.bool("attached").unwrap());
        assert_eq!(s.bytes("blob").unwrap(), b"abc");
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["rx_prod", "bytes", "attached", "blob"]
        );
    }

    #[test]
    fn fields_are_checked_by_name() {
        let s = sample();
        assert_eq!(
            s.u64("rx_prod").unwrap_err().to_string(),
            "field rx_prod: 4 bytes, expected 8"
        );
        assert_eq!(
            s.u32("tx_prod").unwrap_err().to_string(),
            "field tx_prod: missing"
        );
        let mut b = Section::new("x", 1);
        b.put_bytes("flag", &[7]);
        assert_eq!(
            b.bool("flag").unwrap_err().to_string(),
            "field flag: value 7, expected 0 or 1"
        );
    }

    #[test]
    fn every_cut_and_trailing_byte_is_an_error() {
        let mut t = StateTree::default();
        t.insert(sample());
        let bytes = t.encode();
        for cut in 0..bytes.len() {
            let e = StateTree::decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, DecodeSectionError::Truncated { .. }),
                "{cut}: {e}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            StateTree::decode(&long).unwrap_err().to_string(),
            "1 bytes after state tree"
        );
    }
}

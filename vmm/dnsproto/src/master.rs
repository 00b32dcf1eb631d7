//! Loading a zone from master-file text (RFC 1035 §5, the common subset).
//!
//! One record per logical line: `owner [ttl] [IN] type rdata...`, TTL and
//! class in either order. A line starting with a blank reuses the previous
//! owner; `@` is the origin; names without a final dot are relative to the
//! origin. `( )` continue a record over lines, `;` starts a comment, `"..."`
//! quotes a string (TXT). Directives: `$ORIGIN name`, `$TTL seconds`. Types:
//! A, AAAA, NS, CNAME, PTR, MX, TXT, SOA, SRV in their text form, and any
//! type as `TYPEnnn \# len hex...` (RFC 3597). The first record must be the
//! SOA: its owner is the zone's apex, and every other record must be inside
//! it. Errors name the line.

use core::net::{Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

use crate::error::ZoneLoadError;
use crate::name::Name;
use crate::rdata::MAX_RDATA;
use crate::rtype;
use crate::zone::{RecordSlot, Zone};

/// The zone the dns guest serves unless told otherwise (`docs/dns.md`).
pub const BUILTIN_ZONE: &str = r#"; The built-in zone of the ftvm dns guest.
$ORIGIN example.test.
$TTL 300
@        IN SOA ns1 hostmaster (
                1       ; serial, bumped by every update that changes the zone
                3600    ; refresh
                600     ; retry
                86400   ; expire
                60 )    ; minimum: the TTL of negative answers
         IN NS    ns1
         IN NS    ns2
         IN A     192.0.2.1
         IN MX    10 mail
         IN TXT   "v=ftvm1" "an authoritative zone served by an ftvm guest"
ns1      IN A     127.0.0.1
ns2      IN A     127.0.0.2
www      IN A     192.0.2.10
         IN AAAA  2001:db8::10
mail     IN A     192.0.2.25
ftp      IN CNAME www
alias    IN CNAME ftp
a.b.deep IN TXT   "below two empty non-terminals"
"#;

/// Fields of one logical line at most.
const MAX_TOKENS: usize = 64;
/// Default TTL without `$TTL`.
const DEFAULT_TTL: u32 = 3600;

#[derive(Clone, Copy, Debug, Default)]
struct Token<'t> {
    text: &'t str,
    quoted: bool,
}

/// One logical line: its first line number, whether it starts with a blank
/// (the previous owner), and its fields.
struct Line<'t> {
    line: usize,
    blank_owner: bool,
    tokens: [Token<'t>; MAX_TOKENS],
    n: usize,
}

struct Lexer<'t> {
    text: &'t str,
    pos: usize,
    line: usize,
}

impl<'t> Lexer<'t> {
    fn syntax(&self, why: &'static str) -> ZoneLoadError {
        ZoneLoadError::Syntax {
            line: self.line,
            why,
        }
    }

    /// The next logical line with at least one field.
    fn next_line(&mut self) -> Option<Result<Line<'t>, ZoneLoadError>> {
        let b = self.text.as_bytes();
        let mut line = Line {
            line: self.line,
            blank_owner: false,
            tokens: [Token::default(); MAX_TOKENS],
            n: 0,
        };
        let mut depth = 0u32;
        let mut line_start = self.pos;
        loop {
            let Some(&c) = b.get(self.pos) else {
                if depth > 0 {
                    return Some(Err(self.syntax("unbalanced '('")));
                }
                return (line.n > 0).then_some(Ok(line));
            };
            match c {
                b'\n' => {
                    self.pos += 1;
                    self.line += 1;
                    line_start = self.pos;
                    if depth == 0 && line.n > 0 {
                        return Some(Ok(line));
                    }
                }
                b' ' | b'\t' | b'\r' => self.pos += 1,
                b';' => {
                    while b.get(self.pos).is_some_and(|&c| c != b'\n') {
                        self.pos += 1;
                    }
                }
                b'(' => {
                    depth += 1;
                    self.pos += 1;
                }
                b')' => {
                    if depth == 0 {
                        return Some(Err(self.syntax("unbalanced ')'")));
                    }
                    depth -= 1;
                    self.pos += 1;
                }
                _ => {
                    let (start, quoted) = if c == b'"' {
                        (self.pos + 1, true)
                    } else {
                        (self.pos, false)
                    };
                    let mut end = start;
                    loop {
                        match b.get(end) {
                            None if quoted => {
                                return Some(Err(self.syntax("unterminated quoted string")));
                            }
                            None => break,
                            Some(b'\\') => end += 2,
                            Some(b'"') if quoted => break,
                            Some(b'\n') if quoted => {
                                return Some(Err(self.syntax("unterminated quoted string")));
                            }
                            Some(b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b';' | b'"')
                                if !quoted =>
                            {
                                break;
                            }
                            Some(_) => end += 1,
                        }
                    }
                    let end = end.min(b.len());
                    if line.n == 0 {
                        line.line = self.line;
                        line.blank_owner = matches!(b.get(line_start), Some(b' ' | b'\t'));
                    }
                    if line.n == MAX_TOKENS {
                        return Some(Err(self.syntax("more than 64 fields in one record")));
                    }
                    let Some(text) = self.text.get(start..end) else {
                        return Some(Err(self.syntax("a field splits a UTF-8 character")));
                    };
                    line.tokens[line.n] = Token { text, quoted };
                    line.n += 1;
                    self.pos = if quoted { end + 1 } else { end };
                }
            }
        }
    }
}

/// Record data built from text.
struct Rdata {
    buf: [u8; MAX_RDATA],
    len: usize,
}

impl Rdata {
    fn put(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        if self.len + bytes.len() > MAX_RDATA {
            return Err("longer than 512 bytes");
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

fn number<T: FromStr>(t: &Token<'_>) -> Result<T, &'static str> {
    t.text.parse().map_err(|_| "a number is out of range")
}

/// Unescapes a character string (`\X`, `\DDD`) into `out`; returns its length.
fn string(t: &Token<'_>, out: &mut [u8; 256]) -> Result<usize, &'static str> {
    let b = t.text.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        let c = if b[i] == b'\\' {
            let d = b.get(i + 1..i + 4).unwrap_or(&[]);
            if d.len() == 3 && d.iter().all(u8::is_ascii_digit) {
                i += 4;
                let v = d.iter().fold(0u32, |v, &x| v * 10 + u32::from(x - b'0'));
                u8::try_from(v).map_err(|_| "a \\DDD escape above 255")?
            } else {
                i += 2;
                *b.get(i - 1).ok_or("a string ends with '\\'")?
            }
        } else {
            i += 1;
            b[i - 1]
        };
        if n == 255 {
            return Err("a string longer than 255 bytes");
        }
        out[1 + n] = c;
        n += 1;
    }
    out[0] = n as u8;
    Ok(1 + n)
}

fn hex(s: &str, out: &mut Rdata) -> Result<(), &'static str> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return Err("odd number of hex digits");
    }
    for pair in b.chunks(2) {
        let v = core::str::from_utf8(pair)
            .ok()
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or("not a hex digit")?;
        out.put(&[v])?;
    }
    Ok(())
}

/// The data of a `t` record from its fields.
fn rdata(
    t: u16,
    f: &[Token<'_>],
    origin: Option<&Name>,
    line: usize,
) -> Result<Rdata, ZoneLoadError> {
    let mut r = Rdata {
        buf: [0; MAX_RDATA],
        len: 0,
    };
    let err = |why| ZoneLoadError::Rdata {
        line,
        rtype: t,
        why,
    };
    let name = |tok: &Token<'_>, r: &mut Rdata| -> Result<(), ZoneLoadError> {
        let n =
            Name::from_text(tok.text, origin).map_err(|err| ZoneLoadError::Name { line, err })?;
        r.put(n.lowercased().as_wire()).map_err(err)
    };
    if f.first().is_some_and(|t| t.text == "\\#" && !t.quoted) {
        let len: usize = f
            .get(1)
            .ok_or(err("\\# needs a length"))
            .and_then(|l| number(l).map_err(err))?;
        for h in &f[2..] {
            hex(h.text, &mut r).map_err(err)?;
        }
        if r.len != len {
            return Err(err("the \\# length does not match the hex data"));
        }
        return Ok(r);
    }
    let want = |n: usize| {
        if f.len() == n {
            Ok(())
        } else {
            Err(err("wrong number of fields for the type"))
        }
    };
    match t {
        rtype::A => {
            want(1)?;
            let a = Ipv4Addr::from_str(f[0].text).map_err(|_| err("not an IPv4 address"))?;
            r.put(&a.octets()).map_err(err)?;
        }
        rtype::AAAA => {
            want(1)?;
            let a = Ipv6Addr::from_str(f[0].text).map_err(|_| err("not an IPv6 address"))?;
            r.put(&a.octets()).map_err(err)?;
        }
        rtype::NS | rtype::CNAME | rtype::PTR => {
            want(1)?;
            name(&f[0], &mut r)?;
        }
        rtype::MX => {
            want(2)?;
            r.put(&number::<u16>(&f[0]).map_err(err)?.to_be_bytes())
                .map_err(err)?;
            name(&f[1], &mut r)?;
        }
        rtype::TXT => {
            if f.is_empty() {
                return Err(err("a TXT record needs at least one string"));
            }
            let mut s = [0u8; 256];
            for tok in f {
                let n = string(tok, &mut s).map_err(err)?;
                r.put(&s[..n]).map_err(err)?;
            }
        }
        rtype::SOA => {
            want(7)?;
            name(&f[0], &mut r)?;
            name(&f[1], &mut r)?;
            for tok in &f[2..] {
                r.put(&number::<u32>(tok).map_err(err)?.to_be_bytes())
                    .map_err(err)?;
            }
        }
        rtype::SRV => {
            want(4)?;
            for tok in &f[..3] {
                r.put(&number::<u16>(tok).map_err(err)?.to_be_bytes())
                    .map_err(err)?;
            }
            name(&f[3], &mut r)?;
        }
        _ => return Err(err("only the \\# form is known for this type")),
    }
    Ok(r)
}

/// Replaces the contents of `zone` with the records of `text` (see the
/// module doc); returns the number of records.
pub fn load<R, I>(zone: &mut Zone<R, I>, text: &str) -> Result<usize, ZoneLoadError>
where
    R: AsRef<[RecordSlot]> + AsMut<[RecordSlot]>,
    I: AsRef<[u32]> + AsMut<[u32]>,
{
    let mut lx = Lexer {
        text,
        pos: 0,
        line: 1,
    };
    let mut origin: Option<Name> = None;
    let mut default_ttl = DEFAULT_TTL;
    let mut owner: Option<Name> = None;
    let mut apex: Option<Name> = None;
    let mut records = 0usize;
    while let Some(l) = lx.next_line() {
        let l = l?;
        let t = &l.tokens[..l.n];
        let line = l.line;
        let syntax = |why| ZoneLoadError::Syntax { line, why };
        let bad_name = |err| ZoneLoadError::Name { line, err };
        if !l.blank_owner && t[0].text.starts_with('$') {
            let arg = t.get(1).filter(|_| t.len() == 2);
            if t[0].text.eq_ignore_ascii_case("$ORIGIN") {
                let a = arg.ok_or(syntax("$ORIGIN takes one name"))?;
                origin = Some(Name::from_text(a.text, origin.as_ref()).map_err(bad_name)?);
            } else if t[0].text.eq_ignore_ascii_case("$TTL") {
                let a = arg.ok_or(syntax("$TTL takes one number"))?;
                default_ttl = number(a).map_err(syntax)?;
            } else {
                return Err(syntax("unknown directive (only $ORIGIN and $TTL)"));
            }
            continue;
        }
        let mut i = 0;
        let this_owner = if l.blank_owner {
            owner.ok_or(syntax("a record without an owner"))?
        } else {
            i = 1;
            Name::from_text(t[0].text, origin.as_ref()).map_err(bad_name)?
        };
        let mut ttl = default_ttl;
        for _ in 0..2 {
            let Some(f) = t.get(i) else { break };
            let is_class = |c: &&str| f.text.eq_ignore_ascii_case(c);
            if !f.text.is_empty() && f.text.bytes().all(|c| c.is_ascii_digit()) {
                ttl = number(f).map_err(syntax)?;
            } else if ["CH", "HS", "CS"].iter().any(is_class) {
                return Err(ZoneLoadError::Class { line });
            } else if !f.text.eq_ignore_ascii_case("IN") {
                break;
            }
            i += 1;
        }
        let tt = t.get(i).ok_or(syntax("a record without a type"))?;
        let rt = rtype::from_name(tt.text).ok_or(ZoneLoadError::UnknownType { line })?;
        if rtype::is_meta(rt) {
            return Err(ZoneLoadError::UnknownType { line });
        }
        let data = rdata(rt, &t[i + 1..], origin.as_ref(), line)?;
        match &apex {
            None if rt == rtype::SOA => {
                zone.reset(&this_owner);
                apex = Some(this_owner);
            }
            None => return Err(ZoneLoadError::OutOfZone { line }),
            Some(a) if !this_owner.is_in(a) => return Err(ZoneLoadError::OutOfZone { line }),
            Some(_) => {}
        }
        zone.insert(&this_owner.key(), rt, ttl, &data.buf[..data.len])
            .map_err(|f| ZoneLoadError::Full {
                line,
                capacity: f.capacity,
            })?;
        records += 1;
        owner = Some(this_owner);
    }
    if apex.is_none() {
        return Err(ZoneLoadError::OutOfZone { line: lx.line });
    }
    Ok(records)
}

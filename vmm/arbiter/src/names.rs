//! What the arbiter accepts as a VM name, generation, candidate and spare
//! address, checked before any I/O so that both backends refuse the same
//! inputs with the same message; and the one encoding of a spare address
//! into a file or key name.

use crate::ArbiterError;

/// Longest VM name.
pub const MAX_VM_NAME: usize = 64;
/// Longest candidate string, in bytes.
pub const MAX_CANDIDATE: usize = 256;
/// Longest spare address, in bytes (encoded, it must fit a 255-byte file name).
pub const MAX_SPARE_ADDR: usize = 80;

const VM_ALLOWED: &str = "1..=64 characters of [A-Za-z0-9._-], not starting with '.'";
const GENERATION_ALLOWED: &str = "a generation >= 1";
const CANDIDATE_ALLOWED: &str = "1..=256 bytes without a newline";
const SPARE_ALLOWED: &str = "1..=80 bytes of printable ASCII without spaces";

/// `value` quoted for a message; long values are cut and say their length.
pub(crate) fn excerpt(value: &str) -> String {
    const KEEP: usize = 100;
    if value.len() <= KEEP {
        return format!("{value:?}");
    }
    let mut end = KEEP;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &value[..end], value.len())
}

fn bad(what: &'static str, value: &str, allowed: &'static str) -> ArbiterError {
    ArbiterError::BadName {
        what,
        value: excerpt(value),
        allowed,
    }
}

/// Whether `c` may stand in a VM name: `[A-Za-z0-9._-]`.
pub fn is_vm_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A VM name: 1..=64 of `[A-Za-z0-9._-]`, not starting with `.` (so it is a
/// safe single path component and never `.` or `..`).
pub fn check_vm(vm: &str) -> Result<(), ArbiterError> {
    let ok = !vm.is_empty()
        && vm.len() <= MAX_VM_NAME
        && !vm.starts_with('.')
        && vm.chars().all(is_vm_name_char);
    if ok {
        Ok(())
    } else {
        Err(bad("VM name", vm, VM_ALLOWED))
    }
}

/// A generation: >= 1 (0 means "never protected").
pub fn check_generation(generation: u64) -> Result<(), ArbiterError> {
    if generation >= 1 {
        Ok(())
    } else {
        Err(bad(
            "generation",
            &generation.to_string(),
            GENERATION_ALLOWED,
        ))
    }
}

/// A candidate: 1..=256 bytes, no newline (the file backend stores it as one line).
pub fn check_candidate(candidate: &str) -> Result<(), ArbiterError> {
    if !candidate.is_empty() && candidate.len() <= MAX_CANDIDATE && !candidate.contains('\n') {
        Ok(())
    } else {
        Err(bad("candidate", candidate, CANDIDATE_ALLOWED))
    }
}

/// A spare address: 1..=80 bytes of printable ASCII, no spaces
/// (`host:port`, `[v6]:port`, ...).
pub fn check_spare(addr: &str) -> Result<(), ArbiterError> {
    if !addr.is_empty()
        && addr.len() <= MAX_SPARE_ADDR
        && addr.bytes().all(|b| b.is_ascii_graphic())
    {
        Ok(())
    } else {
        Err(bad("spare address", addr, SPARE_ALLOWED))
    }
}

/// The spare address as a file or key name: `[A-Za-z0-9.-]` kept, every
/// other byte (including `_`) written `_XX` in upper-case hex. One-to-one, so
/// two addresses never share a name; at most 240 bytes for an 80-byte address.
pub fn encode_spare(addr: &str) -> String {
    let mut out = String::with_capacity(addr.len());
    for b in addr.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names() {
        for good in ["a", "vm-1", "A.b_c-9", &"x".repeat(64)] {
            assert!(check_vm(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            let e = check_vm(bad).unwrap_err().to_string();
            assert!(e.contains(&excerpt(bad)), "{e}");
            assert!(e.contains("[A-Za-z0-9._-]"), "{e}");
        }
    }

    #[test]
    fn generations_candidates_spares() {
        assert_eq!(
            check_generation(0).unwrap_err().to_string(),
            "bad generation \"0\": allowed a generation >= 1"
        );
        assert!(check_generation(1).is_ok() && check_generation(u64::MAX).is_ok());
        assert!(check_candidate("host-a:7100 pid 12").is_ok());
        assert!(check_candidate(&"c".repeat(256)).is_ok());
        assert!(check_candidate("").is_err() && check_candidate("a\nb").is_err());
        let e = check_candidate(&"c".repeat(300)).unwrap_err().to_string();
        assert!(e.contains("(300 bytes)"), "{e}");
        assert!(check_spare("[fe80::1%eth0]:7100").is_ok());
        assert!(check_spare("a b").is_err() && check_spare("").is_err());
        assert!(check_spare(&"a".repeat(81)).is_err());
    }

    #[test]
    fn spare_encoding_is_one_to_one_and_short() {
        assert_eq!(encode_spare("host-b.x:7100"), "host-b.x_3A7100");
        assert_ne!(encode_spare("a:b"), encode_spare("a_b"));
        assert_eq!(encode_spare("a_b"), "a_5Fb");
        assert!(encode_spare(&"~".repeat(MAX_SPARE_ADDR)).len() + "spare-".len() <= 255);
    }
}

//! Finding a key from what the user typed: full (`channel.batch_bytes`) or
//! bare (`batch_bytes`) names, and "did you mean" suggestions for typos.

use crate::error::SettingsError;
use crate::keys::{KEYS, KeySpec, SECTIONS};

/// How a typed key matched a list of `(section, name)` keys.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Match {
    /// Exactly one key: its index.
    One(usize),
    /// A bare name more than one section has: their indices.
    Ambiguous(Vec<usize>),
    /// No key.
    None,
}

/// Matches `typed` (`section.name` or bare `name`) against `keys`.
pub(crate) fn match_key(typed: &str, keys: &[(&str, &str)]) -> Match {
    let hits: Vec<usize> = match typed.split_once('.') {
        Some((section, name)) => keys
            .iter()
            .position(|(s, n)| *s == section && *n == name)
            .into_iter()
            .collect(),
        None => keys
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n == typed)
            .map(|(i, _)| i)
            .collect(),
    };
    match hits.as_slice() {
        [] => Match::None,
        [one] => Match::One(*one),
        _ => Match::Ambiguous(hits),
    }
}

/// The key `typed` names in [`KEYS`], or an unknown/ambiguous-key error from `origin`.
pub(crate) fn resolve(typed: &str, origin: &str) -> Result<&'static KeySpec, SettingsError> {
    let names: Vec<(&str, &str)> = KEYS.iter().map(|k| (k.section, k.name)).collect();
    resolve_in(typed, origin, &names).map(|i| &KEYS[i])
}

/// The index of the key `typed` names in `keys`, or an unknown/ambiguous-key error.
fn resolve_in(typed: &str, origin: &str, keys: &[(&str, &str)]) -> Result<usize, SettingsError> {
    match match_key(typed, keys) {
        Match::One(i) => Ok(i),
        Match::Ambiguous(hits) => Err(SettingsError::AmbiguousKey {
            origin: origin.to_owned(),
            key: typed.to_owned(),
            candidates: hits
                .iter()
                .map(|&i| format!("{}.{}", keys[i].0, keys[i].1))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Match::None => Err(unknown_key(typed, origin)),
    }
}

/// An unknown-key error for `typed`, with the closest key as a suggestion.
pub(crate) fn unknown_key(typed: &str, origin: &str) -> SettingsError {
    SettingsError::UnknownKey {
        origin: origin.to_owned(),
        key: typed.to_owned(),
        suggestion: suggest_key(typed),
    }
}

/// The known key closest to `typed`, if it is close: compares the whole
/// dotted key, and also the last part against bare names (so `channel.mem_mib`
/// and a top-level `batch_bytes` find their section).
pub(crate) fn suggest_key(typed: &str) -> Option<String> {
    let bare = typed.rsplit('.').next().unwrap_or(typed);
    KEYS.iter()
        .map(|k| {
            let full = k.full_name();
            let d = edit_distance(typed, &full).min(edit_distance(bare, k.name));
            (d, full)
        })
        .filter(|(d, full)| *d <= close_enough(full))
        .min_by_key(|(d, _)| *d)
        .map(|(_, full)| full)
}

/// The section closest to `typed`, if it is close.
pub(crate) fn suggest_section(typed: &str) -> Option<String> {
    SECTIONS
        .iter()
        .map(|s| (edit_distance(typed, s), *s))
        .filter(|(d, s)| *d <= close_enough(s))
        .min_by_key(|(d, _)| *d)
        .map(|(_, s)| s.to_owned())
}

/// Typos tolerated for a name this long: 1 for short names, then a third of it.
fn close_enough(name: &str) -> usize {
    (name.chars().count() / 3).max(1)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_resolve_or_are_ambiguous() {
        // The shipped keys have unique bare names, so ambiguity is shown on a
        // key list where two sections share a name.
        let keys = [
            ("channel", "threaded"),
            ("vmm", "threaded"),
            ("vmm", "mem_mib"),
        ];
        assert_eq!(match_key("mem_mib", &keys), Match::One(2));
        assert_eq!(match_key("vmm.threaded", &keys), Match::One(1));
        assert_eq!(match_key("threaded", &keys), Match::Ambiguous(vec![0, 1]));
        assert_eq!(match_key("channel.mem_mib", &keys), Match::None);
        assert_eq!(match_key("nothing", &keys), Match::None);
    }

    #[test]
    fn ambiguity_error_names_every_candidate() {
        let keys = [("channel", "threaded"), ("vmm", "threaded")];
        let err = resolve_in("threaded", "--set", &keys).unwrap_err();
        assert!(matches!(err, SettingsError::AmbiguousKey { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "--set: key threaded is ambiguous: it names channel.threaded, vmm.threaded; \
             write the section too"
        );
        assert_eq!(resolve_in("vmm.threaded", "--set", &keys).unwrap(), 1);
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest_key("channel.batchbytes").as_deref(),
            Some("channel.batch_bytes")
        );
        assert_eq!(
            suggest_key("channel.mem_mib").as_deref(),
            Some("vmm.mem_mib")
        );
        assert_eq!(
            suggest_key("batch_bytes").as_deref(),
            Some("channel.batch_bytes")
        );
        assert_eq!(
            suggest_key("vmm.guest_cpi").as_deref(),
            Some("vmm.guest_cpl")
        );
        assert_eq!(suggest_key("completely_unrelated"), None);
        assert_eq!(suggest_section("chanel").as_deref(), Some("channel"));
        assert_eq!(suggest_section("network"), None);
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}

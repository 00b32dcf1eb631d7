//! The shipped profiles (embedded at build time) and finding a profile by
//! name or path.

use crate::error::SettingsError;
use std::borrow::Cow;
use std::path::Path;

/// `(name, TOML text)` of every file in `tuning/profiles/`, sorted by name.
pub const PROFILES: &[(&str, &str)] = &[
    ("balanced", include_str!("../profiles/balanced.toml")),
    ("latency", include_str!("../profiles/latency.toml")),
    ("rdma-rack", include_str!("../profiles/rdma-rack.toml")),
    ("throughput", include_str!("../profiles/throughput.toml")),
];

/// The names of the shipped profiles, sorted.
pub fn profile_names() -> Vec<&'static str> {
    PROFILES.iter().map(|(name, _)| *name).collect()
}

/// A profile argument: a path if it contains `/` or ends in `.toml`, else a shipped name.
pub(crate) fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg.ends_with(".toml")
}

/// The text of profile `arg` and the origin to name in errors
/// (`profile latency`, `profile file ./mine.toml`).
pub(crate) fn read(arg: &str) -> Result<(Cow<'static, str>, String), SettingsError> {
    if is_path(arg) {
        let text = std::fs::read_to_string(arg).map_err(|source| SettingsError::ReadProfile {
            path: Path::new(arg).to_path_buf(),
            source,
        })?;
        return Ok((Cow::Owned(text), format!("profile file {arg}")));
    }
    match PROFILES.iter().find(|(name, _)| *name == arg) {
        Some((name, text)) => Ok((Cow::Borrowed(*text), format!("profile {name}"))),
        None => Err(SettingsError::UnknownProfile {
            name: arg.to_owned(),
            shipped: profile_names().join(", "),
        }),
    }
}

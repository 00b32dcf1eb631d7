//! [`SettingsError`]: every way building settings can fail.
//!
//! Each message starts with the origin (`profile latency`, `profile file
//! ./x.toml`, `--set`, `settings`), then names the key, the value and what
//! was allowed, so the message alone is enough to fix the input.

use std::fmt;
use std::path::PathBuf;

/// The origin used for `--set key=value` overrides.
pub(crate) const SET_ORIGIN: &str = "--set";

/// A wrong profile, key or value.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A profile name that is neither shipped nor a path.
    #[error("unknown profile \"{name}\" (shipped: {shipped}; or give a path to a .toml file)")]
    UnknownProfile {
        /// The name given.
        name: String,
        /// The shipped profile names, comma separated.
        shipped: String,
    },
    /// A profile file that cannot be read.
    /// The I/O error is the [`std::error::Error::source`], not part of the message
    /// (`{:#}` in anyhow prints the chain: `... cannot read: No such file ...`).
    #[error("profile file {}: cannot read", path.display())]
    ReadProfile {
        /// The path given.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// Text that is not TOML.
    #[error("{origin}: invalid TOML at line {line}, column {column}: {message}")]
    Syntax {
        /// Where the text came from.
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's description.
        message: String,
    },
    /// A `--set` argument without `=` or without a key.
    #[error("{SET_ORIGIN} \"{arg}\": expected key=value, e.g. channel.batch_bytes=4096")]
    SetSyntax {
        /// The argument given.
        arg: String,
    },
    /// A top-level table that is not a settings section.
    #[error(
        "{origin}: unknown section [{section}] (sections: channel, rdma, vmm){}",
        did_you_mean(suggestion)
    )]
    UnknownSection {
        /// Where the text came from.
        origin: String,
        /// The section name given.
        section: String,
        /// The closest section name, if one is close.
        suggestion: Option<String>,
    },
    /// A section name bound to something other than a table (`channel = 3`).
    #[error("{origin}: section {section} must be a table ([{section}]), found {found}")]
    SectionNotTable {
        /// Where the text came from.
        origin: String,
        /// The section name.
        section: String,
        /// What was found instead, with its value.
        found: String,
    },
    /// A key no section has.
    #[error("{origin}: unknown key {key}{}", did_you_mean(suggestion))]
    UnknownKey {
        /// Where the key came from.
        origin: String,
        /// The key as given (dotted when it came from a section).
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A bare `--set` key that more than one section has.
    #[error("{origin}: key {key} is ambiguous: it names {candidates}; write the section too")]
    AmbiguousKey {
        /// Where the key came from.
        origin: String,
        /// The bare key given.
        key: String,
        /// The full keys it could mean, comma separated.
        candidates: String,
    },
    /// A value of the wrong type (or an unknown choice).
    #[error("{}: expected {expected}, found {found}", place(origin, key, value))]
    WrongType {
        /// Where the value came from.
        origin: String,
        /// The full key.
        key: String,
        /// The value as given.
        value: String,
        /// What the key takes.
        expected: String,
        /// What was found, with its type.
        found: String,
    },
    /// An integer outside its range.
    #[error(
        "{}: value {value} out of range {min}..={max} ({unit})",
        place(origin, key, value)
    )]
    OutOfRange {
        /// Where the value came from.
        origin: String,
        /// The full key.
        key: String,
        /// The value given.
        value: String,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// Unit of the key.
        unit: &'static str,
    },
    /// An integer that must be a power of two and is not.
    #[error(
        "{}: value {value} is not a power of two in {min}..={max} ({unit})",
        place(origin, key, value)
    )]
    NotPowerOfTwo {
        /// Where the value came from.
        origin: String,
        /// The full key.
        key: String,
        /// The value given.
        value: String,
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// Unit of the key.
        unit: &'static str,
    },
    /// An integer outside a short list of allowed values.
    #[error(
        "{}: value {value} not allowed (allowed: {allowed})",
        place(origin, key, value)
    )]
    NotAllowed {
        /// Where the value came from.
        origin: String,
        /// The full key.
        key: String,
        /// The value given.
        value: String,
        /// The allowed values, e.g. `0 or 3`.
        allowed: String,
    },
    /// `channel.batch_bytes` larger than half of `channel.ring_bytes`.
    #[error(
        "{origin}: channel.batch_bytes = {batch_bytes} must be <= channel.ring_bytes / 2 = {} \
         (ring_bytes = {ring_bytes})",
        ring_bytes / 2
    )]
    BatchOverHalfRing {
        /// Where the settings came from.
        origin: String,
        /// The batch size.
        batch_bytes: u64,
        /// The ring size.
        ring_bytes: u64,
    },
    /// `rdma.signal_every` larger than half of `rdma.sq_depth`.
    #[error(
        "{origin}: rdma.signal_every = {signal_every} must be <= rdma.sq_depth / 2 = {} \
         (sq_depth = {sq_depth}; unsignalled requests would fill the send queue)",
        sq_depth / 2
    )]
    SignalOverHalfQueue {
        /// Where the settings came from.
        origin: String,
        /// The signalling interval.
        signal_every: u32,
        /// The send-queue depth.
        sq_depth: u32,
    },
    /// `channel.peer_timeout_ms` not above `channel.tick_interval_ms`.
    #[error(
        "{origin}: channel.peer_timeout_ms = {peer_timeout_ms} must be > \
         channel.tick_interval_ms = {tick_interval_ms} (a silent peer must have missed ticks)"
    )]
    TimeoutNotAboveTick {
        /// Where the settings came from.
        origin: String,
        /// The peer timeout.
        peer_timeout_ms: u64,
        /// The tick interval.
        tick_interval_ms: u64,
    },
}

/// `--set channel.batch_bytes=10` for overrides, `profile latency: channel.batch_bytes`
/// otherwise: where a value error happened, written the way the user wrote it.
fn place<'a>(origin: &'a str, key: &'a str, value: &'a str) -> Place<'a> {
    Place { origin, key, value }
}

struct Place<'a> {
    origin: &'a str,
    key: &'a str,
    value: &'a str,
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin == SET_ORIGIN {
            write!(f, "{} {}={}", self.origin, self.key, self.value)
        } else {
            write!(f, "{}: {}", self.origin, self.key)
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

//! The key table: every settings key with its type, range, unit and role.
//!
//! [`KEYS`] is the one place ranges live. Loading a profile, applying a
//! `--set`, validating, fingerprinting and printing all walk this table, so a
//! key added to [`crate::types`] needs exactly one line here (the `keys_cover_every_field`
//! test fails until it has one).

use crate::error::SettingsError;
use crate::types::{DiskMode, Idle, RdmaNic, RdmaVisibility, Settings, TransportKind};
use std::fmt;

/// The type and allowed values of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An integer in `min..=max`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// A power of two in `min..=max`.
    PowerOfTwo {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// One of a few integers.
    OneOf(&'static [i64]),
    /// `true` or `false`.
    Bool,
    /// One of a few words (a TOML string).
    Choice(&'static [&'static str]),
    /// A name (a TOML string) of at most `max_len` letters, digits, `-`, `_`
    /// or `.`; empty allowed (it means "pick one").
    Name {
        /// Longest allowed name.
        max_len: usize,
    },
}

impl Kind {
    /// What the key takes, for messages and docs: `an integer in 64..=16777216`.
    pub fn expected(&self) -> String {
        match self {
            Kind::Int { min, max } => format!("an integer in {min}..={max}"),
            Kind::PowerOfTwo { min, max } => format!("a power of two in {min}..={max}"),
            Kind::OneOf(values) => format!("one of the integers {}", join_or(values)),
            Kind::Bool => "a boolean (true or false)".to_owned(),
            Kind::Choice(words) => {
                let quoted: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                format!("one of {}", quoted.join(", "))
            }
            Kind::Name { max_len } => {
                format!("a name of at most {max_len} letters, digits, '-', '_' or '.' (or \"\")")
            }
        }
    }
}

/// `0 or 3`, `1, 2 or 4`.
fn join_or(values: &[i64]) -> String {
    let texts: Vec<String> = values.iter().map(i64::to_string).collect();
    match texts.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A key's value, independent of the field's Rust type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyValue {
    /// Any integer field (wide enough for every `u64` and `i64`).
    Int(i128),
    /// A boolean field.
    Bool(bool),
    /// A word-valued field (an enum).
    Choice(String),
}

impl fmt::Display for KeyValue {
    /// TOML syntax: integers bare, booleans bare, words quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Int(i) => write!(f, "{i}"),
            KeyValue::Bool(b) => write!(f, "{b}"),
            KeyValue::Choice(w) => write!(f, "\"{w}\""),
        }
    }
}

/// A Rust field type that a [`KeyValue`] converts to and from.
pub(crate) trait KeyField: Sized {
    /// The field as a [`KeyValue`].
    fn to_value(&self) -> KeyValue;
    /// The field from a [`KeyValue`]; `None` if the type or width does not fit.
    fn from_value(value: &KeyValue) -> Option<Self>;
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl KeyField for $t {
            fn to_value(&self) -> KeyValue {
                KeyValue::Int(i128::from(*self))
            }
            fn from_value(value: &KeyValue) -> Option<Self> {
                match value {
                    KeyValue::Int(i) => <$t>::try_from(*i).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_field!(u8, u32, u64, i32);

impl KeyField for usize {
    fn to_value(&self) -> KeyValue {
        // usize is at most 64 bits on every supported target; the fallback never runs.
        KeyValue::Int(i128::try_from(*self).unwrap_or(i128::MAX))
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }
}

impl KeyField for bool {
    fn to_value(&self) -> KeyValue {
        KeyValue::Bool(*self)
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl KeyField for Idle {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.name().to_owned())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => Idle::ALL.into_iter().find(|i| i.name() == w),
            _ => None,
        }
    }
}

impl KeyField for TransportKind {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.name().to_owned())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => TransportKind::ALL.into_iter().find(|t| t.name() == w),
            _ => None,
        }
    }
}

impl KeyField for DiskMode {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.name().to_owned())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => DiskMode::ALL.into_iter().find(|m| m.name() == w),
            _ => None,
        }
    }
}

impl KeyField for String {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.clone())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => Some(w.clone()),
            _ => None,
        }
    }
}

impl KeyField for RdmaNic {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.name().to_owned())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => RdmaNic::ALL.into_iter().find(|t| t.name() == w),
            _ => None,
        }
    }
}

impl KeyField for RdmaVisibility {
    fn to_value(&self) -> KeyValue {
        KeyValue::Choice(self.name().to_owned())
    }
    fn from_value(value: &KeyValue) -> Option<Self> {
        match value {
            KeyValue::Choice(w) => RdmaVisibility::ALL.into_iter().find(|t| t.name() == w),
            _ => None,
        }
    }
}

/// One settings key.
#[derive(Debug)]
pub struct KeySpec {
    /// `channel` or `vmm`.
    pub section: &'static str,
    /// The field name inside the section.
    pub name: &'static str,
    /// Type and allowed values.
    pub kind: Kind,
    /// Unit of the value (`bytes`, `µs`, ...); `-` when it has none.
    pub unit: &'static str,
    /// Both ends of an FT pair must agree on it: it enters [`Settings::fingerprint`].
    pub pair: bool,
    get: fn(&Settings) -> KeyValue,
    set: fn(&mut Settings, &KeyValue) -> bool,
}

impl KeySpec {
    /// `section.name`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// The key's current value in `settings`.
    pub fn get(&self, settings: &Settings) -> KeyValue {
        (self.get)(settings)
    }

    /// Checks `value` against the key's type and range and stores it in `settings`.
    /// `origin` and `given` (the value as the user wrote it) go into the error.
    pub(crate) fn check_and_set(
        &self,
        settings: &mut Settings,
        value: &KeyValue,
        origin: &str,
        given: &str,
    ) -> Result<(), SettingsError> {
        self.check(value, origin, given)?;
        if (self.set)(settings, value) {
            Ok(())
        } else {
            // Unreachable while every range fits its field; still an error, not a panic.
            Err(self.wrong_type(
                origin,
                given,
                format!("{value}, which does not fit the field"),
            ))
        }
    }

    /// Checks `value` against the key's type and range.
    pub(crate) fn check(
        &self,
        value: &KeyValue,
        origin: &str,
        given: &str,
    ) -> Result<(), SettingsError> {
        match (self.kind, value) {
            (Kind::Int { min, max }, KeyValue::Int(v)) => {
                if (i128::from(min)..=i128::from(max)).contains(v) {
                    Ok(())
                } else {
                    Err(SettingsError::OutOfRange {
                        origin: origin.to_owned(),
                        key: self.full_name(),
                        value: given.to_owned(),
                        min,
                        max,
                        unit: self.unit,
                    })
                }
            }
            (Kind::PowerOfTwo { min, max }, KeyValue::Int(v)) => {
                let in_range = (i128::from(min)..=i128::from(max)).contains(v);
                if in_range && v.count_ones() == 1 {
                    Ok(())
                } else if in_range {
                    Err(SettingsError::NotPowerOfTwo {
                        origin: origin.to_owned(),
                        key: self.full_name(),
                        value: given.to_owned(),
                        min,
                        max,
                        unit: self.unit,
                    })
                } else {
                    Err(SettingsError::OutOfRange {
                        origin: origin.to_owned(),
                        key: self.full_name(),
                        value: given.to_owned(),
                        min,
                        max,
                        unit: self.unit,
                    })
                }
            }
            (Kind::OneOf(allowed), KeyValue::Int(v)) => {
                if allowed.iter().any(|a| i128::from(*a) == *v) {
                    Ok(())
                } else {
                    Err(SettingsError::NotAllowed {
                        origin: origin.to_owned(),
                        key: self.full_name(),
                        value: given.to_owned(),
                        allowed: join_or(allowed),
                    })
                }
            }
            (Kind::Bool, KeyValue::Bool(_)) => Ok(()),
            (Kind::Name { max_len }, KeyValue::Choice(w)) => {
                let ok = w.len() <= max_len
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if ok {
                    Ok(())
                } else {
                    Err(self.wrong_type(origin, given, format!("\"{w}\"")))
                }
            }
            (Kind::Choice(words), KeyValue::Choice(w)) => {
                if words.contains(&w.as_str()) {
                    Ok(())
                } else {
                    Err(self.wrong_type(origin, given, format!("\"{w}\"")))
                }
            }
            (_, other) => Err(self.wrong_type(origin, given, describe(other))),
        }
    }

    /// A [`SettingsError::WrongType`] for this key.
    pub(crate) fn wrong_type(&self, origin: &str, given: &str, found: String) -> SettingsError {
        SettingsError::WrongType {
            origin: origin.to_owned(),
            key: self.full_name(),
            value: given.to_owned(),
            expected: self.kind.expected(),
            found,
        }
    }
}

/// `integer 3`, `boolean true`, `string "x"`.
fn describe(value: &KeyValue) -> String {
    match value {
        KeyValue::Int(i) => format!("integer {i}"),
        KeyValue::Bool(b) => format!("boolean {b}"),
        KeyValue::Choice(w) => format!("string \"{w}\""),
    }
}

macro_rules! key {
    ($section:ident . $field:ident, $kind:expr, $unit:expr, $pair:expr) => {
        KeySpec {
            section: stringify!($section),
            name: stringify!($field),
            kind: $kind,
            unit: $unit,
            pair: $pair,
            get: |s| KeyField::to_value(&s.$section.$field),
            set: |s, v| match KeyField::from_value(v) {
                Some(x) => {
                    s.$section.$field = x;
                    true
                }
                None => false,
            },
        }
    };
}

/// A key whose field lives elsewhere than `settings.<section>.<name>`:
/// `key!(rdma.port @ channel.rdma.port, ...)` (the `[rdma]` section is held
/// in `ChannelSettings::rdma`).
macro_rules! key_at {
    ($section:ident . $name:ident @ $($path:ident).+, $kind:expr, $unit:expr, $pair:expr) => {
        KeySpec {
            section: stringify!($section),
            name: stringify!($name),
            kind: $kind,
            unit: $unit,
            pair: $pair,
            get: |s| KeyField::to_value(&s.$($path).+),
            set: |s, v| match KeyField::from_value(v) {
                Some(x) => {
                    s.$($path).+ = x;
                    true
                }
                None => false,
            },
        }
    };
}

const IDLE_NAMES: &[&str] = &["spin", "spin-yield", "park"];
const TRANSPORT_NAMES: &[&str] = &["tcp", "shm", "uring", "rdma"];
const DISK_MODE_NAMES: &[&str] = &["shared", "local"];
const RDMA_NIC_NAMES: &[&str] = &["hardware", "simulated"];
const RDMA_VISIBILITY_NAMES: &[&str] = &["immediate", "trailer"];
const DEPTH: Kind = Kind::PowerOfTwo { min: 16, max: 8192 };
const CORE: Kind = Kind::Int { min: -1, max: 1023 };
const CORE_UNIT: &str = "core index, -1 = not pinned";

/// Every key, in section order. `docs/tuning.md` lists them in the same order.
pub static KEYS: &[KeySpec] = &[
    key!(channel.transport, Kind::Choice(TRANSPORT_NAMES), "-", true),
    key!(
        channel.ring_bytes,
        Kind::PowerOfTwo {
            min: 65_536,
            max: 1_073_741_824
        },
        "bytes",
        false
    ),
    key!(
        channel.batch_bytes,
        Kind::Int {
            min: 64,
            max: 16_777_216
        },
        "bytes",
        false
    ),
    key!(
        channel.max_delay_us,
        Kind::Int {
            min: 0,
            max: 1_000_000
        },
        "µs",
        false
    ),
    key!(
        channel.ack_every,
        Kind::Int {
            min: 1,
            max: 1_000_000
        },
        "entries",
        false
    ),
    key!(
        channel.ack_delay_us,
        Kind::Int {
            min: 0,
            max: 1_000_000
        },
        "µs",
        false
    ),
    key!(
        channel.tick_interval_ms,
        Kind::Int {
            min: 1,
            max: 60_000
        },
        "ms",
        false
    ),
    key!(
        channel.peer_timeout_ms,
        Kind::Int {
            min: 10,
            max: 600_000
        },
        "ms",
        false
    ),
    key!(channel.idle, Kind::Choice(IDLE_NAMES), "-", false),
    key!(
        channel.spin_before_yield,
        Kind::Int {
            min: 0,
            max: 100_000_000
        },
        "spins",
        false
    ),
    key!(
        channel.park_us,
        Kind::Int {
            min: 1,
            max: 100_000
        },
        "µs",
        false
    ),
    key!(channel.threaded, Kind::Bool, "-", false),
    key!(channel.sender_core, CORE, CORE_UNIT, false),
    key!(channel.receiver_core, CORE, CORE_UNIT, false),
    key!(
        channel.socket_buffer_bytes,
        Kind::Int {
            min: 4096,
            max: 268_435_456
        },
        "bytes",
        false
    ),
    key!(channel.uring_sqpoll, Kind::Bool, "-", false),
    key!(
        channel.uring_entries,
        Kind::PowerOfTwo {
            min: 8,
            max: 32_768
        },
        "entries",
        false
    ),
    key!(
        channel.lag_limit_us,
        Kind::Int {
            min: 1_000,
            max: 60_000_000
        },
        "µs",
        false
    ),
    key_at!(rdma.nic @ channel.rdma.nic, Kind::Choice(RDMA_NIC_NAMES), "-", false),
    key_at!(rdma.device @ channel.rdma.device, Kind::Name { max_len: 64 }, "-", false),
    key_at!(
        rdma.port @ channel.rdma.port,
        Kind::Int { min: 1, max: 255 },
        "port number",
        false
    ),
    key_at!(
        rdma.gid_index @ channel.rdma.gid_index,
        Kind::Int { min: -1, max: 255 },
        "GID table index, -1 = auto",
        false
    ),
    key_at!(
        rdma.ack_timeout @ channel.rdma.ack_timeout,
        Kind::Int { min: 1, max: 31 },
        "exponent: 4.096 µs × 2^n per try",
        false
    ),
    key_at!(
        rdma.retry_count @ channel.rdma.retry_count,
        Kind::Int { min: 0, max: 7 },
        "retries",
        false
    ),
    key_at!(
        rdma.rnr_retry @ channel.rdma.rnr_retry,
        Kind::Int { min: 0, max: 7 },
        "retries, 7 = forever",
        false
    ),
    key_at!(
        rdma.traffic_class @ channel.rdma.traffic_class,
        Kind::Int { min: 0, max: 255 },
        "GRH traffic class (DSCP << 2 | ECN)",
        false
    ),
    key_at!(
        rdma.service_level @ channel.rdma.service_level,
        Kind::Int { min: 0, max: 15 },
        "service level",
        false
    ),
    key_at!(
        rdma.recv_ring_bytes @ channel.rdma.recv_ring_bytes,
        Kind::PowerOfTwo {
            min: 65_536,
            max: 1_073_741_824
        },
        "bytes",
        false
    ),
    key_at!(rdma.sq_depth @ channel.rdma.sq_depth, DEPTH, "work requests", false),
    key_at!(rdma.rq_depth @ channel.rdma.rq_depth, DEPTH, "work requests", false),
    key_at!(
        rdma.signal_every @ channel.rdma.signal_every,
        Kind::Int { min: 1, max: 4096 },
        "work requests",
        false
    ),
    key_at!(
        rdma.max_inline_bytes @ channel.rdma.max_inline_bytes,
        Kind::Int { min: 0, max: 1024 },
        "bytes",
        false
    ),
    key_at!(
        rdma.visibility @ channel.rdma.visibility,
        Kind::Choice(RDMA_VISIBILITY_NAMES),
        "-",
        false
    ),
    key_at!(rdma.completion_ack @ channel.rdma.completion_ack, Kind::Bool, "-", false),
    // The VM's own bounds (the guest layout needs them), so `--set` says them.
    key!(
        vmm.mem_mib,
        Kind::Int {
            min: ftvm_guest_abi::MIN_MEM_MIB as i64,
            max: ftvm_guest_abi::MAX_MEM_MIB as i64
        },
        "MiB",
        true
    ),
    key!(vmm.guest_cpl, Kind::OneOf(&[0, 3]), "privilege level", true),
    key!(
        vmm.checkpoint_every_exits,
        Kind::Int {
            min: 1,
            max: 1_000_000_000
        },
        "exits",
        true
    ),
    key!(vmm.disk_mode, Kind::Choice(DISK_MODE_NAMES), "-", true),
];

/// The key named `section.name`, if there is one.
pub fn find(section: &str, name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.section == section && k.name == name)
}

/// The section names, in order.
pub const SECTIONS: &[&str] = &["channel", "rdma", "vmm"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_lists_match_the_enums() {
        let idle: Vec<&str> = Idle::ALL.iter().map(|i| i.name()).collect();
        assert_eq!(idle, IDLE_NAMES);
        let transports: Vec<&str> = TransportKind::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(transports, TRANSPORT_NAMES);
        let nics: Vec<&str> = RdmaNic::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(nics, RDMA_NIC_NAMES);
        let vis: Vec<&str> = RdmaVisibility::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(vis, RDMA_VISIBILITY_NAMES);
        let modes: Vec<&str> = DiskMode::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(modes, DISK_MODE_NAMES);
    }

    #[test]
    fn keys_cover_every_field() {
        // The serde view of the defaults has one entry per field; each must have a key.
        let table = toml::Table::try_from(Settings::default()).expect("defaults serialize");
        let mut fields = Vec::new();
        for (section, value) in &table {
            let inner = value.as_table().expect("sections are tables");
            for name in inner.keys() {
                fields.push(format!("{section}.{name}"));
            }
        }
        let mut keys: Vec<String> = KEYS.iter().map(KeySpec::full_name).collect();
        fields.sort();
        keys.sort();
        assert_eq!(fields, keys);
        let mut sections: Vec<&str> = table.keys().map(String::as_str).collect();
        sections.sort();
        assert_eq!(sections, SECTIONS);
    }

    #[test]
    fn expected_texts() {
        assert_eq!(
            Kind::OneOf(&[0, 3]).expected(),
            "one of the integers 0 or 3"
        );
        assert_eq!(
            Kind::OneOf(&[1, 2, 4]).expected(),
            "one of the integers 1, 2 or 4"
        );
        assert_eq!(
            Kind::Choice(IDLE_NAMES).expected(),
            "one of \"spin\", \"spin-yield\", \"park\""
        );
    }
}

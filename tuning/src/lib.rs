//! ftvm-tuning: typed settings, their defaults and ranges, and the shipped profiles.
//!
//! Contract: a [`Settings`] returned by [`Settings::load`] or
//! [`Settings::from_toml_str`] is valid. Any wrong profile, key, type or value
//! is a [`SettingsError`] whose message names the origin (profile, file or
//! `--set`), the key, the value and what is allowed. Unknown keys are errors.
//! Every key is listed in `docs/tuning.md`.
//!
//! Main flow ([`Settings::load`]):
//!
//! 1. Start from [`Settings::default`] (the defaults in [`types`]).
//! 2. Apply the profile, if any: a shipped name from [`PROFILES`]
//!    (`tuning/profiles/NAME.toml`, embedded) or, when the argument contains
//!    `/` or ends in `.toml`, a file. A profile is a partial TOML file: missing
//!    keys keep the value they had. Each value is checked against its
//!    [`KeySpec`] in [`KEYS`] (type, range, power of two) as it is applied.
//! 3. Apply each `--set key=value` in order ([`Settings::apply_set`]); the key
//!    is `section.name` or a bare `name` when only one section has it.
//! 4. Check the whole ([`Settings::validate`]): every range again plus the
//!    cross-key rules (`batch_bytes <= ring_bytes / 2`,
//!    `peer_timeout_ms > tick_interval_ms`, `rdma.signal_every <= rdma.sq_depth / 2`).
//!
//! The two ends of an FT pair compare [`Settings::fingerprint`], a hash of the
//! keys marked [`KeySpec::pair`]: every `[vmm]` key and `channel.transport`.
//! Everything else (batching, idle strategy, cores, buffers) is local to one
//! end and may differ.
//!
//! ```
//! use ftvm_tuning::{Idle, Settings};
//!
//! let s = Settings::load(Some("latency"), &["channel.sender_core=1".to_owned()])?;
//! assert_eq!(s.channel.idle, Idle::Spin);
//! assert_eq!(s.channel.sender_core, 1);
//! let err = Settings::load(None, &["channel.batch_bytes=10".to_owned()]).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "--set channel.batch_bytes=10: value 10 out of range 64..=16777216 (bytes)"
//! );
//! # Ok::<(), ftvm_tuning::SettingsError>(())
//! ```

mod error;
pub mod keys;
mod parse;
mod profiles;
mod resolve;
pub mod types;

pub use error::SettingsError;
pub use keys::{KEYS, KeySpec, KeyValue, Kind};
pub use profiles::{PROFILES, profile_names};
pub use types::{
    ChannelSettings, DiskMode, Idle, RdmaNic, RdmaSettings, RdmaVisibility, Settings,
    TransportKind, VmmSettings,
};

/// Version of the fingerprint text; bump when its layout changes.
const FINGERPRINT_VERSION: u32 = 1;

impl Settings {
    /// Defaults, then `profile` (a shipped name or a path), then `sets`
    /// (`key=value` each), validated.
    pub fn load(profile: Option<&str>, sets: &[String]) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        let mut origin = String::from("defaults");
        if let Some(arg) = profile {
            let (text, profile_origin) = profiles::read(arg)?;
            parse::apply_toml(&mut settings, &text, &profile_origin)?;
            origin = profile_origin;
        }
        for set in sets {
            settings.apply_set(set)?;
        }
        if !sets.is_empty() {
            origin.push_str(" with --set overrides");
        }
        settings.validate_as(&origin)?;
        Ok(settings)
    }

    /// Defaults, then the TOML `text` (a partial settings file), validated.
    /// `origin` names the text in errors (`profile file x.toml`, `handshake`).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        parse::apply_toml(&mut settings, text, origin)?;
        settings.validate_as(origin)?;
        Ok(settings)
    }

    /// Applies one override, `channel.batch_bytes=4096` or `batch_bytes=4096`
    /// (a bare key must belong to one section only). The value is type- and
    /// range-checked; cross-key rules wait for [`Settings::validate`].
    /// On error `self` is unchanged.
    pub fn apply_set(&mut self, kv: &str) -> Result<(), SettingsError> {
        parse::apply_set(self, kv)
    }

    /// Checks every key's range and the cross-key rules.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.validate_as("settings")
    }

    /// [`Settings::validate`], naming `origin` in errors.
    fn validate_as(&self, origin: &str) -> Result<(), SettingsError> {
        for spec in KEYS {
            let value = spec.get(self);
            spec.check(&value, origin, &value.to_string())?;
        }
        let c = &self.channel;
        if c.batch_bytes > c.ring_bytes / 2 {
            return Err(SettingsError::BatchOverHalfRing {
                origin: origin.to_owned(),
                batch_bytes: c.batch_bytes as u64,
                ring_bytes: c.ring_bytes as u64,
            });
        }
        if c.rdma.signal_every > c.rdma.sq_depth / 2 {
            return Err(SettingsError::SignalOverHalfQueue {
                origin: origin.to_owned(),
                signal_every: c.rdma.signal_every,
                sq_depth: c.rdma.sq_depth,
            });
        }
        if c.peer_timeout_ms <= c.tick_interval_ms {
            return Err(SettingsError::TimeoutNotAboveTick {
                origin: origin.to_owned(),
                peer_timeout_ms: c.peer_timeout_ms,
                tick_interval_ms: c.tick_interval_ms,
            });
        }
        Ok(())
    }

    /// The text [`Settings::fingerprint`] hashes: a version line, then
    /// `key=value` for every key both ends of an FT pair must agree on
    /// (every `[vmm]` key and `channel.transport`), in [`KEYS`] order.
    /// Exchange it to explain a fingerprint mismatch.
    pub fn fingerprint_text(&self) -> String {
        let mut text = format!("ftvm-tuning fingerprint v{FINGERPRINT_VERSION}\n");
        for spec in KEYS.iter().filter(|k| k.pair) {
            text.push_str(&format!("{}={}\n", spec.full_name(), spec.get(self)));
        }
        text
    }

    /// FNV-1a (64 bit) of [`Settings::fingerprint_text`]: equal on both ends of
    /// an FT pair iff they agree on the pair keys. Stable across builds and hosts.
    pub fn fingerprint(&self) -> u64 {
        ftvm_guest_abi::fnv::hash(self.fingerprint_text().as_bytes())
    }

    /// The resolved settings as a complete TOML file (every key, units as
    /// comments); [`Settings::from_toml_str`] reads it back to an equal value.
    pub fn to_toml(&self) -> String {
        let mut text = String::new();
        let mut section = "";
        for spec in KEYS {
            if spec.section != section {
                if !section.is_empty() {
                    text.push('\n');
                }
                section = spec.section;
                text.push_str(&format!("[{section}]\n"));
            }
            let line = format!("{} = {}", spec.name, spec.get(self));
            if spec.unit == "-" {
                text.push_str(&format!("{line}\n"));
            } else {
                text.push_str(&format!("{line:<36} # {}\n", spec.unit));
            }
        }
        text
    }
}

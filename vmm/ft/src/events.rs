//! The operator's view through `tracing`: a *notice* is one line about the
//! pair (`ftvm primary: PROTECTED again by …`), a *state change* is one
//! structured event each time a primary's protection or a backup's phase
//! changes (`connected`/`protected`, `backup lost` → `arbitrating`,
//! `unprotected`, `live`, `lost`, `stopped`, …). The binary installs the
//! output ([`install`], `--log-format`):
//!
//! * `human` (default): the notices as `ftvm SIDE: MESSAGE` lines on stderr,
//!   nothing else — what an operator reads and the CLI tests check;
//! * `json`: every event, notices and state changes, as one JSON object per
//!   line on stderr (`{"timestamp":…,"level":"INFO","target":"ftvm::state",
//!   "side":"backup","state":"live","generation":2,"vm":"kv1"}`).
//!
//! Without an installed subscriber (a library user, an in-process test)
//! nothing is printed.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Target of the notices.
pub const NOTICE: &str = "ftvm";
/// Target of the state changes.
pub const STATE: &str = "ftvm::state";

/// One line about the pair, from `side` (`primary`, `backup`).
pub fn notice(side: &str, msg: &str) {
    tracing::info!(target: NOTICE, side, "{msg}");
}

/// A primary's protection or a backup's phase changed to `state`.
pub fn state_changed(side: &str, state: &str, vm: &str, generation: u64, note: &str) {
    tracing::info!(target: STATE, side, state, vm, generation, note);
}

/// How the process logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `ftvm SIDE: MESSAGE` lines (notices only).
    #[default]
    Human,
    /// One JSON object per event (notices and state changes).
    Json,
}

impl LogFormat {
    /// Parses `human` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("--log-format {other:?}: expected human or json")),
        }
    }
}

/// Installs the process-wide subscriber for `format` (once; a second call
/// is ignored).
pub fn install(format: LogFormat) {
    let registry = tracing_subscriber::registry();
    let _ = match format {
        LogFormat::Human => tracing::subscriber::set_global_default(registry.with(Human)),
        LogFormat::Json => tracing::subscriber::set_global_default(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
}

/// The human output: notices as lines, state changes left to the notices.
struct Human;

impl<S: tracing::Subscriber> Layer<S> for Human {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != NOTICE {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        eprintln!("ftvm {}: {}", f.side, f.message);
    }
}

/// The `side` and `message` of a notice.
#[derive(Default)]
struct Fields {
    side: String,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "side" => self.side = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        match field.name() {
            "side" => self.side = s,
            "message" => self.message = s,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_named_and_a_bad_one_refused_by_name() {
        assert_eq!(LogFormat::parse("human"), Ok(LogFormat::Human));
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::parse("xml"),
            Err("--log-format \"xml\": expected human or json".to_string())
        );
    }
}

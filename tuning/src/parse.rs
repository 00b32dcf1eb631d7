//! Applying one layer over settings: a TOML text (a profile) or one
//! `--set key=value`. Every value is type- and range-checked against its
//! [`KeySpec`] as it is applied, so errors name the layer it came from.

use crate::error::{SET_ORIGIN, SettingsError};
use crate::keys::{self, KeySpec, KeyValue, Kind, SECTIONS};
use crate::resolve::{resolve, suggest_section, unknown_key};
use crate::types::Settings;

/// Applies the TOML `text` from `origin` over `settings`. On error `settings` is unchanged.
pub(crate) fn apply_toml(
    settings: &mut Settings,
    text: &str,
    origin: &str,
) -> Result<(), SettingsError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(&e, text, origin))?;
    let mut next = settings.clone();
    for (section, value) in &table {
        match value {
            toml::Value::Table(entries) if SECTIONS.contains(&section.as_str()) => {
                for (name, value) in entries {
                    let spec = keys::find(section, name)
                        .ok_or_else(|| unknown_key(&format!("{section}.{name}"), origin))?;
                    let given = value.to_string();
                    let parsed = from_toml(spec, value, origin, &given)?;
                    spec.check_and_set(&mut next, &parsed, origin, &given)?;
                }
            }
            toml::Value::Table(_) => {
                return Err(SettingsError::UnknownSection {
                    origin: origin.to_owned(),
                    section: section.clone(),
                    suggestion: suggest_section(section),
                });
            }
            other if SECTIONS.contains(&section.as_str()) => {
                return Err(SettingsError::SectionNotTable {
                    origin: origin.to_owned(),
                    section: section.clone(),
                    found: describe_toml(other),
                });
            }
            // A key outside any section: the suggestion finds the section it belongs in.
            _ => return Err(unknown_key(section, origin)),
        }
    }
    *settings = next;
    Ok(())
}

/// Applies one `key=value` (`key` full or bare) over `settings`. On error `settings` is unchanged.
pub(crate) fn apply_set(settings: &mut Settings, arg: &str) -> Result<(), SettingsError> {
    let syntax = || SettingsError::SetSyntax {
        arg: arg.to_owned(),
    };
    let (key, value) = arg.split_once('=').ok_or_else(syntax)?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() {
        return Err(syntax());
    }
    let spec = resolve(key, SET_ORIGIN)?;
    let parsed = from_text(spec, value, SET_ORIGIN)?;
    spec.check_and_set(settings, &parsed, SET_ORIGIN, value)
}

/// A TOML value as a [`KeyValue`]; type mismatches the kind cannot hold are errors here,
/// the rest are found by [`KeySpec::check`].
fn from_toml(
    spec: &KeySpec,
    value: &toml::Value,
    origin: &str,
    given: &str,
) -> Result<KeyValue, SettingsError> {
    match value {
        toml::Value::Integer(i) => Ok(KeyValue::Int(i128::from(*i))),
        toml::Value::Boolean(b) => Ok(KeyValue::Bool(*b)),
        toml::Value::String(s) => Ok(KeyValue::Choice(s.clone())),
        other => Err(spec.wrong_type(origin, given, describe_toml(other))),
    }
}

/// A `--set` value as a [`KeyValue`] of the key's kind. Integers may use `_`
/// separators and a `0x` prefix; words may be quoted.
fn from_text(spec: &KeySpec, text: &str, origin: &str) -> Result<KeyValue, SettingsError> {
    let bare = unquote(text);
    let wrong = || spec.wrong_type(origin, text, format!("\"{text}\""));
    match spec.kind {
        Kind::Int { .. } | Kind::PowerOfTwo { .. } | Kind::OneOf(_) => {
            parse_int(bare).map(KeyValue::Int).ok_or_else(wrong)
        }
        Kind::Bool => match bare {
            "true" => Ok(KeyValue::Bool(true)),
            "false" => Ok(KeyValue::Bool(false)),
            _ => Err(wrong()),
        },
        Kind::Choice(_) | Kind::Name { .. } => Ok(KeyValue::Choice(bare.to_owned())),
    }
}

/// `"x"` or `'x'` -> `x`; anything else unchanged.
fn unquote(text: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(q).and_then(|t| t.strip_suffix(q)) {
            return inner;
        }
    }
    text
}

/// Decimal or `0x` hexadecimal, optional sign, `_` between digits.
fn parse_int(text: &str) -> Option<i128> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = match rest.strip_prefix("0x").or_else(|| rest.strip_prefix("0X")) {
        Some(hex) => (16, hex),
        None => (10, rest),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let cleaned: String = digits.chars().filter(|c| *c != '_').collect();
    // `from_str_radix` would accept a second sign; the text after ours must be digits only.
    if !cleaned.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(&cleaned, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// `float 1.5`, `array [1, 2]`, `table`, ... for messages.
fn describe_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(_) => "a table".to_owned(),
        other => format!("{} {other}", other.type_str()),
    }
}

/// A [`SettingsError::Syntax`] with the 1-based line and column of the parser's span.
fn syntax_error(err: &toml::de::Error, text: &str, origin: &str) -> SettingsError {
    let offset = err.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    SettingsError::Syntax {
        origin: origin.to_owned(),
        line,
        column,
        message: err.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers() {
        assert_eq!(parse_int("4096"), Some(4096));
        assert_eq!(parse_int("1_000_000"), Some(1_000_000));
        assert_eq!(parse_int("0x10000"), Some(65536));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("+7"), Some(7));
        for bad in [
            "", "-", "0x", "_1", "1_", "1__0", "--1", "-+1", "1.5", "4k", "0xg", " 1",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn quotes() {
        assert_eq!(unquote("\"spin\""), "spin");
        assert_eq!(unquote("'park'"), "park");
        assert_eq!(unquote("\"half"), "\"half");
        assert_eq!(unquote("plain"), "plain");
    }

    #[test]
    fn syntax_position() {
        let text = "[channel]\nbatch_bytes = = 3\n";
        let err = toml::from_str::<toml::Table>(text).unwrap_err();
        match syntax_error(&err, text, "profile x") {
            SettingsError::Syntax {
                line,
                column,
                origin,
                ..
            } => {
                assert_eq!((line, origin.as_str()), (2, "profile x"));
                assert!(column > 1, "column {column}");
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
    }
}

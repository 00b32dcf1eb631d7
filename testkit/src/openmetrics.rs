//! A strict reader of the Prometheus / OpenMetrics text format, for the
//! tests of `--metrics`: every line is a comment (`# HELP`, `# TYPE`,
//! `# UNIT`, `# EOF` last) or `name{labels} value`.

use std::collections::BTreeMap;

/// A sample: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    /// The metric's name (with its `_total`, `_bucket`, … suffix).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (`+Inf` is infinity).
    pub value: f64,
}

/// Parses `text`, panicking on anything that is not the format.
pub fn parse(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut out = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(c) = line.strip_prefix("# ") {
            let kind = c.split(' ').next().unwrap_or_default();
            assert!(matches!(kind, "HELP" | "TYPE" | "UNIT"), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect(line);
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect(line),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The value of the one sample named `name` (with `label`, if given).
pub fn value(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).is_some_and(|x| x == v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {label:?}: {found:?}");
    found[0].value
}

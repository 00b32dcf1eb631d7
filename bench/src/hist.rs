//! Latency histograms: nanosecond recording, microsecond reporting, `.hgrm` files.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds (1 ns .. 100 s, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        let hist = Histogram::new_with_bounds(1, 100_000_000_000, 3)
            .expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one latency in nanoseconds (clamped to the histogram's range).
    pub fn record_ns(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest value in microseconds.
    pub fn max_us(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    /// Points `(q, µs)` of the percentile curve, denser toward the tail.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        self.hist
            .iter_quantiles(5)
            .map(|v| {
                (
                    v.quantile_iterated_to(),
                    v.value_iterated_to() as f64 / 1000.0,
                )
            })
            .collect()
    }

    /// The HdrHistogram percentile-distribution text (`.hgrm`), values in µs.
    pub fn hgrm(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        if !self.hist.is_empty() {
            for v in self.hist.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let inv = if q < 1.0 {
                    format!("{:14.2}", 1.0 / (1.0 - q))
                } else {
                    format!("{:>14}", "inf")
                };
                let _ = writeln!(
                    out,
                    "{:12.3} {:2.12} {:10} {}",
                    v.value_iterated_to() as f64 / 1000.0,
                    q,
                    v.count_since_last_iteration(),
                    inv
                );
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            self.hist.mean() / 1000.0,
            self.hist.stdev() / 1000.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            self.max_us(),
            self.hist.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            self.hist.buckets(),
            self.hist.distinct_values()
        );
        out
    }

    /// Writes [`Latency::hgrm`] to `path`.
    pub fn write_hgrm(&self, path: &std::path::Path) -> Result<()> {
        std::fs::write(path, self.hgrm()).with_context(|| format!("write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_hgrm_reflect_recorded_values() {
        let mut h = Latency::new();
        for us in 1..=1000u64 {
            h.record_ns(us * 1000);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_us(0.5);
        assert!((499.0..=501.0).contains(&p50), "p50 {p50}");
        assert!((999.0..=1001.0).contains(&h.max_us()));
        let text = h.hgrm();
        assert!(text.contains("Total count    =         1000"), "{text}");
        let curve = h.percentile_curve();
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
    }
}

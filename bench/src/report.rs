//! Results: one row per scenario × transport, the machine, the table and the JSON report.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::hist::Latency;

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online cores.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// Host name.
    pub hostname: String,
}

impl Machine {
    /// Reads the running machine.
    pub fn detect() -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .ok()
        };
        let cpu_model = read("/proc/cpuinfo")
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            cpu_model,
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// One result row. Latencies in µs; fields that do not apply are `null`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Transport name.
    pub transport: String,
    /// Payload bytes per entry (or per ping).
    pub payload_bytes: usize,
    /// Samples (latency scenarios) or entries (throughput).
    pub count: u64,
    /// Latency percentiles (µs).
    pub p50_us: Option<f64>,
    /// 90th percentile (µs).
    pub p90_us: Option<f64>,
    /// 99th percentile (µs).
    pub p99_us: Option<f64>,
    /// 99.9th percentile (µs).
    pub p999_us: Option<f64>,
    /// 99.99th percentile (µs).
    pub p9999_us: Option<f64>,
    /// Largest sample (µs).
    pub max_us: Option<f64>,
    /// Ping-pong floor p50 of the same transport and payload (µs).
    pub floor_p50_us: Option<f64>,
    /// Ping-pong floor p99 (µs).
    pub floor_p99_us: Option<f64>,
    /// p50 / floor p50.
    pub ratio_p50: Option<f64>,
    /// p99 / floor p99.
    pub ratio_p99: Option<f64>,
    /// Entries per second.
    pub entries_per_s: Option<f64>,
    /// Megabytes (10^6) of frames per second.
    pub mb_per_s: Option<f64>,
    /// Raw streaming floor of the same transport (MB/s).
    pub floor_mb_per_s: Option<f64>,
    /// mb_per_s / floor_mb_per_s.
    pub ratio_throughput: Option<f64>,
    /// Process CPU time as % of one core (idle-cpu).
    pub cpu_pct: Option<f64>,
    /// The budget `cpu_pct` is held to (idle-cpu: [`IDLE_CPU_BUDGET_PCT`]).
    pub cpu_budget_pct: Option<f64>,
    /// `within budget` or `over budget` (rows with a budget).
    pub verdict: Option<String>,
    /// Free-form notes (achieved rate, fallbacks).
    pub note: String,
    /// The histogram behind the latency fields (not serialized).
    #[serde(skip)]
    pub hist: Option<Latency>,
}

impl Row {
    /// A row for `scenario` on `transport`.
    pub fn new(scenario: &str, transport: &str, payload_bytes: usize) -> Row {
        Row {
            scenario: scenario.into(),
            transport: transport.into(),
            payload_bytes,
            ..Row::default()
        }
    }

    /// Fills the latency fields from `h`.
    pub fn with_latency(mut self, h: Latency) -> Row {
        self.count = h.count();
        self.p50_us = Some(h.quantile_us(0.5));
        self.p90_us = Some(h.quantile_us(0.9));
        self.p99_us = Some(h.quantile_us(0.99));
        self.p999_us = Some(h.quantile_us(0.999));
        self.p9999_us = Some(h.quantile_us(0.9999));
        self.max_us = Some(h.max_us());
        self.hist = Some(h);
        self
    }

    /// Sets the floor and the ratios against it.
    pub fn with_floor(mut self, floor: Option<(f64, f64)>) -> Row {
        if let Some((f50, f99)) = floor {
            self.floor_p50_us = Some(f50);
            self.floor_p99_us = Some(f99);
            self.ratio_p50 = self.p50_us.map(|v| v / f50);
            self.ratio_p99 = self.p99_us.map(|v| v / f99);
        }
        self
    }

    /// Sets the rate fields from `entries` of `frame_bytes` each in `secs`.
    pub fn with_rate(mut self, entries: u64, frame_bytes: usize, secs: f64) -> Row {
        if self.count == 0 {
            self.count = entries;
        }
        let secs = secs.max(1e-9);
        self.entries_per_s = Some(entries as f64 / secs);
        self.mb_per_s = Some(entries as f64 * frame_bytes as f64 / secs / 1e6);
        self
    }

    /// Sets the CPU share and holds it to `budget_pct` (the verdict).
    pub fn with_cpu(mut self, cpu_pct: Option<f64>, budget_pct: f64) -> Row {
        self.cpu_pct = cpu_pct;
        self.cpu_budget_pct = Some(budget_pct);
        self.verdict = cpu_pct.map(|c| {
            if c <= budget_pct {
                "within budget".to_string()
            } else {
                "over budget".to_string()
            }
        });
        self
    }

    /// Sets the streaming floor and the throughput ratio.
    pub fn with_stream_floor(mut self, floor_mb_per_s: Option<f64>) -> Row {
        if let Some(f) = floor_mb_per_s {
            self.floor_mb_per_s = Some(f);
            self.ratio_throughput = self.mb_per_s.map(|m| m / f);
        }
        self
    }
}

/// What a connected, idle channel may cost with the balanced profile, as %
/// of one core (`docs/benchmarks.md`, idle-cpu).
pub const IDLE_CPU_BUDGET_PCT: f64 = 2.0;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The transports the rows were measured on, in order (`rdma-sim` for
    /// the simulated NIC, `none` for an unprotected baseline): what ran,
    /// not what was asked for.
    pub transports_run: Vec<String>,
    /// The resolved settings (`serde_json::to_value(settings)`), with
    /// `channel.transport` the one that ran when there was one.
    pub settings: serde_json::Value,
    /// The command line options of the run.
    pub options: serde_json::Value,
    /// One row per scenario × transport.
    pub results: Vec<Row>,
    /// Transports or scenarios that could not run, with the reason.
    pub skipped: Vec<String>,
}

impl Report {
    /// The report of `results`, run with `settings` and `options`.
    pub fn new(
        settings: &ftvm_tuning::Settings,
        options: serde_json::Value,
        results: Vec<Row>,
        skipped: Vec<String>,
    ) -> Result<Report> {
        let mut transports_run: Vec<String> = Vec::new();
        for r in &results {
            if !transports_run.contains(&r.transport) {
                transports_run.push(r.transport.clone());
            }
        }
        let mut settings = serde_json::to_value(settings).context("serialize settings")?;
        if let [one] = transports_run
            .iter()
            .filter(|t| *t != "none")
            .collect::<Vec<_>>()[..]
        {
            settings["channel"]["transport"] = one.as_str().into();
        }
        Ok(Report {
            machine: Machine::detect(),
            transports_run,
            settings,
            options,
            results,
            skipped,
        })
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("serialize report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))
    }

    /// The results as a markdown table.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        let r = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        let big = |v: Option<f64>| {
            v.map_or_else(
                || "-".to_string(),
                |v| {
                    if v >= 1e6 {
                        format!("{:.2}M", v / 1e6)
                    } else if v >= 1e3 {
                        format!("{:.1}k", v / 1e3)
                    } else {
                        format!("{v:.0}")
                    }
                },
            )
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | transport | payload B | count | p50 µs | p90 µs | p99 µs | p99.9 µs | p99.99 µs | max µs | floor p50 | floor p99 | ratio p50 | ratio p99 | entries/s | MB/s | floor MB/s | thr ratio | cpu % | note |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(20));
        for row in &self.results {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.scenario,
                row.transport,
                row.payload_bytes,
                row.count,
                f(row.p50_us),
                f(row.p90_us),
                f(row.p99_us),
                f(row.p999_us),
                f(row.p9999_us),
                f(row.max_us),
                f(row.floor_p50_us),
                f(row.floor_p99_us),
                r(row.ratio_p50),
                r(row.ratio_p99),
                big(row.entries_per_s),
                f(row.mb_per_s),
                f(row.floor_mb_per_s),
                r(row.ratio_throughput),
                r(row.cpu_pct),
                match (&row.verdict, row.cpu_budget_pct) {
                    (Some(v), Some(b)) => format!("{v} ({b} %); {}", row.note),
                    _ => row.note.clone(),
                }
                .trim_end_matches("; ")
            );
        }
        for s in &self.skipped {
            let _ = writeln!(out, "\nskipped: {s}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON says what ran: the transports of the rows (the settings'
    /// transport replaced by the one that ran), idle-cpu against its
    /// budget with a verdict.
    #[test]
    fn the_report_names_what_ran_and_judges_idle_cpu() {
        let settings = ftvm_tuning::Settings::default();
        assert_eq!(settings.channel.transport.name(), "tcp");
        let rows = vec![
            Row::new("floor", "uring", 64),
            Row::new("idle-cpu", "uring", 64).with_cpu(Some(2.5), IDLE_CPU_BUDGET_PCT),
            Row::new("idle-cpu", "uring", 4096).with_cpu(Some(1.5), IDLE_CPU_BUDGET_PCT),
        ];
        let r = Report::new(&settings, serde_json::json!({}), rows, vec![]).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["transports_run"], serde_json::json!(["uring"]));
        assert_eq!(v["settings"]["channel"]["transport"], "uring");
        assert_eq!(v["results"][1]["cpu_budget_pct"], 2.0);
        assert_eq!(v["results"][1]["verdict"], "over budget");
        assert_eq!(v["results"][2]["verdict"], "within budget");
        assert_eq!(v["results"][0]["verdict"], serde_json::Value::Null);
        assert!(r.table().contains("| over budget (2 %)"), "{}", r.table());
        // Several transports: the settings keep theirs, the list says all.
        let rows = vec![Row::new("floor", "tcp", 64), Row::new("floor", "shm", 64)];
        let v = serde_json::to_value(
            Report::new(&settings, serde_json::json!({}), rows, vec![]).unwrap(),
        )
        .unwrap();
        assert_eq!(v["transports_run"], serde_json::json!(["tcp", "shm"]));
    }
}

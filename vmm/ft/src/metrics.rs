//! The operator's view: `--metrics ADDR` serves the pair's counters in the
//! Prometheus text format (OpenMetrics 1.0, encoded by `prometheus-client`)
//! on `GET /metrics`; every metric is listed in docs/operations.md.
//!
//! 1. [`MetricsEndpoint::bind`] binds the address at start (a busy or bad
//!    address fails there, naming the flag and the address);
//! 2. [`MetricsEndpoint::serve`] answers on a background thread with what a
//!    render function returns — [`PrimaryMetrics::encode`] or
//!    [`encode_backup`] — built afresh from the live counters at each scrape
//!    (the counters are the same atomics `--status` reads, so nothing on the
//!    VM's path knows about Prometheus);
//! 3. the one value measured only for this endpoint is the output rule's
//!    latency — an output's submit to its release — kept by the driver in a
//!    [`LatencyHistogram`]: fixed buckets of atomics, no lock and no
//!    allocation on the release path.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use ftvm_vmm::Counter;

use crate::golive::{BackupPhase, BackupStatus};
use crate::status::PrimaryView;

/// Upper bounds of the output-rule latency buckets (µs); one more bucket
/// takes everything above the last.
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000,
];

const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A fixed-bucket latency histogram: one relaxed `fetch_add` per bucket hit
/// and one for the sum, so observing costs a few nanoseconds and never
/// locks or allocates. Readers may see a bucket before the sum that goes
/// with it: a scrape is a snapshot of counters, not a transaction.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least `us` (`le` semantics).
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        // Relaxed: reporting counters, read only by the metrics endpoint.
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        // Relaxed: see the type's doc.
        let mut counts = [0u64; BUCKETS];
        for (c, b) in counts.iter_mut().zip(&self.buckets) {
            *c = b.load(Ordering::Relaxed);
        }
        HistogramSnapshot {
            counts,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A copy of a [`LatencyHistogram`], encodable as a Prometheus histogram.
#[derive(Clone, Debug)]
pub struct HistogramSnapshot {
    /// Per-bucket (not cumulative) counts; the last is above every bound.
    pub counts: [u64; BUCKETS],
    /// Sum of the observed latencies.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder adds the counts up; `f64::MAX` is written `+Inf`.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::MAX])
            .zip(self.counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The content type of [`PrimaryMetrics::encode`] and [`encode_backup`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn registry(role: &'static str, vm: String) -> Registry {
    Registry::with_prefix_and_labels(
        "ftvm",
        [
            (Cow::Borrowed("role"), Cow::Borrowed(role)),
            (Cow::Borrowed("vm"), Cow::Owned(vm)),
        ]
        .into_iter(),
    )
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

fn seconds_counter(r: &mut Registry, name: &str, help: &str, us: u64) {
    r.register_with_unit(
        name,
        help,
        Unit::Seconds,
        ConstCounter::new(us as f64 / 1e6),
    );
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(
        name,
        help,
        ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
    );
}

fn seconds_gauge(r: &mut Registry, name: &str, help: &str, us: u64) {
    r.register_with_unit(name, help, Unit::Seconds, ConstGauge::new(us as f64 / 1e6));
}

/// A state machine's state as one gauge per state (the Prometheus
/// "state set" idiom): 1 for the current state, 0 for the others, in the
/// machine's own order.
#[derive(Debug)]
struct StateSet {
    label: &'static str,
    states: &'static [&'static str],
    now: &'static str,
}

impl EncodeMetric for StateSet {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for s in self.states {
            let labels = [(self.label, *s)];
            encoder
                .encode_family(&labels)?
                .encode_gauge(&i64::from(*s == self.now))?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn state_gauge(
    r: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    states: &'static [&'static str],
    now: &'static str,
) {
    r.register(name, help, StateSet { label, states, now });
}

fn finish(r: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, r);
    out
}

/// Every protection state's name, in the order they are exported.
const PROTECTION_STATES: [&str; 6] = [
    "protected",
    "arbitrating",
    "unprotected",
    "joining",
    "lost",
    "finished",
];

/// A primary's counters, as the metrics endpoint reads them.
#[derive(Debug, Clone)]
pub struct PrimaryMetrics {
    vm: String,
    /// The same counters `ftvm status` reads.
    view: PrimaryView,
}

impl PrimaryMetrics {
    /// The counters of `view`, the primary of VM `vm`.
    pub fn new(vm: &str, view: PrimaryView) -> PrimaryMetrics {
        PrimaryMetrics {
            vm: vm.to_string(),
            view,
        }
    }

    /// The text format of every primary metric (docs/operations.md).
    pub fn encode(&self) -> String {
        let mut r = registry("primary", self.vm.clone());
        self.register(&mut r);
        finish(&r)
    }

    /// Registers every primary metric into `r`.
    fn register(&self, r: &mut Registry) {
        let ld = |a: &Counter| a.get();
        let (sh, g, st) = (&self.view.shared, &self.view.gate, &self.view.sink);
        counter(
            r,
            "log_entries",
            "Log entries the VM appended",
            ld(&st.entries),
        );
        r.register_with_unit(
            "log",
            "Log bytes the VM appended (whole frames)",
            Unit::Bytes,
            ConstCounter::new(ld(&st.bytes)),
        );
        let ch = sh.channel_totals();
        counter(
            r,
            "channel_entries_sent",
            "Log entries handed to the transport, over every backup this primary had",
            ch.entries_sent,
        );
        r.register_with_unit(
            "channel_sent",
            "Log bytes handed to the transport",
            Unit::Bytes,
            ConstCounter::new(ch.entry_bytes_sent),
        );
        counter(
            r,
            "acks_received",
            "ACK frames received from the backup",
            ch.acks,
        );
        gauge(
            r,
            "last_seq_sent",
            "Seq of the last entry handed to the transport",
            sh.last_sent_seq(),
        );
        gauge(
            r,
            "last_seq_acked",
            "Highest seq the backup ACKed",
            sh.acked_seq(),
        );
        gauge(
            r,
            "last_seq_replayed",
            "The backup's replay position (seq), from its ACKs",
            sh.replay().0,
        );
        gauge(
            r,
            "exit_ordinal",
            "Exit ordinal of the last entry logged",
            ld(&st.exit_ordinal),
        );
        counter(
            r,
            "outputs_submitted",
            "Outputs the VM submitted to the output rule",
            ld(&g.submitted),
        );
        counter(
            r,
            "outputs_released",
            "Outputs released after their ACK (or unprotected)",
            ld(&g.released),
        );
        gauge(
            r,
            "outputs_held",
            "Outputs waiting for an ACK now",
            g.held(),
        );
        r.register_with_unit(
            "output_release_latency",
            "Output rule latency: an output's submit to its release",
            Unit::Seconds,
            g.release_latency.snapshot(),
        );
        seconds_gauge(
            r,
            "replay_lag",
            "The backup's replay lag at the last check",
            ld(&st.lag_us),
        );
        seconds_gauge(
            r,
            "replay_lag_max",
            "Largest replay lag seen",
            ld(&st.max_lag_us),
        );
        counter(
            r,
            "flow_control_waits",
            "Times the vCPU waited on a full log ring",
            ld(&st.full_waits),
        );
        seconds_counter(
            r,
            "flow_control_wait",
            "Time the vCPU waited on a full log ring",
            ld(&st.full_wait_us),
        );
        counter(
            r,
            "lag_control_sleeps",
            "Lag-control sleeps (the backup lagged past lag_limit_us)",
            ld(&st.lag_sleeps),
        );
        seconds_counter(
            r,
            "lag_control_sleep",
            "Time slept by lag control",
            ld(&st.lag_sleep_us),
        );
        state_gauge(
            r,
            "protection_state",
            "Where the pair stands: 1 for the current state",
            "state",
            &PROTECTION_STATES,
            sh.protection().name(),
        );
        gauge(
            r,
            "generation",
            "The generation this side runs at",
            sh.generation(),
        );
        counter(
            r,
            "peer_losses",
            "Backups lost (each starts a race at the arbiter)",
            sh.backup_losses(),
        );
        counter(
            r,
            "failovers",
            "Races won after losing the backup (ran on unprotected)",
            sh.races_won(),
        );
        seconds_gauge(
            r,
            "arbitration",
            "Time the last arbitration took (0: none yet)",
            sh.arbitration_us(),
        );
    }
}

/// Every backup phase's name, in the order they are exported.
const BACKUP_PHASES: [&str; 7] = [
    "waiting",
    "replaying",
    "draining",
    "arbitrating",
    "live",
    "lost",
    "stopped",
];

/// The text format of every backup metric (docs/operations.md).
pub fn encode_backup(status: &BackupStatus) -> String {
    let ld = |a: &Counter| a.get();
    let st = &status.replay;
    let t = status.timeline();
    let phase = status.phase();
    let mut r = registry("backup", status.vm());
    counter(
        &mut r,
        "log_entries_received",
        "Log entries received and validated",
        ld(&st.received),
    );
    r.register_with_unit(
        "log_received",
        "Log bytes received (whole frames)",
        Unit::Bytes,
        ConstCounter::new(ld(&st.received_bytes)),
    );
    counter(
        &mut r,
        "acks_sent",
        "ACK frames sent to the primary",
        ld(&st.acks_sent),
    );
    gauge(
        &mut r,
        "last_seq_replayed",
        "Seq of the last entry replayed",
        ld(&st.replayed),
    );
    gauge(
        &mut r,
        "exit_ordinal",
        "Exit ordinal of the last entry replayed",
        ld(&st.exit_ordinal),
    );
    gauge(
        &mut r,
        "replay_backlog_entries",
        "Entries received but not yet replayed",
        ld(&st.backlog),
    );
    state_gauge(
        &mut r,
        "backup_phase",
        "Where the backup stands: 1 for the current phase",
        "phase",
        &BACKUP_PHASES,
        phase.name(),
    );
    gauge(
        &mut r,
        "generation",
        "The generation this side runs at",
        status.generation(),
    );
    counter(
        &mut r,
        "peer_losses",
        "Primaries lost (detected by the channel)",
        u64::from(t.detected_us.is_some()),
    );
    counter(
        &mut r,
        "failovers",
        "Times this backup went live (won the next generation)",
        u64::from(phase == BackupPhase::Live || t.live_us.is_some()),
    );
    let ms_us = |ms: Option<f64>| ms.map_or(0, |ms| (ms * 1000.0) as u64);
    seconds_gauge(
        &mut r,
        "arbitration",
        "Time the last arbitration took (0: none yet)",
        ms_us(t.arbitration_ms()),
    );
    // Live and recording for its next backup (--spare, --find-spares): the
    // primary's metrics too, as `ftvm_live_*`.
    if let Some(live) = status.live() {
        let m = PrimaryMetrics::new(&status.vm(), live.clone());
        m.register(r.sub_registry_with_prefix("live"));
    }
    finish(&r)
}

/// Binding or serving the metrics endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {addr}: {what}: {reason}")]
pub struct ServeMetricsError {
    /// The command-line flag the address came from.
    pub flag: String,
    /// The address.
    pub addr: String,
    /// What was being done.
    pub what: &'static str,
    /// The cause.
    pub reason: String,
}

/// A bound `--metrics` endpoint, not answering yet (requests wait).
pub struct MetricsEndpoint {
    server: tiny_http::Server,
    local: String,
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("local", &self.local)
            .finish()
    }
}

/// Renders the current metrics.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

impl MetricsEndpoint {
    /// Binds `addr` (given as `flag`, for the error).
    pub fn bind(flag: &str, addr: &str) -> Result<MetricsEndpoint, ServeMetricsError> {
        let err = |what, reason: String| ServeMetricsError {
            flag: flag.to_string(),
            addr: addr.to_string(),
            what,
            reason,
        };
        let server = tiny_http::Server::http(addr)
            .map_err(|e| err("binding the metrics endpoint", e.to_string()))?;
        let local = server
            .server_addr()
            .to_ip()
            .map(|a| a.to_string())
            .ok_or_else(|| err("binding the metrics endpoint", "not an IP address".into()))?;
        Ok(MetricsEndpoint { server, local })
    }

    /// The bound address (the port chosen for `:0`).
    pub fn local_addr(&self) -> &str {
        &self.local
    }

    /// Answers `GET /metrics` with `render()` on a background thread (404
    /// for any other path, 405 for another method); returns the bound address.
    pub fn serve(self, render: Render) -> std::io::Result<String> {
        let local = self.local.clone();
        let server = self.server;
        std::thread::Builder::new()
            .name("ftvm-metrics".into())
            .spawn(move || {
                for req in server.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("");
                    let response = match (req.method(), path) {
                        (tiny_http::Method::Get, "/metrics") => {
                            let header =
                                tiny_http::Header::from_bytes("Content-Type", CONTENT_TYPE)
                                    .expect("a valid header");
                            tiny_http::Response::from_string(render()).with_header(header)
                        }
                        (tiny_http::Method::Get, _) => {
                            tiny_http::Response::from_string("not found: try /metrics\n")
                                .with_status_code(404)
                        }
                        _ => tiny_http::Response::from_string("only GET\n").with_status_code(405),
                    };
                    // A client that went away is its own problem.
                    let _ = req.respond(response);
                }
            })?;
        Ok(local)
    }
}

/// Binds `addr` and serves the backup's metrics from `status` (made
/// before the backup waits for its primary, so this answers from the start).
pub fn serve_backup(
    flag: &str,
    addr: &str,
    status: Arc<BackupStatus>,
) -> Result<String, ServeMetricsError> {
    let endpoint = MetricsEndpoint::bind(flag, addr)?;
    endpoint
        .serve(Arc::new(move || encode_backup(&status)))
        .map_err(|e| ServeMetricsError {
            flag: flag.to_string(),
            addr: addr.to_string(),
            what: "starting the metrics thread",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests;

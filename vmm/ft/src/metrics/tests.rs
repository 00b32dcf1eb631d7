use ftvm_testkit::openmetrics::{parse, value};
use std::io::{Read, Write};

use super::*;
use crate::driver::Protection;
use crate::{DriverShared, GateCounters, SinkStats};

#[test]
fn histogram_buckets_follow_le_semantics() {
    let h = LatencyHistogram::default();
    for us in [0, 5, 6, 1_000, 1_000_001] {
        h.observe(Duration::from_micros(us));
    }
    let s = h.snapshot();
    assert_eq!(s.count(), 5);
    assert_eq!(s.counts[0], 2, "0 and 5 µs are <= 5 µs");
    assert_eq!(s.counts[1], 1, "6 µs is <= 10 µs");
    let ms = LATENCY_BOUNDS_US.iter().position(|&b| b == 1_000).unwrap();
    assert_eq!(s.counts[ms], 1, "1 ms is <= 1 ms");
    assert_eq!(s.counts[BUCKETS - 1], 1, "above the last bound");
    assert!((s.sum_seconds - 1.001012).abs() < 1e-9, "{}", s.sum_seconds);
}

#[test]
fn primary_metrics_encode_as_documented() {
    let shared = Arc::new(DriverShared::new("kv", 3, Protection::Protected).unwrap());
    let gate = Arc::new(GateCounters::default());
    let sink = Arc::new(SinkStats::default());
    sink.entries.set(10);
    sink.bytes.set(1_280);
    sink.lag_us.set(1_500);
    sink.full_wait_us.set(2_000_000);
    gate.submitted.set(4);
    gate.released.set(3);
    for us in [20, 40, 300] {
        gate.release_latency.observe(Duration::from_micros(us));
    }
    let view = crate::status::PrimaryView {
        shared,
        gate,
        sink,
        lag_limit_us: 0,
    };
    let text = PrimaryMetrics::new("kv-1", view).encode();
    let samples = parse(&text);
    for s in &samples {
        assert_eq!(s.labels["role"], "primary", "{s:?}");
        assert_eq!(s.labels["vm"], "kv-1", "{s:?}");
        assert!(s.name.starts_with("ftvm_"), "{s:?}");
    }
    assert_eq!(value(&samples, "ftvm_log_entries_total", None), 10.0);
    assert_eq!(value(&samples, "ftvm_log_bytes_total", None), 1_280.0);
    assert_eq!(value(&samples, "ftvm_outputs_held", None), 1.0);
    assert_eq!(value(&samples, "ftvm_replay_lag_seconds", None), 0.0015);
    assert_eq!(
        value(&samples, "ftvm_flow_control_wait_seconds_total", None),
        2.0
    );
    assert_eq!(value(&samples, "ftvm_generation", None), 3.0);
    for state in PROTECTION_STATES {
        let v = value(&samples, "ftvm_protection_state", Some(("state", state)));
        assert_eq!(v, f64::from(u8::from(state == "protected")), "{state}");
    }
    let h = "ftvm_output_release_latency_seconds";
    assert_eq!(value(&samples, &format!("{h}_count"), None), 3.0);
    assert!((value(&samples, &format!("{h}_sum"), None) - 0.00036).abs() < 1e-12);
    assert_eq!(
        value(&samples, &format!("{h}_bucket"), Some(("le", "0.000025"))),
        1.0
    );
    assert_eq!(
        value(&samples, &format!("{h}_bucket"), Some(("le", "0.00005"))),
        2.0
    );
    assert_eq!(
        value(&samples, &format!("{h}_bucket"), Some(("le", "+Inf"))),
        3.0
    );
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == format!("{h}_bucket"))
        .map(|s| s.value)
        .collect();
    assert_eq!(buckets.len(), BUCKETS);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
}

/// Every state the driver can be in is exported under its own name.
#[test]
fn every_protection_state_is_exported() {
    for p in [
        Protection::Protected,
        Protection::Arbitrating,
        Protection::Unprotected,
        Protection::Lost,
        Protection::Finished,
        Protection::Joining,
    ] {
        assert!(PROTECTION_STATES.contains(&p.name()), "{}", p.name());
    }
}

#[test]
fn backup_metrics_encode_as_documented() {
    let status = BackupStatus::default();
    status.paired("kv-1", 2);
    status.replay.replayed.set(42);
    status.replay.received.set(43);
    let samples = parse(&encode_backup(&status));
    assert_eq!(value(&samples, "ftvm_last_seq_replayed", None), 42.0);
    assert_eq!(
        value(&samples, "ftvm_log_entries_received_total", None),
        43.0
    );
    assert_eq!(value(&samples, "ftvm_generation", None), 2.0);
    assert_eq!(value(&samples, "ftvm_failovers_total", None), 0.0);
    for phase in BACKUP_PHASES {
        let v = value(&samples, "ftvm_backup_phase", Some(("phase", phase)));
        assert_eq!(v, f64::from(u8::from(phase == "replaying")), "{phase}");
    }
    assert!(samples.iter().all(|s| s.labels["role"] == "backup"));
}

fn get(addr: &str, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn the_endpoint_serves_get_metrics_only_and_names_a_busy_address() {
    let e = MetricsEndpoint::bind("--metrics", "127.0.0.1:0").unwrap();
    let busy = e.local_addr().to_string();
    let err = MetricsEndpoint::bind("--metrics", &busy)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("--metrics {busy}: binding the metrics endpoint: ")),
        "{err}"
    );
    let addr = e.serve(Arc::new(|| "# EOF\n".to_string())).unwrap();
    let ok = get(&addr, "/metrics");
    assert!(
        ok.starts_with("HTTP/1.0 200") || ok.starts_with("HTTP/1.1 200"),
        "{ok}"
    );
    assert!(ok.contains(CONTENT_TYPE), "{ok}");
    assert!(ok.ends_with("# EOF\n"), "{ok}");
    let missing = get(&addr, "/");
    assert!(missing.contains(" 404 "), "{missing}");
}

//! End to end: every scenario on real transports, with report, plot and hgrm
//! files, at small counts (timing goals live in the benchmark, not here).

use std::time::Duration;

use ftvm_bench::{ChannelOptions, Role, SCENARIOS};
use ftvm_tuning::{Settings, TransportKind};

fn options(dir: &std::path::Path, transports: Vec<TransportKind>) -> ChannelOptions {
    ChannelOptions {
        transports,
        filter: None,
        entries: 300,
        duration: Duration::from_millis(300),
        payloads: vec![64],
        rate: 5_000,
        stream_bytes: 1 << 20,
        output_every: 4,
        report: Some(dir.join("r.json")),
        hgrm: Some(dir.join("hgrm")),
        plot: Some(dir.join("p.svg")),
        role: Role::Local,
    }
}

#[test]
fn every_scenario_runs_and_the_report_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(Some("latency"), &[]).unwrap();
    let opts = options(dir.path(), vec![TransportKind::Tcp, TransportKind::Uring]);
    let report = ftvm_bench::run_rounds(&opts, &settings, 2)
        .unwrap()
        .unwrap();

    let uring_skipped = report.skipped.iter().any(|s| s.starts_with("uring:"));
    ftvm_testkit::require_or_skip("every_scenario_runs (uring part)", "uring", || {
        match uring_skipped {
            true => Err(format!("{:?}", report.skipped)),
            false => Ok(()),
        }
    });
    let transports: &[&str] = if uring_skipped {
        &["tcp"]
    } else {
        &["tcp", "uring"]
    };
    for t in transports {
        for sc in SCENARIOS {
            let row = report
                .results
                .iter()
                .find(|r| r.scenario == sc.name && r.transport == *t)
                .unwrap_or_else(|| {
                    panic!(
                        "no row for {} on {t}; skipped: {:?}",
                        sc.name, report.skipped
                    )
                });
            match sc.name {
                "floor" | "open-floor" | "output-rule" | "mixed" => {
                    assert!(
                        row.p50_us.unwrap() > 0.0 && row.floor_p50_us.unwrap() > 0.0,
                        "{row:?}"
                    );
                    assert!(
                        row.p50_us <= row.p99_us && row.p99_us <= row.max_us,
                        "{row:?}"
                    );
                }
                "throughput" | "stream-floor" => {
                    assert!(
                        row.entries_per_s.unwrap() > 0.0 && row.floor_mb_per_s.unwrap() > 0.0,
                        "{row:?}"
                    )
                }
                "idle-cpu" => assert!(row.cpu_pct.unwrap() >= 0.0, "{row:?}"),
                other => panic!("scenario {other} not covered by this test"),
            }
        }
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert_eq!(
        json["settings"]["channel"]["ack_every"], 1,
        "latency profile in the report"
    );
    for key in [
        "scenario",
        "transport",
        "payload_bytes",
        "count",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "floor_p50_us",
        "floor_p99_us",
        "ratio_p50",
        "ratio_p99",
        "entries_per_s",
        "mb_per_s",
    ] {
        assert!(
            json["results"][0].get(key).is_some(),
            "result field {key} missing"
        );
    }
    assert!(
        std::fs::read_to_string(dir.path().join("p.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    assert!(dir.path().join("hgrm/output-rule-tcp-64B.hgrm").exists());
}

#[test]
fn a_filter_that_matches_nothing_names_the_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), vec![TransportKind::Tcp]);
    opts.filter = Some("no-such".into());
    let err = ftvm_bench::run(&opts, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such") && err.contains("output-rule"),
        "{err}"
    );
}

//! `--metrics ADDR` as an operator scrapes it: a pair of `ftvm primary` /
//! `ftvm backup` processes under kv load, `curl -s ADDR/metrics` on both
//! sides, and every metric docs/operations.md lists found with a sane value
//! — then the primary is killed and the backup's scrape shows the failover.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ftvm_bench::failover::{Proc, free_port};
use ftvm_testkit::openmetrics::{Sample, parse, value};
use ftvm_vmm::kvm_or_skip;
use nix::sys::signal::Signal;

/// One test at a time: a pair on this host's two cores must not be
/// starved past its peer timeout by the other test's processes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ftvm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftvm"))
}

fn addr(udp: bool) -> String {
    format!("127.0.0.1:{}", free_port(udp).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "ftvm-metrics-cli-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A metric as docs/operations.md lists it: its type and the roles that export it.
#[derive(Debug)]
struct Documented {
    kind: String,
    roles: Vec<String>,
}

/// The rows of the metric tables in docs/operations.md:
/// `| `ftvm_name` | type | roles | meaning |`.
fn documented() -> BTreeMap<String, Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(row) = line.strip_prefix("| `ftvm_") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = format!("ftvm_{}", cells[0].split('`').next().unwrap());
        // A labelled metric is written `ftvm_x{label}`: the name ends at `{`.
        let name = name.split('{').next().unwrap().to_string();
        let roles = match cells[2] {
            "both" => vec!["primary".into(), "backup".into()],
            r => vec![r.to_string()],
        };
        let doc = Documented {
            kind: cells[1].to_string(),
            roles,
        };
        assert!(out.insert(name.clone(), doc).is_none(), "{name} twice");
    }
    assert!(
        out.len() > 20,
        "{} metrics in {}",
        out.len(),
        path.display()
    );
    out
}

/// `curl -s http://ADDR/metrics`, parsed.
fn scrape(addr: &str) -> Vec<Sample> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {addr}: {out:?}");
    parse(&String::from_utf8(out.stdout).unwrap())
}

/// Every metric documented for `role` is in `samples`, every sample is
/// documented, and every sample carries the role and VM labels.
fn check_documented(role: &str, vm: &str, samples: &[Sample]) {
    let docs = documented();
    let family = |sample: &str| -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && docs.get(base).is_some_and(|d| d.kind == "histogram")
            {
                return base.to_string();
            }
        }
        sample.to_string()
    };
    let seen: BTreeSet<String> = samples.iter().map(|s| family(&s.name)).collect();
    for s in samples {
        let d = docs
            .get(&family(&s.name))
            .unwrap_or_else(|| panic!("{} is not in docs/operations.md", s.name));
        assert!(
            d.roles.iter().any(|r| r == role),
            "{} on the {role}",
            s.name
        );
        assert_eq!(
            s.labels.get("role").map(String::as_str),
            Some(role),
            "{s:?}"
        );
        assert_eq!(s.labels.get("vm").map(String::as_str), Some(vm), "{s:?}");
    }
    for (name, d) in &docs {
        if d.roles.iter().any(|r| r == role) {
            assert!(
                seen.contains(name),
                "{name} missing from the {role}'s scrape"
            );
        }
    }
}

/// The histogram's buckets are cumulative, end in `+Inf` = count.
fn check_histogram(samples: &[Sample], name: &str) -> f64 {
    let count = value(samples, &format!("{name}_count"), None);
    let buckets: Vec<(&str, f64)> = samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket"))
        .map(|s| (s.labels["le"].as_str(), s.value))
        .collect();
    assert!(buckets.len() > 5, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&("+Inf", count)), "{buckets:?}");
    count
}

fn one_of(samples: &[Sample], name: &str, label: &str, states: &[&str], current: &str) {
    for s in states {
        let v = value(samples, name, Some((label, s)));
        assert_eq!(
            v,
            f64::from(u8::from(*s == current)),
            "{name}{{{label}={s}}}"
        );
    }
}

const PROTECTION: [&str; 6] = [
    "protected",
    "arbitrating",
    "unprotected",
    "joining",
    "lost",
    "finished",
];
const PHASES: [&str; 7] = [
    "waiting",
    "replaying",
    "draining",
    "arbitrating",
    "live",
    "lost",
    "stopped",
];

#[test]
fn a_running_pair_serves_every_documented_metric() {
    let _serial = serial();
    let test = "a_running_pair_serves_every_documented_metric";
    if !kvm_or_skip(test)
        || !ftvm_testkit::require_or_skip(test, "curl", || ftvm_testkit::command_on_path("curl"))
    {
        return;
    }
    let dir = tmp("pair");
    let arbiter = format!("file:{}", dir.join("arb").display());
    let (listen, service_a, service_b) = (addr(false), addr(true), addr(true));
    let (status_a, status_b) = (addr(false), addr(false));
    let (metrics_a, metrics_b) = (addr(false), addr(false));
    let vm = "metrics-kv";
    // Long enough for a busy host, short enough for a quick failover.
    let timeout = "channel.peer_timeout_ms=1000";
    let b = args(&[
        "--set",
        timeout,
        "backup",
        "--guest",
        "kv",
        "--listen",
        &listen,
        "--service",
        &service_b,
        "--status",
        &status_b,
        "--metrics",
        &metrics_b,
        "--arbiter",
        &arbiter,
        "--wait-secs",
        "20",
    ]);
    let mut backup = Proc::spawn(&ftvm(), "backup", &b, &dir, status_b).unwrap();
    backup
        .wait_status(Duration::from_secs(10), "waiting", |_| true)
        .unwrap();
    // Before a primary: the backup answers, waiting (no VM name yet).
    let waiting = scrape(&metrics_b);
    one_of(&waiting, "ftvm_backup_phase", "phase", &PHASES, "waiting");
    let p = args(&[
        "--set",
        timeout,
        "primary",
        "--guest",
        "kv",
        "--service",
        &service_a,
        "--backup",
        &listen,
        "--status",
        &status_a,
        "--metrics",
        &metrics_a,
        "--arbiter",
        &arbiter,
        "--vm",
        vm,
    ]);
    let mut primary = Proc::spawn(&ftvm(), "primary", &p, &dir, status_a).unwrap();
    primary
        .wait_status(Duration::from_secs(10), "protected", |v| {
            v["protection"] == "protected"
        })
        .unwrap();
    let load = Command::new(ftvm())
        .args(["client", "--server", &service_a, "load", "--ops", "2000"])
        .args(["--clients", "4"])
        .output()
        .unwrap();
    assert!(
        load.status.success(),
        "load: {}\nprimary: {}",
        ftvm_testkit::checked_stderr(&load.stderr),
        primary.stderr()
    );

    let pm = scrape(&metrics_a);
    check_documented("primary", vm, &pm);
    assert!(value(&pm, "ftvm_log_entries_total", None) > 0.0);
    assert!(value(&pm, "ftvm_log_bytes_total", None) > 0.0);
    assert!(value(&pm, "ftvm_channel_entries_sent_total", None) > 0.0);
    assert!(value(&pm, "ftvm_acks_received_total", None) > 0.0);
    assert!(value(&pm, "ftvm_last_seq_acked", None) > 0.0);
    let released = value(&pm, "ftvm_outputs_released_total", None);
    assert!(released >= 2000.0, "{released} outputs released");
    let held = value(&pm, "ftvm_outputs_held", None);
    assert!((0.0..100.0).contains(&held), "{held} held");
    let count = check_histogram(&pm, "ftvm_output_release_latency_seconds");
    assert!(count > 0.0 && count <= released, "{count} of {released}");
    assert!(value(&pm, "ftvm_output_release_latency_seconds_sum", None) > 0.0);
    one_of(
        &pm,
        "ftvm_protection_state",
        "state",
        &PROTECTION,
        "protected",
    );
    assert!(value(&pm, "ftvm_generation", None) >= 1.0);
    assert_eq!(value(&pm, "ftvm_failovers_total", None), 0.0);
    assert_eq!(value(&pm, "ftvm_peer_losses_total", None), 0.0);

    let bm = scrape(&metrics_b);
    check_documented("backup", vm, &bm);
    assert!(value(&bm, "ftvm_last_seq_replayed", None) > 0.0);
    assert!(value(&bm, "ftvm_log_entries_received_total", None) > 0.0);
    assert!(value(&bm, "ftvm_log_received_bytes_total", None) > 0.0);
    assert!(value(&bm, "ftvm_acks_sent_total", None) > 0.0);
    one_of(&bm, "ftvm_backup_phase", "phase", &PHASES, "replaying");
    assert_eq!(
        value(&bm, "ftvm_generation", None),
        value(&pm, "ftvm_generation", None)
    );

    // The primary crashes: the backup's scrape shows it going live.
    primary.kill9().unwrap();
    let mut live = Vec::new();
    ftvm_testkit::wait_until(Duration::from_secs(15), "live", || {
        live = scrape(&metrics_b);
        value(&live, "ftvm_failovers_total", None) == 1.0
    });
    one_of(&live, "ftvm_backup_phase", "phase", &PHASES, "live");
    assert_eq!(value(&live, "ftvm_peer_losses_total", None), 1.0);
    assert_eq!(
        value(&live, "ftvm_generation", None),
        value(&pm, "ftvm_generation", None) + 1.0
    );
    assert!(value(&live, "ftvm_arbitration_seconds", None) >= 0.0);
    backup.signal(Signal::SIGINT).unwrap();
    assert!(
        backup.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        backup.stderr()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A busy `--metrics` address fails at start, naming the flag and the address.
#[test]
fn a_busy_metrics_address_fails_at_start() {
    let _serial = serial();
    if !kvm_or_skip("a_busy_metrics_address_fails_at_start") {
        return;
    }
    let dir = tmp("busy");
    let arbiter = format!("file:{}", dir.join("arb").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let listen = addr(false);
    for role in [
        args(&["backup", "--guest", "kv", "--listen", &listen]),
        args(&["primary", "--guest", "kv", "--backup", &listen]),
    ] {
        let out = Command::new(ftvm())
            .args(&role)
            .args(["--metrics", &busy, "--arbiter", &arbiter])
            .output()
            .unwrap();
        let err = ftvm_testkit::checked_stderr(&out.stderr);
        assert!(!out.status.success(), "{role:?}: {err}");
        assert!(
            err.contains(&format!("--metrics {busy}: binding the metrics endpoint: ")),
            "{role:?}: {err}"
        );
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

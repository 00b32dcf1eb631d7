//! Re-protection as users meet it (docs/reprotect.md): `ftvm primary`
//! started with no backup takes a spare (`ftvm backup --as-spare`) as its
//! backup while it runs — live state transfer, then the log from the join
//! exit over the transfer's connection — and the pair is then fault
//! tolerant: a SIGKILL of the primary under load loses no acknowledged
//! write and applies none twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ftvm_bench::failover::chain::Launcher;
use ftvm_bench::failover::free_port;
use ftvm_kvproto::load::{LoadConfig, OpMix, run_load};
use ftvm_vmm::kvm_or_skip;
use nix::sys::signal::Signal;

fn ftvm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftvm"))
}

fn addr(udp: bool) -> String {
    format!("127.0.0.1:{}", free_port(udp).unwrap())
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `GET /metrics` of the endpoint at `addr`, the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn an_unprotected_primary_takes_a_spare_and_then_survives_its_own_sigkill() {
    let test = "an_unprotected_primary_takes_a_spare_and_then_survives_its_own_sigkill";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let arbiter = format!("file:{}", dir.path().join("arbiter").display());
    let (service_a, service_b) = (addr(true), addr(true));
    let at = Launcher {
        ftvm: ftvm(),
        dir: dir.path().to_path_buf(),
        pre: args(&["--set", "channel.peer_timeout_ms=300"]),
        arbiter: arbiter.clone(),
    };
    let metrics = addr(false);
    // Structured logs (checked at the end) and metrics on the spare; once
    // live it looks for the next spare (none comes: it runs unprotected
    // and says so in its metrics).
    let mut backup = at
        .spare_with(
            "backup",
            Some("kv-rejoin"),
            &addr(false),
            &service_b,
            &["--log-format", "json", "--metrics", &metrics],
        )
        .unwrap();
    // A dead spare first (nothing listens there): skipped, with why; the
    // live one is found at the arbiter (--find-spares).
    let dead = addr(false);
    let mut primary = at
        .unprotected_primary("primary", "kv-rejoin", &service_a, &[&dead], true)
        .unwrap();
    // Writes while unprotected, during the transfer and after the join.
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = LoadConfig::new(service_a.parse().unwrap());
    cfg.fallbacks = vec![service_b.parse().unwrap()];
    cfg.clients = 4;
    cfg.ops = u64::MAX / 4;
    cfg.timeout = Duration::from_millis(100);
    cfg.max_attempts = 300;
    cfg.spin = false;
    cfg.mix = OpMix::AppendOnly;
    cfg.final_check = true;
    cfg.stop = Some(stop.clone());
    let load = std::thread::spawn(move || run_load(&cfg));
    let v = primary
        .wait_status(Duration::from_secs(20), "protected", |v| {
            v["protection"] == "protected"
        })
        .unwrap();
    assert_eq!(v["generation"], 1, "{v}");
    backup
        .wait_status(Duration::from_secs(10), "replaying", |v| {
            v["phase"] == "replaying"
        })
        .unwrap();
    let err = ftvm_testkit::checked_stderr(primary.stderr());
    assert!(
        err.contains(&format!("spare {dead} not joined")) && err.contains("PROTECTED again"),
        "{err}"
    );
    // ACKs flow: outputs wait for the spare-turned-backup.
    primary
        .wait_status(Duration::from_secs(10), "acks", |v| {
            v["last_seq_acked"].as_u64().unwrap_or(0) > 100
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    primary.kill9().unwrap();
    let v = backup
        .wait_status(Duration::from_secs(10), "live", |v| v["phase"] == "live")
        .unwrap();
    assert_eq!(v["generation"], 2, "{v}");
    // Live and recording for a next backup: its status and metrics say so.
    let v = backup
        .wait_status(Duration::from_secs(5), "unprotected", |v| {
            v["protection"] == "unprotected"
        })
        .unwrap();
    assert_eq!(v["live"]["generation"], 2, "{v}");
    let text = scrape(&metrics);
    assert!(
        text.contains(
            r#"ftvm_live_protection_state{role="backup",vm="kv-rejoin",state="unprotected"} 1"#
        ) && text.contains(r#"ftvm_backup_phase{role="backup",vm="kv-rejoin",phase="live"} 1"#),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let r = load.join().unwrap().unwrap();
    println!(
        "{} ops, {} lost, {} twice, {} errors",
        r.ops, r.lost_writes, r.applied_twice, r.errors
    );
    assert!(r.ops > 0);
    assert_eq!((r.lost_writes, r.applied_twice, r.errors), (0, 0, 0));
    backup.signal(Signal::SIGINT).unwrap();
    backup
        .wait_exit(Duration::from_secs(10))
        .expect("the live spare stops on SIGINT");
    let err = ftvm_testkit::checked_stderr(backup.stderr());
    assert!(
        err.contains("took the state of") && err.contains("LIVE at generation 2"),
        "{err}"
    );
    // Every line is a JSON event; the phases came as state events, in order.
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["target"] == "ftvm::state" && e["side"] == "backup")
        .filter_map(|e| e["state"].as_str())
        .collect();
    let at = |p: &str| phases.iter().position(|x| *x == p);
    assert!(
        at("replaying") < at("draining")
            && at("draining") < at("arbitrating")
            && at("arbitrating") < at("live")
            && at("replaying").is_some(),
        "{phases:?}"
    );
    // Once live it records for a next backup: the driver's states follow.
    assert!(
        events.iter().any(|e| e["target"] == "ftvm::state"
            && e["side"] == "primary"
            && e["state"] == "unprotected"
            && e["generation"] == 2),
        "{err}"
    );
}

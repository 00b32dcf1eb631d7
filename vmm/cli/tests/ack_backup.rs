//! `ftvm bench ack-backup`, the ACK-only backup of `bench e2e`: a process
//! of its own takes a real kv primary's channel (tcp and shm), validates and
//! ACKs every entry without replaying, so every output is released; at the
//! primary's goodbye it reports the entries it took and exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ftvm_ft::local::{LocalPair, Protection};
use ftvm_kvproto::load::{LoadConfig, run_load};
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::kvm_or_skip;

fn ack_backup_serves_a_primary(kind: TransportKind, listen: &str) {
    let mut s = Settings::default();
    s.channel.transport = kind;
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("settings.toml");
    std::fs::write(&profile, s.to_toml()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .arg("--profile")
        .arg(&profile)
        .args(["bench", "ack-backup", "--listen", listen, "--guest", "kv"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = out.next().expect("a first line").unwrap();
    let addr = first
        .strip_prefix(ftvm_bench::ackonly::LISTENING)
        .unwrap_or_else(|| panic!("not the listening line: {first}"))
        .to_string();

    let pair = LocalPair::start("kv", &s, Protection::External { connect: addr }).unwrap();
    let mut cfg = LoadConfig::new(pair.service);
    cfg.clients = 4;
    cfg.ops = 2_000;
    cfg.timeout = Duration::from_millis(500);
    cfg.spin = false;
    let report = run_load(&cfg);
    let gate = pair.gate.clone().expect("a protected primary");
    let outcome = pair.stop();
    let released = gate.released.get();
    let report = report.expect("kv load");
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert_eq!(report.ops, 2_000);
    // Every reply left after its ACK: at least one output per operation.
    assert!(released >= 2_000, "released {released}");
    assert_eq!(gate.held(), 0);
    let primary = outcome.primary.expect("primary run");
    assert!(outcome.backup.is_none(), "no replaying backup");

    let status = child.wait().unwrap();
    let rest: Vec<String> = out.map_while(Result::ok).collect();
    assert!(status.success(), "ack-backup: {status}: {rest:?}");
    let summary = rest
        .iter()
        .find(|l| l.starts_with("ack-backup: "))
        .unwrap_or_else(|| panic!("no summary: {rest:?}"));
    let entries: u64 = summary
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(
        entries, primary.stats.entries,
        "the ACK-only backup took every entry the primary logged: {summary}"
    );
}

#[test]
fn ack_backup_takes_and_acks_a_tcp_primary() {
    if kvm_or_skip("ack_backup_takes_and_acks_a_tcp_primary") {
        ack_backup_serves_a_primary(TransportKind::Tcp, "127.0.0.1:0");
    }
}

#[test]
fn ack_backup_takes_and_acks_an_shm_primary() {
    if kvm_or_skip("ack_backup_takes_and_acks_an_shm_primary") {
        let name = format!("ack-test-{}", std::process::id());
        ack_backup_serves_a_primary(TransportKind::Shm, &name);
    }
}

//! Local-disk mode from the command line (issue 9 item 4): `ftvm primary`
//! and `ftvm backup` each with their own copy of the disk
//! (`--disk-mode local`). After a failover (SIGKILL of the primary) the new
//! primary's disk file is byte-identical to the disk of a replay of the same
//! log (`ftvm replay --disk-mode local` onto a fresh copy); a pair whose
//! sides disagree on the mode is refused naming both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftvm_bench::failover::{Proc, free_port};
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

/// 1 MiB: boot counter 41 in sector 0, a pattern elsewhere.
fn original() -> Vec<u8> {
    let mut image: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    image[..8].copy_from_slice(&41u64.to_le_bytes());
    image
}

fn copy(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn after_a_failover_the_local_disk_equals_a_replay_of_the_same_log() {
    if !kvm_or_skip("after_a_failover_the_local_disk_equals_a_replay_of_the_same_log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let orig = original();
    let (primary_disk, backup_disk, replay_disk) = (
        copy(d, "primary.img", &orig),
        copy(d, "backup.img", &orig),
        copy(d, "replay.img", &orig),
    );
    let log = d.join("primary.log").display().to_string();
    let arbiter = format!("file:{}", d.join("arb").display());
    let (listen, sa, sb) = (addr(false), addr(false), addr(false));
    let b = args(&[
        "--set",
        "channel.peer_timeout_ms=300",
        "backup",
        "--guest",
        "echo",
        "--arg",
        "1",
        "--listen",
        &listen,
        "--service",
        &addr(true),
        "--status",
        &sb,
        "--arbiter",
        &arbiter,
        "--wait-secs",
        "20",
        "--disk",
        &backup_disk,
        "--disk-mode",
        "local",
    ]);
    let mut backup = Proc::spawn(&ftvm(), "backup", &b, d, sb).unwrap();
    backup
        .wait_status(Duration::from_secs(10), "waiting", |_| true)
        .unwrap();
    let p = args(&[
        "--set",
        "channel.peer_timeout_ms=300",
        "primary",
        "--guest",
        "echo",
        "--arg",
        "1",
        "--service",
        &addr(true),
        "--backup",
        &listen,
        "--status",
        &sa,
        "--arbiter",
        &arbiter,
        "--disk",
        &primary_disk,
        "--disk-mode",
        "local",
        "--record-log",
        &log,
    ]);
    let mut primary = Proc::spawn(&ftvm(), "primary", &p, d, sa).unwrap();
    primary
        .wait_status(Duration::from_secs(10), "protected", |v| {
            v["protection"] == "protected"
        })
        .unwrap();
    // Both sides ran the guest's self-test on their own copy: the backup
    // wrote its file while replaying.
    wait_until(
        "the backup's copy to equal the primary's",
        Duration::from_secs(20),
        || {
            let (a, b) = (
                std::fs::read(&primary_disk).unwrap(),
                std::fs::read(&backup_disk).unwrap(),
            );
            a[..8] == 42u64.to_le_bytes() && a == b
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    primary.kill9().unwrap();
    backup
        .wait_status(Duration::from_secs(10), "live", |v| v["phase"] == "live")
        .unwrap();
    backup.signal(Signal::SIGTERM).unwrap();
    assert!(
        backup.wait_exit(Duration::from_secs(10)).is_some(),
        "the backup stopped on SIGTERM: {}",
        backup.stderr()
    );
    println!("backup stderr:\n{}", backup.stderr());

    // A replay of the primary's log onto a fresh copy of the original disk.
    let out = std::process::Command::new(ftvm())
        .args(args(&[
            "replay",
            "--guest",
            "echo",
            "--arg",
            "1",
            "--log",
            &log,
            "--disk",
            &replay_disk,
            "--disk-mode",
            "local",
        ]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ftvm replay: {stderr}");
    println!("replay: {stderr}{}", String::from_utf8_lossy(&out.stdout));
    let live = std::fs::read(&backup_disk).unwrap();
    assert_eq!(&live[..8], &42u64.to_le_bytes());
    assert!(
        live == std::fs::read(&replay_disk).unwrap(),
        "the new primary's disk is byte-identical to the replay's"
    );
    assert_ne!(live, orig);
}

/// A backup in local mode and a primary in shared mode: refused at the
/// handshake, naming both modes.
#[test]
fn a_pair_that_disagrees_on_the_disk_mode_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let orig = original();
    let (pd, bd) = (copy(d, "p.img", &orig), copy(d, "b.img", &orig));
    let listen = addr(false);
    let b = args(&[
        "backup",
        "--guest",
        "kv",
        "--listen",
        &listen,
        "--wait-secs",
        "5",
        "--disk",
        &bd,
        "--disk-mode",
        "local",
    ]);
    let mut backup = Proc::spawn(&ftvm(), "backup", &b, d, String::new()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let arbiter = format!("file:{}", d.join("arb").display());
    let out = std::process::Command::new(ftvm())
        .args(args(&[
            "primary",
            "--guest",
            "kv",
            "--service",
            &addr(true),
            "--backup",
            &listen,
            "--arbiter",
            &arbiter,
            "--disk",
            &pd,
        ]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    backup.wait_exit(Duration::from_secs(5));
    let p = String::from_utf8_lossy(&out.stderr);
    assert!(
        p.contains(r#"vmm.disk_mode (peer "local", ours "shared")"#),
        "{p}"
    );
    let b = backup.stderr();
    assert!(
        b.contains(r#"vmm.disk_mode (peer "shared", ours "local")"#),
        "{b}"
    );
}

/// A spare waiting with `--disk-mode local` and its own file.
fn local_spare(dir: &Path, name: &'static str, arbiter: &str, listen: &str, disk: &str) -> Proc {
    let status = "127.0.0.1:0".to_string(); // learnt by Proc::spawn
    let a = args(&[
        "--set",
        "channel.peer_timeout_ms=300",
        "backup",
        "--as-spare",
        "--guest",
        "echo",
        "--arg",
        "1",
        "--listen",
        listen,
        "--service",
        &addr(true),
        "--status",
        &status,
        "--arbiter",
        arbiter,
        "--wait-secs",
        "30",
        "--disk",
        disk,
        "--disk-mode",
        "local",
    ]);
    let mut p = Proc::spawn(&ftvm(), name, &a, dir, status).unwrap();
    p.wait_status(Duration::from_secs(10), "waiting", |v| {
        v["phase"] == "waiting"
    })
    .unwrap();
    p
}

/// Re-protection in local mode: the primary's disk is copied into the
/// spare's file by the transfer (a spare whose file has another size
/// refuses it by name and the next spare is taken); after the join the
/// files are equal, and after a SIGKILL of the primary the new primary's
/// file still equals the old one's.
#[test]
fn a_spare_receives_the_local_disk_and_goes_live_with_it() {
    if !kvm_or_skip("a_spare_receives_the_local_disk_and_goes_live_with_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let orig = original();
    let primary_disk = copy(d, "primary.img", &orig);
    let small = copy(d, "small.img", &orig[..orig.len() / 2]);
    let spare_disk = copy(d, "spare.img", &vec![0xee; orig.len()]);
    let arbiter = format!("file:{}", d.join("arb").display());
    let (bad_at, good_at) = (addr(false), addr(false));
    let mut bad = local_spare(d, "bad-spare", &arbiter, &bad_at, &small);
    let mut spare = local_spare(d, "spare", &arbiter, &good_at, &spare_disk);
    let status = "127.0.0.1:0".to_string(); // learnt by Proc::spawn
    let spares = format!("{bad_at},{good_at}");
    let a = args(&[
        "--set",
        "channel.peer_timeout_ms=300",
        "primary",
        "--guest",
        "echo",
        "--arg",
        "1",
        "--service",
        &addr(true),
        "--spare",
        &spares,
        "--status",
        &status,
        "--arbiter",
        &arbiter,
        "--disk",
        &primary_disk,
        "--disk-mode",
        "local",
    ]);
    let mut primary = Proc::spawn(&ftvm(), "primary", &a, d, status).unwrap();
    primary
        .wait_status(Duration::from_secs(20), "protected", |v| {
            v["protection"] == "protected"
        })
        .unwrap();
    let b = bad.stderr();
    assert!(
        b.contains("disk size mismatch: the sender's disk has 2048 sectors")
            && b.contains("small.img has 1024"),
        "{b}"
    );
    let p = primary.stderr();
    assert!(p.contains(&format!("spare {bad_at} not joined")), "{p}");
    // The transfer copied the disk; the spare replays any later write.
    wait_until(
        "the spare's copy to equal the primary's",
        Duration::from_secs(10),
        || {
            let a = std::fs::read(&primary_disk).unwrap();
            a[..8] == 42u64.to_le_bytes() && std::fs::read(&spare_disk).unwrap() == a
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    primary.kill9().unwrap();
    spare
        .wait_status(Duration::from_secs(10), "live", |v| v["phase"] == "live")
        .unwrap();
    spare.signal(Signal::SIGTERM).unwrap();
    assert!(spare.wait_exit(Duration::from_secs(10)).is_some());
    assert!(std::fs::read(&spare_disk).unwrap() == std::fs::read(&primary_disk).unwrap());
    bad.signal(Signal::SIGTERM).unwrap();
    bad.wait_exit(Duration::from_secs(10));
}

//! Failover as users meet it: `ftvm primary` and `ftvm backup` as separate
//! processes, faults injected from outside (signals, a proxy on the channel,
//! a stopped arbiter), clients that know both service addresses, and every
//! acknowledged write checked afterwards.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ftvm_bench::failover::{FailoverOptions, FaultKind, Proc, free_port};
use ftvm_kvproto::load::{LoadConfig, OpMix, run_load};
use ftvm_testkit::proxy::Proxy;
use ftvm_vmm::kvm_or_skip;
use nix::sys::signal::Signal;

/// These tests time failures against `peer_timeout_ms`: one at a time, so
/// that two pairs do not starve each other of this host's two cores.
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
        "ftvm-failover-cli-{name}-{}-{}",
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

/// A pair of processes on loopback: the backup listens on `listen`, the
/// primary dials `dial` (the same, or a proxy in front of it).
struct Pair {
    primary: Proc,
    backup: Proc,
    service_a: String,
    service_b: String,
    dir: PathBuf,
}

struct PairSpec<'a> {
    guest: &'a str,
    arg: &'a str,
    arbiter: String,
    disk: Option<&'a Path>,
    /// Maps the backup's listen address to the one the primary dials.
    dial: Box<dyn FnOnce(&str) -> String + 'a>,
    peer_timeout_ms: u64,
}

impl PairSpec<'_> {
    fn kv(arbiter: String) -> PairSpec<'static> {
        PairSpec {
            guest: "kv",
            arg: "0",
            arbiter,
            disk: None,
            dial: Box::new(str::to_string),
            peer_timeout_ms: 300,
        }
    }
}

fn start(spec: PairSpec<'_>, dir: &Path) -> Pair {
    let (listen, service_a, service_b) = (addr(false), addr(true), addr(true));
    let (sa, sb) = (addr(false), addr(false));
    let timeout = format!("channel.peer_timeout_ms={}", spec.peer_timeout_ms);
    let disk = spec.disk.map(|d| d.display().to_string());
    let mut b = args(&[
        "--set",
        &timeout,
        "backup",
        "--guest",
        spec.guest,
        "--arg",
        spec.arg,
        "--listen",
        &listen,
        "--service",
        &service_b,
        "--status",
        &sb,
        "--arbiter",
        &spec.arbiter,
        "--wait-secs",
        "20",
    ]);
    if let Some(d) = &disk {
        b.extend(args(&["--disk", d]));
    }
    let mut backup = Proc::spawn(&ftvm(), "backup", &b, dir, sb).unwrap();
    backup
        .wait_status(Duration::from_secs(10), "waiting", |_| true)
        .unwrap();
    let dial = (spec.dial)(&listen);
    let mut p = args(&[
        "--set",
        &timeout,
        "primary",
        "--guest",
        spec.guest,
        "--arg",
        spec.arg,
        "--service",
        &service_a,
        "--backup",
        &dial,
        "--status",
        &sa,
        "--arbiter",
        &spec.arbiter,
    ]);
    if let Some(d) = &disk {
        p.extend(args(&["--disk", d]));
    }
    let mut primary = Proc::spawn(&ftvm(), "primary", &p, dir, sa).unwrap();
    primary
        .wait_status(Duration::from_secs(10), "protected", |v| {
            v["protection"] == "protected"
        })
        .unwrap();
    backup
        .wait_status(Duration::from_secs(10), "replaying", |v| {
            v["phase"] == "replaying"
        })
        .unwrap();
    Pair {
        primary,
        backup,
        service_a,
        service_b,
        dir: dir.to_path_buf(),
    }
}

fn load_cfg(pair: &Pair, stop: &Arc<AtomicBool>) -> LoadConfig {
    let mut cfg = LoadConfig::new(pair.service_a.parse().unwrap());
    cfg.fallbacks = vec![pair.service_b.parse().unwrap()];
    cfg.clients = 4;
    cfg.ops = u64::MAX / 4;
    cfg.timeout = Duration::from_millis(100);
    cfg.max_attempts = 300;
    cfg.spin = false;
    cfg.mix = OpMix::AppendOnly;
    cfg.final_check = true;
    cfg.stop = Some(stop.clone());
    cfg
}

/// ≥ 20 trials of every fault kind in CI, each with 0 lost and 0 doubly
/// applied acknowledged writes, never two sides serving, and a live service
/// afterwards (the final read-back answers).
#[test]
fn every_fault_keeps_every_acknowledged_write() {
    let _serial = serial();
    if !kvm_or_skip("every_fault_keeps_every_acknowledged_write") {
        return;
    }
    let dir = tmp("campaign");
    let opts = FailoverOptions {
        ftvm: ftvm(),
        trials: vec![
            (FaultKind::KillPrimary, 6),
            (FaultKind::KillBackup, 5),
            (FaultKind::StopPrimary, 3),
            (FaultKind::StopBackup, 3),
            (FaultKind::Partition, 4),
        ],
        transport: "tcp".into(),
        peer_timeout_ms: 250,
        retry: Duration::from_millis(100),
        clients: 4,
        arbiter: None,
        work_dir: dir.clone(),
        seed: 7,
        profile: None,
        verbose: true,
    };
    let report = ftvm_bench::failover::run(&opts).unwrap();
    println!("{}", report.table());
    assert!(report.clean(), "{}", report.table());
    let trials: usize = report.summary.iter().map(|s| s.trials).sum();
    assert!(trials >= 20, "{trials} trials");
    for t in &report.trials {
        assert!(t.ops > 0, "{t:?}");
        let expected = match t.kind {
            FaultKind::KillPrimary | FaultKind::StopPrimary => Some("backup"),
            FaultKind::KillBackup | FaultKind::StopBackup => Some("primary"),
            FaultKind::Partition => None,
        };
        if let Some(w) = expected {
            assert_eq!(t.winner, w, "{t:?}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An idle backup stopped with SIGINT stops at once, printing its position
/// and digest, and tells the primary, which races for the next generation,
/// wins and goes unprotected — within a moment, not at the end of its run.
#[test]
fn sigint_of_an_idle_backup_unprotects_the_primary_at_once() {
    let _serial = serial();
    if !kvm_or_skip("sigint_of_an_idle_backup_unprotects_the_primary_at_once") {
        return;
    }
    let dir = tmp("sigint");
    let arbiter = format!("file:{}", dir.join("arb").display());
    let mut pair = start(PairSpec::kv(arbiter), &dir);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    pair.backup.signal(Signal::SIGINT).unwrap();
    let status = pair
        .backup
        .wait_exit(Duration::from_secs(2))
        .expect("the idle backup stops promptly on SIGINT");
    let took = t.elapsed();
    assert!(
        status.success(),
        "{}",
        ftvm_testkit::checked_stderr(pair.backup.stderr())
    );
    let err = ftvm_testkit::checked_stderr(pair.backup.stderr());
    assert!(err.contains("stopped on request"), "{err}");
    let v = pair
        .primary
        .wait_status(Duration::from_secs(2), "unprotected", |v| {
            v["protection"] == "unprotected"
        })
        .unwrap();
    let unprotected_after = t.elapsed();
    let note = v["note"].as_str().unwrap_or_default();
    assert!(note.contains("won generation 2"), "{note}");
    let err = ftvm_testkit::checked_stderr(pair.primary.stderr());
    assert!(err.contains("stopped replaying (stop requested)"), "{err}");
    println!("backup stopped in {took:?}, primary unprotected {unprotected_after:?} after SIGINT");
    assert!(unprotected_after < Duration::from_secs(1));
    // It serves on, alone.
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = load_cfg(&pair, &stop);
    cfg.ops = 500;
    let r = run_load(&cfg).unwrap();
    assert_eq!((r.lost_writes, r.applied_twice, r.errors), (0, 0, 0));
    let _ = std::fs::remove_dir_all(dir);
}

/// Rewrites one packet of the channel and re-seals its frame (valid CRC),
/// so the backup replays a datagram the primary never received.
fn tampering_proxy(backup: &str, after_offset: u64) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let done = Arc::new(AtomicBool::new(false));
    let tampered = done.clone();
    let backup = backup.to_string();
    std::thread::spawn(move || {
        let (mut p, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(&backup).unwrap();
        let (mut p2, mut b2) = (p.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut b2, &mut p2));
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut offset = 0u64;
        loop {
            let n = match p.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            // Forward whole frames, tampering with the first packet past the offset.
            while let Ok(Some(len)) = ftvm_wire::peek_frame_len(&buf) {
                if buf.len() < len {
                    break;
                }
                let mut frame: Vec<u8> = buf.drain(..len).collect();
                if !tampered.load(Ordering::Relaxed)
                    && offset >= after_offset
                    && let Ok((f, _)) = ftvm_wire::decode(&frame)
                    && f.header.kind == ftvm_wire::Kind::PacketRx
                {
                    let h = f.header;
                    // The first packet's datagram: input prefix, batch header
                    // (8), packet header (8 + 24 peer), then the kv request,
                    // whose key starts at 32: flip a letter of the key.
                    let at =
                        ftvm_wire::HEADER_LEN + ftvm_vmm::payload::INPUT_PREFIX_LEN + 8 + 32 + 33;
                    if at < ftvm_wire::HEADER_LEN + h.payload_len as usize {
                        frame[at] ^= 0x20;
                        ftvm_wire::seal(&mut frame, &h).unwrap();
                        tampered.store(true, Ordering::Relaxed);
                    }
                }
                offset += len as u64;
                if b.write_all(&frame).is_err() {
                    return;
                }
            }
        }
    });
    (addr, done)
}

/// A backup that diverges stops replaying and says so: the primary races
/// for the next generation at once, wins, and serves on unprotected.
#[test]
fn a_diverging_backup_unprotects_the_primary_at_once() {
    let _serial = serial();
    if !kvm_or_skip("a_diverging_backup_unprotects_the_primary_at_once") {
        return;
    }
    let dir = tmp("diverge");
    let arbiter = format!("file:{}", dir.join("arb").display());
    let tampered = Arc::new(std::sync::Mutex::new(None));
    let t2 = tampered.clone();
    let mut spec = PairSpec::kv(arbiter);
    spec.dial = Box::new(move |listen: &str| {
        let (a, flag) = tampering_proxy(listen, 4096);
        *t2.lock().unwrap() = Some(flag);
        a
    });
    let mut pair = start(spec, &dir);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = load_cfg(&pair, &stop);
    let load = std::thread::spawn(move || run_load(&cfg));
    let exit = pair
        .backup
        .wait_exit(Duration::from_secs(20))
        .expect("the tampered backup stops");
    let t = Instant::now();
    assert!(!exit.success());
    let err = ftvm_testkit::checked_stderr(pair.backup.stderr());
    assert!(err.contains("divergence at exit"), "{err}");
    let v = pair
        .primary
        .wait_status(Duration::from_secs(2), "unprotected", |v| {
            v["protection"] == "unprotected"
        })
        .unwrap();
    println!(
        "primary unprotected {:?} after the backup exited",
        t.elapsed()
    );
    assert!(
        v["note"]
            .as_str()
            .unwrap_or_default()
            .contains("won generation 2")
    );
    let perr = ftvm_testkit::checked_stderr(pair.primary.stderr());
    assert!(perr.contains("stopped replaying (diverged)"), "{perr}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let r = load.join().unwrap().unwrap();
    assert!(
        tampered
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .load(Ordering::Relaxed)
    );
    // The primary's own state never diverged: every acknowledged write is there.
    assert_eq!(
        (r.lost_writes, r.applied_twice, r.errors),
        (0, 0, 0),
        "{:?}",
        r.first_errors
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// While the arbiter cannot be reached nobody goes live and nothing is
/// served; once it is back, the backup wins and serves, nothing lost.
#[test]
fn a_backup_goes_live_only_once_the_arbiter_is_back() {
    let _serial = serial();
    if !kvm_or_skip("a_backup_goes_live_only_once_the_arbiter_is_back") {
        return;
    }
    if !ftvm_testkit::require_or_skip(
        "a_backup_goes_live_only_once_the_arbiter_is_back",
        "etcd",
        || ftvm_testkit::command_on_path("etcd"),
    ) {
        return;
    }
    let dir = tmp("etcd");
    let mut etcd = ftvm_testkit::etcd::Etcd::start().unwrap();
    let mut pair = start(PairSpec::kv(etcd.url()), &dir);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = load_cfg(&pair, &stop);
    let load = std::thread::spawn(move || run_load(&cfg));
    std::thread::sleep(Duration::from_millis(300));
    etcd.stop();
    pair.primary.kill9().unwrap();
    let down_at = ftvm_ft::golive::unix_us();
    pair.backup
        .wait_status(Duration::from_secs(5), "arbitrating", |v| {
            v["phase"] == "arbitrating"
        })
        .unwrap();
    // A second with the arbiter down: still arbitrating, never live.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        let v = pair.backup.query().expect("backup status");
        assert_eq!(v["phase"], "arbitrating", "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ftvm_testkit::checked_stderr(pair.backup.stderr()).contains("arbiter unreachable"));
    // Taken before the restart: the backup may win before `restart`
    // returns (it waits for etcd to answer, as the backup does).
    let up_at = ftvm_ft::golive::unix_us();
    etcd.restart().unwrap();
    let v = pair
        .backup
        .wait_status(Duration::from_secs(5), "live", |v| v["phase"] == "live")
        .unwrap();
    let live_us = v["failover"]["live_us"].as_u64().unwrap();
    assert!(live_us > up_at, "went live only after the arbiter was back");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let r = load.join().unwrap().unwrap();
    assert_eq!((r.lost_writes, r.applied_twice, r.errors), (0, 0, 0));
    // Nothing was served between the primary's death and the arbiter's return.
    let stall = r
        .stall_within(down_at, up_at)
        .expect("a stall while the arbiter was down");
    assert!(
        stall.0 <= down_at + 50_000 && stall.1 >= up_at,
        "{stall:?} {down_at} {up_at}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Shared disk: writes the primary never performed (their ACKs held back)
/// are re-issued by the backup at go-live.
#[test]
fn the_backup_reissues_the_shared_disk_writes_the_primary_never_did() {
    let _serial = serial();
    if !kvm_or_skip("the_backup_reissues_the_shared_disk_writes_the_primary_never_did") {
        return;
    }
    let dir = tmp("disk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let arbiter = format!("file:{}", dir.join("arb").display());
    let proxy = Arc::new(std::sync::Mutex::new(None::<Proxy>));
    let p2 = proxy.clone();
    let spec = PairSpec {
        guest: "echo",
        arg: "1",
        arbiter,
        disk: Some(&disk),
        dial: Box::new(move |listen: &str| {
            let p = Proxy::start(listen);
            // No ACK reaches the primary: its writes stay held.
            p.acks.hold_after_hello.store(true, Ordering::SeqCst);
            let a = p.addr.clone();
            *p2.lock().unwrap() = Some(p);
            a
        }),
        peer_timeout_ms: 5_000,
    };
    let mut pair = start(spec, &dir);
    // The backup replays the boot-time writes (it receives the log).
    pair.backup
        .wait_status(Duration::from_secs(10), "replayed the writes", |v| {
            v["last_seq_replayed"].as_u64().unwrap_or(0) > 10
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = std::fs::read(&disk).unwrap();
    assert!(
        before.iter().all(|b| *b == 0),
        "the primary wrote without an ACK"
    );
    pair.primary.kill9().unwrap();
    let v = pair
        .backup
        .wait_status(Duration::from_secs(10), "live", |v| v["phase"] == "live")
        .unwrap();
    let reissued = v["failover"]["reissued_writes"].as_u64().unwrap();
    assert!(reissued >= 2, "{v}");
    let after = std::fs::read(&disk).unwrap();
    // The echo guest's self-test: boot counter 1 in sector 0, then patterns.
    assert_eq!(u64::from_le_bytes(after[..8].try_into().unwrap()), 1);
    assert!(after[512..512 + 8 * 4096].iter().any(|b| *b != 0));
    drop(proxy);
    let _ = std::fs::remove_dir_all(&pair.dir);
}

/// A mismatched pair is refused at the handshake, naming what differs.
#[test]
fn a_mismatched_pair_is_refused_naming_what_differs() {
    let _serial = serial();
    let dir = tmp("mismatch");
    let listen = addr(false);
    let run = |extra_b: &[&str], extra_p: &[&str]| -> (String, String) {
        let mut b = args(&[
            "backup",
            "--guest",
            "kv",
            "--listen",
            &listen,
            "--wait-secs",
            "5",
        ]);
        b.extend(args(extra_b));
        let backup = Proc::spawn(&ftvm(), "backup", &b, &dir, String::new()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut p = args(&[
            "primary",
            "--guest",
            "kv",
            "--service",
            &addr(true),
            "--backup",
            &listen,
            "--arbiter",
        ]);
        p.push(format!("file:{}", dir.join("arb").display()));
        p.extend(args(extra_p));
        let out = std::process::Command::new(ftvm())
            .args(&p)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let mut backup = backup;
        backup.wait_exit(Duration::from_secs(5));
        (
            ftvm_testkit::checked_stderr(&out.stderr),
            ftvm_testkit::checked_stderr(backup.stderr()),
        )
    };
    let (p, b) = run(&["--arg", "1"], &[]);
    assert!(
        p.contains("guest argument differs: peer --arg 1, ours --arg 0"),
        "{p}"
    );
    assert!(
        b.contains("guest argument differs: peer --arg 0, ours --arg 1"),
        "{b}"
    );
    let (p, _) = run(&["--set", "vmm.mem_mib=128"], &[]);
    assert!(
        p.contains("settings both ends must share differ: vmm.mem_mib (peer 128, ours 64)"),
        "{p}"
    );
    let (p, _) = run(&["--vm", "other"], &["--vm", "mine"]);
    assert!(
        p.contains("VM name differs: peer protects \"other\", ours \"mine\""),
        "{p}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

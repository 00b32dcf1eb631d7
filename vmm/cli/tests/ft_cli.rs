//! The fault-tolerant pair as users run it: `ftvm backup` and
//! `ftvm primary --backup` as separate processes, a kv client load, and the
//! two `state digest` lines compared.

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_kvproto::load::{LoadConfig, run_load};
use ftvm_vmm::kvm_or_skip;

fn ftvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
}

fn free_tcp() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn free_udp() -> String {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().to_string()
}

/// Waits for `child` to exit (killing it after `limit`); returns (stdout, stderr, success).
fn finish(mut child: Child, limit: Duration) -> (String, String, bool) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (out, ftvm_testkit::checked_stderr(err), status.success())
}

fn digest_line(out: &str) -> Option<&str> {
    out.lines().find(|l| l.starts_with("state digest "))
}

fn pair_of_processes(transport: &str, listen: &str) {
    let service = free_udp();
    let status = free_tcp();
    let backup = ftvm()
        .args([
            "backup",
            "--guest",
            "kv",
            "--listen",
            listen,
            "--transport",
            transport,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let primary = ftvm()
        .args([
            "primary",
            "--guest",
            "kv",
            "--service",
            &service,
            "--backup",
            listen,
            "--transport",
            transport,
        ])
        .args(["--status", &status])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the service to answer, then drive 10,000 operations.
    let mut cfg = LoadConfig::new(service.parse().unwrap());
    cfg.clients = 16;
    cfg.ops = 10_000;
    cfg.keys = 8;
    cfg.timeout = Duration::from_millis(500);
    let report = run_load(&cfg);
    // The status endpoint answers while the pair runs.
    let st = Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args(["status", &status])
        .output()
        .unwrap();
    let st_out = String::from_utf8_lossy(&st.stdout).to_string();
    // SIGINT: the primary stops at an exit boundary with a final checkpoint.
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(primary.id() as libc::pid_t, libc::SIGINT) };
    let (p_out, p_err, p_ok) = finish(primary, Duration::from_secs(30));
    let (b_out, b_err, b_ok) = finish(backup, Duration::from_secs(30));
    let report = report.unwrap_or_else(|e| panic!("load: {e}\nprimary: {p_err}\nbackup: {b_err}"));
    assert_eq!(report.ops, 10_000);
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    assert!(p_ok, "primary failed:\n{p_err}");
    assert!(b_ok, "backup failed:\n{b_err}");
    assert!(
        st.status.success() && st_out.contains("\"role\": \"primary\""),
        "status: {st_out}"
    );
    let (p, b) = (digest_line(&p_out), digest_line(&b_out));
    assert!(p.is_some(), "no digest from the primary:\n{p_out}\n{p_err}");
    assert_eq!(
        p, b,
        "backup's final state differs\nprimary: {p_err}\nbackup: {b_err}"
    );
}

#[test]
fn tcp_pair_of_processes_ends_in_the_same_state() {
    if kvm_or_skip("tcp_pair_of_processes_ends_in_the_same_state") {
        pair_of_processes("tcp", &free_tcp());
    }
}

#[test]
fn shm_pair_of_processes_ends_in_the_same_state() {
    if kvm_or_skip("shm_pair_of_processes_ends_in_the_same_state") {
        pair_of_processes("shm", &format!("ft-cli-{}", std::process::id()));
    }
}

/// A backup built from another guest is refused at the handshake, naming the image.
#[test]
fn backup_with_another_guest_is_refused() {
    if !kvm_or_skip("backup_with_another_guest_is_refused") {
        return;
    }
    let listen = free_tcp();
    let backup = ftvm()
        .args([
            "backup",
            "--guest",
            "echo",
            "--listen",
            &listen,
            "--wait-secs",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = ftvm()
        .args([
            "primary",
            "--guest",
            "kv",
            "--service",
            &free_udp(),
            "--backup",
            &listen,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(
        err.contains("guest differs: peer runs \"echo\", ours \"kv\""),
        "{err}"
    );
    let (_, b_err, b_ok) = finish(backup, Duration::from_secs(10));
    assert!(
        !b_ok && b_err.contains("guest differs: peer runs \"kv\", ours \"echo\""),
        "{b_err}"
    );
}

//! The dns guest as users run it: `ftvm primary --guest dns` alone, and as
//! a protected pair of processes (`ftvm backup` + `ftvm primary --backup`)
//! over tcp and shm, driven by the real `dig`, `nsupdate` and `dnsperf`
//! with no wrapper; the pair's two `state digest` lines must agree.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ftvm_dnsproto::dnsperf::{self, DnsperfConfig, query_file, update_file};
use ftvm_dnsproto::tools::{dig, nsupdate, soa_serial};
use ftvm_testkit::{command_on_path, require_or_skip};
use ftvm_vmm::kvm_or_skip;

/// Synthetic hosts in the zone (`--arg`).
const HOSTS: u32 = 500;

fn ftvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
}

fn free_tcp() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// KVM, dig + nsupdate and dnsperf, or a SKIP line.
fn tools_or_skip(test: &str) -> bool {
    kvm_or_skip(test)
        && require_or_skip(test, "dnsutils", || {
            command_on_path("dig").and_then(|_| command_on_path("nsupdate"))
        })
        && require_or_skip(test, "dnsperf", || command_on_path("dnsperf"))
}

/// SIGINT, then wait (killing after `limit`); (stdout, stderr, success).
fn interrupt_and_finish(
    mut child: Child,
    limit: Duration,
    interrupt: bool,
) -> (String, String, bool) {
    if interrupt {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    }
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

/// Waits until dig gets the built-in zone's www answer (the VM has booted).
fn wait_serving(service: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if dig(service, 1, &["www.example.test", "+short"]).unwrap() == "192.0.2.10\n" {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the primary exited before serving"
        );
        assert!(
            Instant::now() < deadline,
            "no answer from {service} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a client session of dig, nsupdate and dnsperf saw.
struct Session {
    queries: dnsperf::DnsperfReport,
    updates: dnsperf::DnsperfReport,
}

/// dig, nsupdate (add, a failing prerequisite, delete), dnsperf queries and
/// updates; checks every answer and the serial (one bump per update).
fn exercise(service: SocketAddr) -> Session {
    let serial = || soa_serial(&dig(service, 5, &["example.test", "SOA", "+short"]).unwrap());
    assert_eq!(serial(), Some(1));
    assert_eq!(
        dig(service, 5, &["h7.example.test", "+short"]).unwrap(),
        "10.0.0.7\n"
    );
    let nx = dig(service, 5, &["nope.example.test"]).unwrap();
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("flags: qr aa rd;"),
        "{nx}"
    );

    let n = nsupdate(
        service,
        "update add cli.example.test 60 A 198.51.100.77\nsend",
    )
    .unwrap();
    assert_eq!(n.code, 0, "nsupdate add: {}", n.stderr);
    assert_eq!(
        dig(service, 5, &["cli.example.test", "+short"]).unwrap(),
        "198.51.100.77\n"
    );
    let n = nsupdate(
        service,
        "prereq nxdomain cli.example.test\nupdate add cli.example.test 60 A 198.51.100.78\nsend",
    )
    .unwrap();
    assert_eq!(n.code, 2, "{}", n.stderr);
    assert!(n.stderr.contains("update failed: YXDOMAIN"), "{}", n.stderr);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("queries.txt");
    std::fs::write(&data, query_file("example.test.", HOSTS)).unwrap();
    let mut cfg = DnsperfConfig::new(service, data);
    cfg.max_runs = Some(2);
    cfg.clients = 4;
    cfg.outstanding = 32;
    let queries = dnsperf::run(&cfg).unwrap();
    assert_eq!(queries.sent, 2 * u64::from(HOSTS + HOSTS / 8 * 5));
    assert_eq!(queries.lost, 0);
    assert_eq!(queries.rcode("NXDOMAIN"), 2 * u64::from(HOSTS / 8));

    let data = dir.path().join("updates.txt");
    std::fs::write(&data, update_file("example.test.", 100)).unwrap();
    let mut cfg = DnsperfConfig::new(service, data);
    cfg.updates = true;
    cfg.max_runs = Some(1);
    let updates = dnsperf::run(&cfg).unwrap();
    assert_eq!(
        (updates.sent, updates.lost, updates.rcode("NOERROR")),
        (100, 0, 100)
    );

    let n = nsupdate(service, "update delete cli.example.test A\nsend").unwrap();
    assert_eq!(n.code, 0, "nsupdate delete: {}", n.stderr);
    let gone = dig(service, 5, &["cli.example.test"]).unwrap();
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
    assert_eq!(serial(), Some(1 + 1 + 100 + 1));
    println!(
        "dnsperf: {:.0} queries/s (p50 {:.0} us, p99 {:.0} us), {:.0} updates/s (p50 {:.0} us)",
        queries.qps,
        queries.latency_us(0.5),
        queries.latency_us(0.99),
        updates.qps,
        updates.latency_us(0.5)
    );
    Session { queries, updates }
}

#[test]
fn dig_nsupdate_and_dnsperf_work_against_ftvm_primary_guest_dns() {
    let test = "dig_nsupdate_and_dnsperf_work_against_ftvm_primary_guest_dns";
    if !tools_or_skip(test) {
        return;
    }
    let service = free_udp();
    let mut primary = ftvm()
        .args(["primary", "--guest", "dns", "--arg", &HOSTS.to_string()])
        .args(["--service", &service.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_serving(service, &mut primary);
    let s = exercise(service);
    assert!(s.queries.qps > 0.0 && s.updates.qps > 0.0);
    let (out, err, ok) = interrupt_and_finish(primary, Duration::from_secs(30), true);
    assert!(ok, "primary failed:\n{err}");
    assert!(digest_line(&out).is_some(), "{out}");
}

fn pair_of_processes(transport: &str, listen: &str) {
    let service = free_udp();
    let arg = HOSTS.to_string();
    let backup = ftvm()
        .args(["backup", "--guest", "dns", "--arg", &arg])
        .args(["--listen", listen, "--transport", transport])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut primary = ftvm()
        .args(["primary", "--guest", "dns", "--arg", &arg])
        .args(["--service", &service.to_string()])
        .args(["--backup", listen, "--transport", transport])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_serving(service, &mut primary);
    exercise(service);
    let (p_out, p_err, p_ok) = interrupt_and_finish(primary, Duration::from_secs(30), true);
    let (b_out, b_err, b_ok) = interrupt_and_finish(backup, Duration::from_secs(30), false);
    assert!(p_ok, "primary failed:\n{p_err}");
    assert!(b_ok, "backup failed:\n{b_err}");
    let (p, b) = (digest_line(&p_out), digest_line(&b_out));
    assert!(p.is_some(), "no digest from the primary:\n{p_out}\n{p_err}");
    assert_eq!(
        p, b,
        "backup's final state differs\nprimary: {p_err}\nbackup: {b_err}"
    );
}

#[test]
fn dig_nsupdate_and_dnsperf_work_against_a_tcp_pair_of_processes() {
    if tools_or_skip("dig_nsupdate_and_dnsperf_work_against_a_tcp_pair_of_processes") {
        pair_of_processes("tcp", &free_tcp());
    }
}

#[test]
fn dig_nsupdate_and_dnsperf_work_against_a_shm_pair_of_processes() {
    if tools_or_skip("dig_nsupdate_and_dnsperf_work_against_a_shm_pair_of_processes") {
        pair_of_processes("shm", &format!("dns-cli-{}", std::process::id()));
    }
}

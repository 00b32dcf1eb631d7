//! Failover of the dns guest under the real clients, on a rack of network
//! namespaces this test makes itself: a client host, host-a (primary) and
//! host-b (backup) on one bridge, the service on a floating IP. While
//! `dnsperf` drives queries and `nsupdate` adds one name per update (retrying
//! every second, as a resolver would), host-a is SIGKILLed and cut off. The
//! backup goes live, takes the address, and is served on. Afterwards every
//! update nsupdate reported successful is in the zone exactly once — the SOA
//! serial advanced once per applied update, so a retried UPDATE the dead
//! primary had applied was answered from the duplicate table, not applied
//! again — and dnsperf's lost queries (those the dead primary took with it)
//! are reported.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ftvm_dnsproto::dnsperf::{self, DnsperfConfig, query_file};
use ftvm_dnsproto::tools::{dig_via, nsupdate_via, soa_serial};
use ftvm_testkit::netns::{self, Rack};
use ftvm_testkit::wait_until;
use ftvm_testkit::{command_on_path, require_or_skip};

const NET: &str = "10.78.0";
const FLOATING: &str = "10.78.0.100";
/// Synthetic hosts in the zone (`--arg`).
const HOSTS: u32 = 500;
/// Updates nsupdate sends, one new name each.
const UPDATES: u32 = 30;
/// The primary is killed once this many updates are acknowledged.
const KILL_AFTER: u32 = 10;

fn ftvm() -> &'static str {
    env!("CARGO_BIN_EXE_ftvm")
}

fn probe_tools() -> Result<(), String> {
    command_on_path("dig")?;
    command_on_path("nsupdate")
}

fn probe_rack() -> Result<(), String> {
    command_on_path("arping").map_err(|e| format!("{e} (apt install iputils-arping)"))?;
    netns::probe()
}

fn status(rack: &Rack, host: &str, addr: &str) -> serde_json::Value {
    let out = rack.exec(host, &[ftvm(), "status", addr]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    ftvm_testkit::checked_stderr(&out.stderr)
}

/// `ftvm <role>` on `host` for the dns guest, serving on the floating IP.
fn side(rack: &Rack, host: &str, role_args: &[&str], arbiter: &str, status: &str) -> Child {
    let service = format!("{FLOATING}:5300");
    let cidr = format!("{FLOATING}/24");
    let dev = format!("{host}0");
    let arg = HOSTS.to_string();
    let mut args = vec![ftvm(), "--set", "channel.peer_timeout_ms=300"];
    args.extend_from_slice(role_args);
    args.extend_from_slice(&[
        "--guest",
        "dns",
        "--arg",
        &arg,
        "--service",
        &service,
        "--service-ip",
        &cidr,
        "--service-dev",
        &dev,
        "--arbiter",
        arbiter,
        "--vm",
        "dns-floating",
        "--status",
        status,
    ]);
    rack.exec(host, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// One nsupdate per name `u<i>`; (i, exit code, acknowledged after the kill).
fn updates(
    launcher: Vec<String>,
    service: SocketAddr,
    acked: Arc<AtomicU32>,
    killed: Arc<AtomicBool>,
) -> Vec<(u32, i32, bool)> {
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    (0..UPDATES)
        .map(|i| {
            let script = format!(
                "zone example.test\nupdate add u{i}.example.test 60 A 198.51.100.{}\nsend",
                i + 1
            );
            // Retry every second, up to 20 times: the same message each time.
            let n = nsupdate_via(
                &launcher,
                &["-u", "1", "-r", "20", "-t", "30"],
                service,
                &script,
            )
            .unwrap();
            let after_kill = killed.load(Ordering::SeqCst);
            if n.code == 0 {
                acked.fetch_add(1, Ordering::SeqCst);
            } else {
                println!("update u{i}: nsupdate exit {}: {}", n.code, n.stderr.trim());
            }
            (i, n.code, after_kill)
        })
        .collect()
}

#[test]
fn every_acknowledged_dns_update_survives_a_sigkill_of_the_primary_under_dnsperf_load() {
    let test = "every_acknowledged_dns_update_survives_a_sigkill_of_the_primary_under_dnsperf_load";
    if !ftvm_vmm::kvm_or_skip(test)
        || !require_or_skip(test, "dnsutils", probe_tools)
        || !require_or_skip(test, "dnsperf", dnsperf::probe)
        || !require_or_skip(test, "netns", probe_rack)
    {
        return;
    }
    let rack = Rack::make(NET, &[("c", 10), ("a", 1), ("b", 2)]).expect("namespaces");
    let dir = tempfile::tempdir().unwrap();
    let arbiter = format!("file:{}", dir.path().join("arbiter").display());
    let (a_status, b_status) = (format!("{NET}.1:7300"), format!("{NET}.2:7300"));
    let listen = format!("{NET}.2:7100");
    let service: SocketAddr = format!("{FLOATING}:5300").parse().unwrap();
    let backup = side(
        &rack,
        "b",
        &["backup", "--listen", &listen, "--wait-secs", "30"],
        &arbiter,
        &b_status,
    );
    wait_until(Duration::from_secs(10), "the backup listening", || {
        status(&rack, "b", &b_status)["phase"] == "waiting"
    });
    let mut primary = side(
        &rack,
        "a",
        &["primary", "--backup", &listen],
        &arbiter,
        &a_status,
    );
    wait_until(Duration::from_secs(20), "the pair protected", || {
        status(&rack, "a", &a_status)["protection"] == "protected"
    });
    let client: Vec<String> = ["ip", "netns", "exec", &rack.ns("c")]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let launcher: Vec<&str> = client.iter().map(String::as_str).collect();
    let dig = |args: &[&str]| dig_via(&launcher, service, 2, args).unwrap();
    wait_until(Duration::from_secs(30), "the zone served", || {
        dig(&["www.example.test", "+short"]) == "192.0.2.10\n"
    });
    let serial = || soa_serial(&dig(&["example.test", "SOA", "+short"]));
    assert_eq!(serial(), Some(1));

    // dnsperf: queries at a steady rate for 8 s, lost after 1 s.
    let data = dir.path().join("queries.txt");
    std::fs::write(&data, query_file("example.test.", HOSTS)).unwrap();
    let mut cfg = DnsperfConfig::new(service, data);
    cfg.seconds = Some(8.0);
    cfg.clients = 4;
    cfg.outstanding = 32;
    cfg.timeout_s = 1;
    cfg.max_qps = Some(2000);
    cfg.per_query = false;
    let perf = {
        let client = client.clone();
        std::thread::spawn(move || {
            let launcher: Vec<&str> = client.iter().map(String::as_str).collect();
            dnsperf::run_via(&launcher, &cfg)
        })
    };
    let (acked, killed) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (client, acked, killed) = (client.clone(), acked.clone(), killed.clone());
        std::thread::spawn(move || updates(client, service, acked, killed))
    };
    wait_until(Duration::from_secs(30), "updates acknowledged", || {
        acked.load(Ordering::SeqCst) >= KILL_AFTER
    });
    // Host-a fails: its process dies and its link goes down.
    primary.kill().unwrap();
    killed.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    let _ = primary.wait();
    rack.cut("a").unwrap();
    wait_until(Duration::from_secs(10), "the backup live", || {
        status(&rack, "b", &b_status)["phase"] == "live"
    });
    let live_after = killed_at.elapsed();
    assert!(
        rack.has_addr("b", FLOATING),
        "the backup took the floating address"
    );

    let results = writer.join().unwrap();
    let report = perf.join().unwrap().expect("dnsperf");
    let acked: Vec<u32> = results.iter().filter(|r| r.1 == 0).map(|r| r.0).collect();
    let after_kill = results.iter().filter(|r| r.1 == 0 && r.2).count();
    assert!(
        after_kill > 0,
        "no update was acknowledged after the failover: {results:?}"
    );
    // Every acknowledged update is there, once; nothing else was applied
    // but updates that were sent.
    let mut present = 0;
    for i in 0..UPDATES {
        let got = dig(&[&format!("u{i}.example.test"), "A", "+short"]);
        if acked.contains(&i) {
            assert_eq!(
                got,
                format!("198.51.100.{}\n", i + 1),
                "acknowledged update u{i} lost"
            );
        }
        present += u32::from(!got.is_empty());
    }
    assert_eq!(
        serial(),
        Some(1 + present),
        "the serial must advance once per applied update ({present} names present)"
    );
    assert!(report.completed > 0, "{report:?}");
    println!(
        "dns failover: live {live_after:?} after the kill; {} of {UPDATES} updates acknowledged \
         ({after_kill} after the kill), {present} applied, serial {present}+1; dnsperf sent {}, \
         completed {}, lost {}, {} unexpected ids",
        acked.len(),
        report.sent,
        report.completed,
        report.lost,
        report.unexpected
    );

    // Stopping the live backup gives the address back.
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(backup.id() as libc::pid_t, libc::SIGINT) };
    let err = stderr_of(backup);
    assert!(err.contains("LIVE at generation 2"), "{err}");
    assert!(
        !rack.has_addr("b", FLOATING),
        "a stopped side removes the address: {err}"
    );
}

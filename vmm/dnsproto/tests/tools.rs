//! The real clients — `dig`, `nsupdate` (Debian bind9-dnsutils) and
//! `dnsperf` — unchanged, against the host-side server running the codec the
//! guest runs. Each test prints `SKIP` when its tool is missing (CI's
//! `FTVM_REQUIRE=...,dnsutils,dnsperf` turns that into a failure).

use std::net::SocketAddr;

use ftvm_dnsproto::dnsperf::{DnsperfConfig, query_file, update_file};
use ftvm_dnsproto::host::{DnsServer, host_server};
use ftvm_dnsproto::{BUILTIN_ZONE, dnsperf, tools};
use ftvm_testkit::{command_on_path, require_or_skip};

fn start(hosts: u32) -> DnsServer {
    let mut s = host_server(4096, 256);
    s.load_master(BUILTIN_ZONE).unwrap();
    s.add_hosts(hosts).unwrap();
    DnsServer::spawn("127.0.0.1:0".parse().unwrap(), s).unwrap()
}

fn dig(server: SocketAddr, args: &[&str]) -> String {
    tools::dig(server, 2, args).expect("dig runs")
}

fn nsupdate(server: SocketAddr, script: &str) -> (i32, String) {
    let r = tools::nsupdate(server, script).expect("nsupdate runs");
    (r.code, r.stderr)
}

fn dnsutils(test: &str) -> bool {
    require_or_skip(test, "dnsutils", || {
        command_on_path("dig").and_then(|_| command_on_path("nsupdate"))
    })
}

#[test]
fn dig_gets_answers_nxdomain_and_the_cname_chain() {
    if !dnsutils("dig_gets_answers_nxdomain_and_the_cname_chain") {
        return;
    }
    let srv = start(10);
    let a = srv.addr();
    assert_eq!(dig(a, &["www.example.test", "A", "+short"]), "192.0.2.10\n");
    assert_eq!(
        dig(a, &["www.example.test", "AAAA", "+short"]),
        "2001:db8::10\n"
    );
    assert_eq!(dig(a, &["h7.example.test", "+short"]), "10.0.0.7\n");
    assert_eq!(
        dig(a, &["alias.example.test", "+short"]),
        "ftp.example.test.\nwww.example.test.\n192.0.2.10\n"
    );
    let full = dig(a, &["nope.example.test"]);
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(full.contains("flags: qr aa rd;"), "{full}");
    assert!(
        full.contains("EDNS: version: 0, flags:; udp: 1232"),
        "{full}"
    );
    assert!(
        full.contains("example.test.\t\t60\tIN\tSOA\tns1.example.test."),
        "{full}"
    );
    let refused = dig(a, &["www.example.com"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");
    // dig asks ANY over TCP, which this server does not serve; over UDP it works.
    let any = dig(a, &["example.test", "ANY", "+notcp", "+short"]);
    assert_eq!(any.lines().count(), 6, "{any}");
    let digest = dig(a, &["digest.ftvm", "CH", "TXT", "+short"]);
    assert_eq!(digest.trim().len(), 18, "{digest}");
    let summary = srv.stop().unwrap();
    assert_eq!(summary.stats.formerr, 0);
    assert!(summary.stats.queries >= 8);
}

#[test]
fn nsupdate_adds_and_deletes_and_dig_sees_it() {
    if !dnsutils("nsupdate_adds_and_deletes_and_dig_sees_it") {
        return;
    }
    let srv = start(0);
    let a = srv.addr();
    let soa = |a| tools::soa_serial(&dig(a, &["example.test", "SOA", "+short"]));
    assert_eq!(soa(a), Some(1));
    // nsupdate finds the zone itself (an SOA query), then sends the update.
    let (rc, err) = nsupdate(
        a,
        "update add new.example.test 120 A 198.51.100.7\nupdate add new.example.test 120 TXT \"made by nsupdate\"\nsend",
    );
    assert_eq!(rc, 0, "{err}");
    assert_eq!(dig(a, &["new.example.test", "+short"]), "198.51.100.7\n");
    assert_eq!(
        dig(a, &["new.example.test", "TXT", "+short"]),
        "\"made by nsupdate\"\n"
    );
    assert_eq!(soa(a), Some(2));
    // A prerequisite that fails: nsupdate reports it and nothing changes.
    let (rc, err) = nsupdate(
        a,
        "prereq nxdomain new.example.test\nupdate add new.example.test 120 A 198.51.100.8\nsend",
    );
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("update failed: YXDOMAIN"), "{err}");
    let (rc, err) = nsupdate(
        a,
        "zone example.test\nprereq yxrrset new.example.test A\nupdate delete new.example.test A\nsend\nupdate delete new.example.test\nsend",
    );
    assert_eq!(rc, 0, "{err}");
    let gone = dig(a, &["new.example.test", "TXT"]);
    assert!(gone.contains("status: NXDOMAIN"), "{gone}");
    assert_eq!(soa(a), Some(4));
    let summary = srv.stop().unwrap();
    assert_eq!(summary.stats.updates, 4);
    assert_eq!(summary.stats.updates_applied, 3);
}

#[test]
fn dnsperf_drives_queries_and_updates_without_losses() {
    let test = "dnsperf_drives_queries_and_updates_without_losses";
    if !require_or_skip(test, "dnsperf", || command_on_path("dnsperf")) {
        return;
    }
    let srv = start(200);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("queries.txt");
    std::fs::write(&data, query_file("example.test.", 200)).unwrap();
    let mut cfg = DnsperfConfig::new(srv.addr(), data);
    cfg.max_runs = Some(5);
    let r = dnsperf::run(&cfg).unwrap();
    let per_pass = 200 + 25 * 5;
    assert_eq!(r.sent, 5 * per_pass);
    assert_eq!((r.completed, r.lost), (r.sent, 0));
    assert_eq!(r.rcode("NXDOMAIN"), 5 * 25);
    assert_eq!(r.rcode("NOERROR"), r.sent - 5 * 25);
    assert_eq!(r.latency_ns.len(), r.completed, "one -v line per query");
    assert!(r.qps > 0.0 && r.latency_us(0.99) >= r.latency_us(0.5));
    println!(
        "dnsperf (host server): {:.0} q/s, p50 {:.0} us, p99 {:.0} us",
        r.qps,
        r.latency_us(0.5),
        r.latency_us(0.99)
    );
    let updates = dir.join("updates.txt");
    std::fs::write(&updates, update_file("example.test.", 50)).unwrap();
    let mut cfg = DnsperfConfig::new(srv.addr(), updates);
    cfg.updates = true;
    cfg.max_runs = Some(1);
    let u = dnsperf::run(&cfg).unwrap();
    assert_eq!((u.sent, u.completed, u.lost), (50, 50, 0));
    assert_eq!(u.rcode("NOERROR"), 50);
    let summary = srv.stop().unwrap();
    assert_eq!(summary.stats.updates_applied, 50);
}

/// dnsperf's report as version 2.10 prints it, read without running it.
#[test]
fn dnsperf_reports_are_read_for_queries_and_updates() {
    let out = "[Status] Sending queries (to 127.0.0.1:5353)\n\
> NOERROR www.example.test A 0.000141\n\
> NXDOMAIN nope.example.test A 0.000300\n\
[Status] Testing complete (end of file)\n\nStatistics:\n\n\
  Queries sent:         3\n  Queries completed:    2 (66.67%)\n  Queries lost:         1 (33.33%)\n\n\
  Response codes:       NOERROR 1 (50.00%), NXDOMAIN 1 (50.00%)\n\
  Average packet size:  request 34, response 61\n  Run time (s):         0.001575\n\
  Queries per second:   1269.841270\n\n  Average Latency (s):  0.000220 (min 0.000141, max 0.000300)\n";
    let r = dnsperf::parse(out).unwrap();
    assert_eq!((r.sent, r.completed, r.lost), (3, 2, 1));
    assert_eq!(
        (r.rcode("NOERROR"), r.rcode("NXDOMAIN"), r.rcode("SERVFAIL")),
        (1, 1, 0)
    );
    assert!((r.qps - 1269.84127).abs() < 1e-3 && (r.run_time_s - 0.001575).abs() < 1e-9);
    assert_eq!(r.latency_ns.len(), 2);
    assert!(
        (r.latency_us(1.0) - 300.0).abs() < 1.0,
        "{}",
        r.latency_us(1.0)
    );
    let upd = out.replace("Queries", "Updates");
    assert_eq!(dnsperf::parse(&upd).unwrap().sent, 3);
    let err = dnsperf::parse("nothing").unwrap_err().to_string();
    assert!(
        err.starts_with("dnsperf's report has no \"Queries sent:\" line"),
        "{err}"
    );
}

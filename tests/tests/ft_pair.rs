//! The fault-tolerant pair in one process: a primary VM recording into the
//! channel and a backup VM replaying from it, the kv guest served on real
//! UDP, the channel over real tcp and shm.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ftvm_ft::ChannelSource;
use ftvm_ft::local::{LocalPair, PairOutcome, Protection};
use ftvm_kvproto::load::{LoadConfig, run_load};
use ftvm_tests::kvm_or_skip;
use ftvm_tests::proxy::Proxy;
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::{LogSource, LogSourceError, RunOutcome, SourcePoll, StopReason};

fn settings(kind: TransportKind) -> Settings {
    let mut s = Settings::default();
    s.channel.transport = kind;
    s.channel.peer_timeout_ms = 5000;
    s
}

/// The outcome of a clean run: (primary, backup), both must have succeeded.
fn both(out: PairOutcome) -> (RunOutcome, RunOutcome) {
    let p = out.primary.expect("primary");
    let b = out.backup.expect("protected").expect("backup replay");
    (p, b)
}

/// A protected pair whose channel runs through a proxy (returned with it).
fn through_proxy(
    s: &Settings,
    setup: impl FnOnce(&Proxy) + Send + 'static,
) -> (LocalPair, Arc<Mutex<Option<Proxy>>>) {
    let proxy = Arc::new(Mutex::new(None::<Proxy>));
    let p2 = proxy.clone();
    let pair = LocalPair::start(
        "kv",
        s,
        Protection::On {
            listen: "127.0.0.1:0".into(),
            connect: Box::new(move |backup: &str| {
                let p = Proxy::start(backup);
                setup(&p);
                let addr = p.addr.clone();
                *p2.lock().unwrap() = Some(p);
                addr
            }),
            wrap: None,
        },
    )
    .expect("pair starts");
    (pair, proxy)
}

fn load(service: SocketAddr, ops: u64) -> ftvm_kvproto::load::LoadReport {
    let mut cfg = LoadConfig::new(service);
    cfg.clients = 16;
    cfg.ops = ops;
    cfg.keys = 8;
    cfg.seed = 7;
    cfg.timeout = Duration::from_millis(500);
    run_load(&cfg).expect("load")
}

fn pair_replays_to_the_same_digest(kind: TransportKind, listen: &str) {
    let s = settings(kind);
    let run = LocalPair::start("kv", &s, Protection::on(listen)).expect("pair starts");
    let report = load(run.service, 10_000);
    assert_eq!(report.ops, 10_000);
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    let out = run.stop();
    let stats = out.channel.expect("channel stats");
    let (p, b) = both(out);
    println!(
        "{kind:?}: {} ops, p50 {:.1} us p99 {:.1} us; primary {} exits, {} entries sent, {} bytes",
        report.ops,
        report.latency_us(0.5),
        report.latency_us(0.99),
        p.exits,
        stats.entries_sent,
        stats.entry_bytes_sent
    );
    assert_eq!(b.reason, StopReason::PrimaryStopped);
    assert_eq!(b.exits, p.exits);
    assert_eq!(
        b.state, p.state,
        "backup's final digest differs from the primary's"
    );
}

#[test]
fn tcp_pair_replays_ten_thousand_ops_to_the_same_digest() {
    if kvm_or_skip("tcp_pair_replays_ten_thousand_ops_to_the_same_digest") {
        pair_replays_to_the_same_digest(TransportKind::Tcp, "127.0.0.1:0");
    }
}

#[test]
fn shm_pair_replays_ten_thousand_ops_to_the_same_digest() {
    if kvm_or_skip("shm_pair_replays_ten_thousand_ops_to_the_same_digest") {
        let name = format!("ft-pair-{}", std::process::id());
        pair_replays_to_the_same_digest(TransportKind::Shm, &name);
    }
}

/// io_uring rings are single-issuer: the pair must drive each transport from
/// one thread only (the channel thread does its own handshake).
#[test]
fn uring_pair_replays_ten_thousand_ops_to_the_same_digest() {
    let test = "uring_pair_replays_ten_thousand_ops_to_the_same_digest";
    if !kvm_or_skip(test) {
        return;
    }
    let uring = || ftvm_channel::transport::uring::probe_available().map_err(|e| e.to_string());
    if !ftvm_testkit::require_or_skip(test, "uring", uring) {
        return;
    }
    pair_replays_to_the_same_digest(TransportKind::Uring, "127.0.0.1:0");
}

/// The output rule seen from outside: while the proxy holds the backup's
/// ACKs, the primary has the reply (held in its gate) but the client sees
/// nothing; the reply arrives only after the ACKs flow again.
#[test]
fn no_reply_leaves_before_its_ack() {
    if !kvm_or_skip("no_reply_leaves_before_its_ack") {
        return;
    }
    let s = settings(TransportKind::Tcp);
    let (run, proxy) = through_proxy(&s, |_| {});
    let acks = proxy.lock().unwrap().as_ref().unwrap().acks.clone();
    let gate = run.gate.clone().expect("protected");
    // Warm up: the pair answers.
    assert_eq!(load(run.service, 100).errors, 0);

    for round in 0..5 {
        acks.hold.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(20));
        let held_before = gate.held();
        let service = run.service;
        let client = thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let req = ftvm_kvproto::Request {
                op: ftvm_kvproto::Op::Put,
                client_id: 900 + round,
                request_no: 1,
                key: b"k",
                value: b"v",
                new_value: b"",
            };
            let mut buf = [0u8; ftvm_kvproto::MAX_DATAGRAM];
            let n = req.encode(&mut buf).unwrap();
            sock.send_to(&buf[..n], service).unwrap();
            let mut rbuf = [0u8; ftvm_kvproto::MAX_DATAGRAM];
            let got = sock.recv_from(&mut rbuf);
            (got.map(|(n, _)| n), Instant::now())
        });
        // The reply exists and waits in the gate.
        let t = Instant::now();
        while gate.held() <= held_before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "reply never reached the gate"
            );
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(150));
        assert!(
            !client.is_finished(),
            "round {round}: the client saw a reply while ACKs were held"
        );
        let released_at = Instant::now();
        acks.hold.store(false, Ordering::SeqCst);
        let (got, seen_at) = client.join().unwrap();
        assert!(
            got.is_ok(),
            "round {round}: no reply after the ACKs flowed: {got:?}"
        );
        assert!(
            seen_at >= released_at,
            "round {round}: reply seen before the ACK was let through"
        );
        let forwarded = acks.forwarded.lock().unwrap();
        let first_after = forwarded.iter().find(|t| **t >= released_at).copied();
        assert!(
            first_after.is_some_and(|f| f <= seen_at),
            "round {round}: no ACK forwarded before the reply"
        );
    }
    let (p, b) = both(run.stop());
    assert_eq!(b.state, p.state);
}

/// A corrupted frame on the channel stops the backup with an error naming
/// the sequence number; nothing from it on is replayed. The primary, its
/// backup lost, wins the next generation and serves on unprotected.
#[test]
fn corrupted_frame_stops_the_backup_naming_the_seq() {
    if !kvm_or_skip("corrupted_frame_stops_the_backup_naming_the_seq") {
        return;
    }
    let s = settings(TransportKind::Tcp);
    // Flip one bit well after the handshake, inside some entry.
    let (run, _proxy) = through_proxy(&s, |p| p.corrupt_forward_at(20_000));
    // Drive traffic until the corruption is reached and the backup stopped
    // (loads fail once the primary lost its backup: outputs then stay held).
    let t = Instant::now();
    while !run.backup_is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the backup never hit the corrupt frame"
        );
        let mut cfg = LoadConfig::new(run.service);
        cfg.clients = 4;
        cfg.ops = 500;
        cfg.timeout = Duration::from_millis(200);
        cfg.max_attempts = 2;
        let _ = run_load(&cfg);
    }
    let driver = run.driver.clone().expect("protected");
    let t = Instant::now();
    while driver.protection() != ftvm_ft::Protection::Unprotected {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the primary never went unprotected: {:?} {}",
            driver.protection(),
            driver.note()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        driver.generation(),
        2,
        "won the generation after the pair's"
    );
    assert!(
        driver.note().contains("won generation 2"),
        "{}",
        driver.note()
    );
    // It serves on, alone, with every reply correct.
    let report = load(run.service, 2_000);
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    let out = run.stop();
    let err = out
        .backup
        .expect("protected")
        .expect_err("the backup must stop on a corrupt frame");
    assert!(
        err.contains("corrupt frame") && err.contains("expected seq"),
        "{err}"
    );
    out.primary.expect("the unprotected primary stops in order");
}

/// Replay throttled (a slow backup): the primary's lag control engages, the
/// lag stays bounded, and the pair still ends in the same state.
#[test]
fn slow_backup_triggers_lag_control() {
    if !kvm_or_skip("slow_backup_triggers_lag_control") {
        return;
    }
    #[derive(Debug)]
    struct Throttled(ftvm_ft::ChannelSource);
    impl LogSource for Throttled {
        fn poll(&mut self) -> Result<SourcePoll, LogSourceError> {
            self.0.poll()
        }
        fn peek(&mut self) -> Option<ftvm_vmm::log::EntryRef<'_>> {
            self.0.peek()
        }
        fn consume(&mut self) {
            thread::sleep(Duration::from_micros(300));
            self.0.consume()
        }
    }
    let mut s = settings(TransportKind::Tcp);
    s.channel.lag_limit_us = 20_000;
    s.channel.ack_delay_us = 100;
    let run = LocalPair::start(
        "kv",
        &s,
        Protection::On {
            listen: "127.0.0.1:0".into(),
            connect: Box::new(|a: &str| a.to_string()),
            wrap: Some(Box::new(|source: ChannelSource| {
                Box::new(Throttled(source))
            })),
        },
    )
    .expect("pair starts");
    let report = load(run.service, 3_000);
    assert_eq!(report.errors, 0, "{:?}", report.first_errors);
    let sink = run.sink.clone().expect("protected");
    let (p, b) = both(run.stop());
    let sleeps = sink.lag_sleeps.get();
    let max_lag = sink.max_lag_us.get();
    println!(
        "lag control: {sleeps} sleeps, {} us slept, max lag {max_lag} us (limit 20000)",
        sink.lag_sleep_us.get()
    );
    assert!(
        sleeps > 0,
        "lag control never engaged (max lag {max_lag} us)"
    );
    assert!(max_lag < 1_000_000, "lag not bounded: {max_lag} us");
    assert_eq!(b.state, p.state);
}

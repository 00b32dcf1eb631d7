//! The UDP client and the load generator against the host server on
//! loopback (real sockets).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use ftvm_kvproto::client::{KvCallError, KvClient};
use ftvm_kvproto::load::{LoadConfig, LoadError, run_load};
use ftvm_kvproto::server::KvServer;
use ftvm_kvproto::{MAX_DATAGRAM, Op, Reply, Request, Status};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn single_calls_through_the_client() {
    let server = KvServer::spawn(loopback(), 256, 16, false).unwrap();
    let mut c = KvClient::new(server.addr(), 77, 1, Duration::from_millis(500), 4).unwrap();
    assert_eq!(
        c.call(Op::Put, b"k", b"v1", b"").unwrap().status,
        Status::Ok
    );
    let g = c.call(Op::Get, b"k", b"", b"").unwrap();
    assert_eq!(
        (g.status, g.value.as_slice(), g.request_no),
        (Status::Ok, &b"v1"[..], 2)
    );
    let a = c.call(Op::Append, b"k", b"+", b"").unwrap();
    assert_eq!(a.value, b"v1+");
    let m = c.call(Op::Cas, b"k", b"zz", b"q").unwrap();
    assert_eq!(
        (m.status, m.value.as_slice()),
        (Status::CasMismatch, &b"v1+"[..])
    );
    let sum = server.stop().unwrap();
    assert_eq!(sum.stats.applied, 4);
}

#[test]
fn client_gives_up_with_a_typed_error_when_nobody_answers() {
    // A bound socket that never answers.
    let silent = UdpSocket::bind(loopback()).unwrap();
    let mut c = KvClient::new(
        silent.local_addr().unwrap(),
        1,
        1,
        Duration::from_millis(20),
        3,
    )
    .unwrap();
    match c.call(Op::Get, b"k", b"", b"") {
        Err(KvCallError::NoReply {
            attempts: 3,
            request_no: 1,
            ..
        }) => {}
        other => panic!("expected NoReply, got {other:?}"),
    }
    // Three identical datagrams arrived (the retries reuse the number).
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (n, _) = silent.recv_from(&mut buf).unwrap();
        seen.push(buf[..n].to_vec());
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(Request::decode(&seen[0]).unwrap().request_no, 1);
}

#[test]
fn closed_loop_load_is_self_checking_and_clean() {
    let server = KvServer::spawn(loopback(), 4096, 64, false).unwrap();
    let mut cfg = LoadConfig::new(server.addr());
    cfg.clients = 8;
    cfg.ops = 4000;
    cfg.keys = 4;
    cfg.threads = 2;
    cfg.seed = 7;
    let rep = run_load(&cfg).unwrap();
    assert_eq!(rep.ops, 4000);
    assert_eq!(rep.errors, 0, "{:?}", rep.first_errors);
    assert_eq!(rep.latency_ns.len(), 4000);
    assert!(rep.per_op.iter().all(|&n| n > 500), "{:?}", rep.per_op);
    let sum = server.stop().unwrap();
    assert_eq!(sum.stats.applied, 4000);
    assert_eq!(sum.stats.clients, 8);
}

#[test]
fn open_loop_load_runs_at_the_rate() {
    let server = KvServer::spawn(loopback(), 1024, 16, false).unwrap();
    let mut cfg = LoadConfig::new(server.addr());
    cfg.clients = 4;
    cfg.ops = 400;
    cfg.rate = Some(2000.0);
    let rep = run_load(&cfg).unwrap();
    assert_eq!((rep.ops, rep.errors), (400, 0));
    // 400 ops at 2000/s are due over 0.2 s: the run cannot end sooner.
    assert!(
        rep.elapsed >= Duration::from_millis(195),
        "{:?}",
        rep.elapsed
    );
    server.stop().unwrap();
}

/// A lossy proxy: drops every 5th request, so the load must retry with the
/// same request number, and the server must apply each request once.
#[test]
fn retries_after_loss_apply_once() {
    let server = KvServer::spawn(loopback(), 1024, 16, false).unwrap();
    let proxy = UdpSocket::bind(loopback()).unwrap();
    proxy
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let upstream = server.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let relay = std::thread::spawn(move || {
        let up = UdpSocket::bind(loopback()).unwrap();
        up.set_nonblocking(true).unwrap();
        let mut client = None;
        let mut n_req = 0u64;
        let mut buf = [0u8; MAX_DATAGRAM];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = proxy.recv_from(&mut buf) {
                client = Some(from);
                n_req += 1;
                if !n_req.is_multiple_of(5) {
                    up.send_to(&buf[..n], upstream).unwrap();
                }
            }
            while let Ok((n, _)) = up.recv_from(&mut buf) {
                // Every reply twice: the load must ignore the duplicate.
                let to = client.unwrap();
                proxy.send_to(&buf[..n], to).unwrap();
                proxy.send_to(&buf[..n], to).unwrap();
                assert!(Reply::decode(&buf[..n]).is_ok());
            }
        }
        n_req
    });
    let mut cfg = LoadConfig::new(proxy_addr);
    cfg.clients = 4;
    cfg.ops = 300;
    cfg.timeout = Duration::from_millis(30);
    let rep = run_load(&cfg).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let forwarded = relay.join().unwrap();
    assert_eq!((rep.ops, rep.errors), (300, 0), "{:?}", rep.first_errors);
    assert!(rep.retries >= 50, "retries {}", rep.retries);
    assert!(
        rep.duplicate_replies >= 250,
        "duplicates {}",
        rep.duplicate_replies
    );
    let sum = server.stop().unwrap();
    assert_eq!(sum.stats.applied, 300);
    assert!(forwarded >= 300 + rep.retries);
}

#[test]
fn load_fails_with_no_reply_from_a_silent_server() {
    let silent = UdpSocket::bind(loopback()).unwrap();
    let mut cfg = LoadConfig::new(silent.local_addr().unwrap());
    cfg.clients = 2;
    cfg.ops = 10;
    cfg.timeout = Duration::from_millis(10);
    cfg.max_attempts = 3;
    match run_load(&cfg) {
        Err(LoadError::NoReply {
            attempts: 3,
            request_no: 1,
            ..
        }) => {}
        other => panic!("expected NoReply, got {other:?}"),
    }
}

#[test]
fn bad_settings_name_the_key() {
    let mut cfg = LoadConfig::new(loopback());
    cfg.clients = 0;
    let e = run_load(&cfg).unwrap_err().to_string();
    assert!(e.contains("clients = 0"), "{e}");
    let mut cfg = LoadConfig::new(loopback());
    cfg.rate = Some(-1.0);
    let e = run_load(&cfg).unwrap_err().to_string();
    assert!(e.contains("rate = -1"), "{e}");
}

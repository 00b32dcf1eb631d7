//! The rdma transport on a real device (cargo feature `rdma`): two sessions
//! on this host's first ACTIVE port, connected through the device's
//! loopback, stream checked records both ways and close in order. Without a
//! device it prints `SKIP ...: no RDMA device ...` (`FTVM_REQUIRE=rdma`
//! makes that a failure, for rack CI).
#![cfg(feature = "rdma")]

use std::thread;
use std::time::{Duration, Instant};

use ftvm_rdma::{RdmaConfig, SessionError, SessionListener, Visibility};

fn checked(seed: u64, pos: u64) -> u8 {
    ((pos ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn run(visibility: Visibility) {
    let test = format!("verbs_hw::{}", visibility.name());
    let cfg = RdmaConfig {
        recv_ring_bytes: 1 << 20,
        visibility,
        ..RdmaConfig::default()
    };
    if !ftvm_testkit::require_or_skip(&test, "rdma", || {
        ftvm_rdma::probe_available(&cfg).map_err(|e| e.to_string())
    }) {
        return;
    }
    let mut listener = SessionListener::bind("127.0.0.1:0", &cfg).expect("bind");
    let addr = listener.local_addr().to_owned();
    let c = cfg.clone();
    let client = thread::spawn(move || ftvm_rdma::connect(&addr, &c).expect("connect"));
    let mut b = listener
        .accept(Duration::from_secs(10))
        .expect("accept")
        .expect("a session within 10 s");
    let mut a = client.join().expect("client thread");
    println!("{}", a.describe());
    const TOTAL: u64 = 64 << 20;
    let (mut sent, mut got) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 << 10];
    let mut chunk = vec![0u8; 48 << 10];
    let start = Instant::now();
    while got < TOTAL {
        if sent < TOTAL {
            let len = (((sent >> 7) % 9000) as usize + 1).min((TOTAL - sent) as usize);
            for (i, b) in chunk[..len].iter_mut().enumerate() {
                *b = checked(1, sent + i as u64);
            }
            sent += a.send(&[&chunk[..len]]).expect("send") as u64;
        }
        let n = b.recv(&mut buf).expect("recv");
        for (i, &x) in buf[..n].iter().enumerate() {
            assert_eq!(x, checked(1, got + i as u64), "byte {}", got + i as u64);
        }
        got += n as u64;
        a.progress().expect("progress");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{got} of {TOTAL} after 60 s"
        );
    }
    println!(
        "{test}: {} MiB in {:.2} s; {:?}",
        TOTAL >> 20,
        start.elapsed().as_secs_f64(),
        a.stats()
    );
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match b.recv(&mut buf) {
            Err(SessionError::Closed) => break,
            Ok(0) => assert!(Instant::now() < deadline, "no orderly close"),
            other => panic!("after close: {other:?}"),
        }
    }
}

#[test]
fn stream_and_close_with_immediates() {
    run(Visibility::Immediate);
}

#[test]
fn stream_and_close_with_trailers_where_supported() {
    run(Visibility::Trailer);
}

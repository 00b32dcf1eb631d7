//! End-to-end tests of the channel over real transports (tcp on loopback,
//! shm through a real shared mapping): delivery, the output rule, the flush
//! policy, handshake refusal, corrupt input and liveness.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ftvm_channel::transport;
use ftvm_channel::{AckGate, AppendError, Backup, ChannelError, HelloParams, Primary};
use ftvm_tuning::{ChannelSettings, TransportKind};
use ftvm_wire::control::{Control, Hello, Role};
use ftvm_wire::{Header, Kind, Reason, VERSION, encode, frame_len};
use rand::{Rng, SeedableRng, rngs::StdRng};

mod common;
use common::{pair, params, settings};

fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// Every entry arrives once, in order, byte-exact; every output is released
/// only after the ACK covering it, and all are released by the end.
fn delivery_and_output_rule(kind: TransportKind) {
    let s = settings(kind);
    let (pt, bt) = pair(&s);
    const N: u64 = 20_000;
    let s_b = s.clone();
    let backup = thread::spawn(move || -> Result<u64, ChannelError> {
        let mut b = Backup::establish(bt, &s_b, params())?;
        let mut rng = StdRng::seed_from_u64(1);
        let mut next = 1u64;
        while !b.is_ended() {
            b.poll(|_, f| {
                assert_eq!(f.header.seq, next);
                let len = rng.random_range(0..300usize);
                assert_eq!(
                    f.payload,
                    &payload_for(next, len)[..],
                    "payload of seq {next}"
                );
                assert_eq!(f.header.kind.is_output(), next.is_multiple_of(7));
                assert_eq!(f.header.exit_ordinal, next * 3);
                next += 1;
            })?;
            b.set_replayed(b.received_seq(), b.received_seq() * 3);
        }
        Ok(next - 1)
    });
    let (mut p, mut app) = Primary::establish(pt, &s, params()).expect("primary handshake");
    let mut gate = AckGate::new();
    let mut rng = StdRng::seed_from_u64(1);
    let mut released = 0u64;
    let mut seq = 1u64;
    while seq <= N {
        let len = rng.random_range(0..300usize);
        let kind = if seq.is_multiple_of(7) {
            Kind::OpaqueOutput
        } else {
            Kind::Opaque
        };
        loop {
            match app.append(kind, seq * 3, &payload_for(seq, len)) {
                Ok(got) => {
                    assert_eq!(got, seq);
                    break;
                }
                Err(AppendError::Full { .. }) => {
                    p.poll().expect("poll while full");
                }
                Err(e) => panic!("append: {e}"),
            }
        }
        if kind.is_output() {
            gate.hold(seq, seq).expect("hold");
        }
        seq += 1;
        p.poll().expect("poll");
        let acked = p.acked_seq();
        released += gate.release(acked, |s, _| assert!(s <= acked)) as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.held() > 0 {
        p.poll().expect("poll");
        let acked = p.acked_seq();
        released += gate.release(acked, |s, _| assert!(s <= acked)) as u64;
        assert!(
            Instant::now() < deadline,
            "outputs still held: acked {acked}"
        );
    }
    let stats = p.finish(Duration::from_secs(5)).expect("finish");
    assert_eq!(stats.entries_sent, N);
    assert_eq!(released, N / 7);
    assert_eq!(backup.join().unwrap().expect("backup"), N);
}

#[test]
fn tcp_delivery_and_output_rule() {
    delivery_and_output_rule(TransportKind::Tcp);
}

#[test]
fn shm_delivery_and_output_rule() {
    delivery_and_output_rule(TransportKind::Shm);
}

#[test]
fn threaded_mode_delivers_in_order() {
    let mut kinds = vec![TransportKind::Tcp, TransportKind::Shm];
    let uring = || transport::uring::probe_available().map_err(|e| ftvm_channel::error_chain(&e));
    if ftvm_testkit::require_or_skip(
        "threaded_mode_delivers_in_order (uring part)",
        "uring",
        uring,
    ) {
        kinds.push(TransportKind::Uring);
    }
    for kind in kinds {
        // tcp: handshake here, then move the end to its thread (`spawn`);
        // shm and uring: the thread does its own handshake (`spawn_establish`),
        // which io_uring's single-issuer rings require.
        let in_thread = kind != TransportKind::Tcp;
        let s = ChannelSettings {
            threaded: true,
            ..settings(kind)
        };
        let (pt, bt) = pair(&s);
        let s_b = s.clone();
        let backup = thread::spawn(move || {
            let (mut handle, mut feed) = if in_thread {
                Backup::spawn_establish(bt, &s_b, params()).expect("backup handshake on its thread")
            } else {
                let b = Backup::establish(bt, &s_b, params()).expect("backup handshake");
                b.spawn(&s_b).expect("spawn backup")
            };
            let mut next = 1u64;
            loop {
                let finished = handle.is_finished();
                let mut n = 0;
                // Each entry is lent from the replay ring until consumed.
                while let Some(f) = feed.peek() {
                    assert_eq!(f.header.seq, next);
                    assert_eq!(f.payload, &next.to_le_bytes());
                    feed.consume();
                    next += 1;
                    n += 1;
                }
                feed.set_replayed(next - 1, 0);
                // Entries committed before the thread finished are all consumed now.
                if n == 0 && finished {
                    assert!(feed.is_empty());
                    // The thread's last count is visible once it finished.
                    assert_eq!(feed.pushed_seq(), next - 1);
                    break;
                }
            }
            handle.join().expect("backup thread");
            next - 1
        });
        let (handle, mut app) = if in_thread {
            Primary::spawn_establish(pt, &s, params()).expect("primary handshake on its thread")
        } else {
            let (p, app) = Primary::establish(pt, &s, params()).expect("primary handshake");
            (p.spawn(&s), app)
        };
        for seq in 1..=50_000u64 {
            let kind = if seq.is_multiple_of(1000) {
                Kind::OpaqueOutput
            } else {
                Kind::Opaque
            };
            while let Err(e) = app.append(kind, 0, &seq.to_le_bytes()) {
                assert!(matches!(e, AppendError::Full { .. }), "{e}");
                assert!(!handle.is_finished(), "channel thread died");
                std::hint::spin_loop();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.acked_seq() < 50_000 {
            assert!(Instant::now() < deadline, "acked {}", handle.acked_seq());
            thread::yield_now();
        }
        let stats = handle.finish().expect("primary finish");
        assert_eq!(stats.entries_sent, 50_000);
        assert_eq!(backup.join().unwrap(), 50_000);
    }
}

/// With a long max delay and big batches, plain entries wait; an OUTPUT
/// entry flushes everything at once.
#[test]
fn output_entry_flushes_the_batch_at_once() {
    let s = ChannelSettings {
        batch_bytes: 512 << 10,
        max_delay_us: 1_000_000,
        ..settings(TransportKind::Tcp)
    };
    let (pt, bt) = pair(&s);
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    let s_b = s.clone();
    let backup = thread::spawn(move || {
        let mut b = Backup::establish(bt, &s_b, params()).expect("backup handshake");
        while !b.is_ended() {
            b.poll(|_, f| r2.store(f.header.seq, Ordering::SeqCst))
                .expect("backup poll");
        }
    });
    let (mut p, mut app) = Primary::establish(pt, &s, params()).expect("primary handshake");
    for _ in 0..10 {
        app.append(Kind::Opaque, 0, b"plain").unwrap();
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(100) {
        p.poll().unwrap();
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "plain entries left before the flush policy allowed"
    );
    assert_eq!(p.last_sent_seq(), 0);
    let out = app.append(Kind::OpaqueOutput, 0, b"out").unwrap();
    let t = Instant::now();
    while p.acked_seq() < out {
        p.poll().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "output not flushed");
    }
    assert_eq!(received.load(Ordering::SeqCst), 11);
    assert_eq!(p.stats().output_flushes, 1);
    p.finish(Duration::from_secs(5)).unwrap();
    backup.join().unwrap();
}

#[test]
fn mismatched_fingerprint_is_refused_naming_both() {
    let s = settings(TransportKind::Tcp);
    let (pt, bt) = pair(&s);
    let s_b = s.clone();
    let backup = thread::spawn(move || {
        Backup::establish(
            bt,
            &s_b,
            HelloParams {
                settings_fingerprint: 0xbbbb,
                ..params()
            },
        )
        .map(|_| ())
    });
    let err = Primary::establish(pt, &s, params())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fingerprint")
            && err.contains("0x000000000000bbbb")
            && err.contains("0x0000000000001234"),
        "{err}"
    );
    let err = backup.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("fingerprint"), "{err}");
}

/// A misbehaving primary: handshakes correctly, then writes raw bytes.
fn backup_against_raw_peer(bytes_after_hello: Vec<u8>) -> (ChannelError, Vec<u64>) {
    let s = settings(TransportKind::Tcp);
    let mut listener = transport::listen(&s, "127.0.0.1:0").unwrap();
    let addr = listener.local_addr();
    let peer = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let hello = Control::Hello(Hello {
            role: Role::Primary,
            version: VERSION,
            settings_fingerprint: params().settings_fingerprint,
            next_seq: 1,
            ..Hello::default()
        });
        sock.write_all(&hello.to_frame().unwrap()).unwrap();
        sock.write_all(&bytes_after_hello).unwrap();
        thread::sleep(Duration::from_millis(200));
    });
    let t = listener.accept(Duration::from_secs(5)).unwrap().unwrap();
    let mut b = Backup::establish(t, &s, params()).unwrap();
    let mut got = Vec::new();
    let err = loop {
        match b.poll(|_, f| got.push(f.header.seq)) {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    peer.join().unwrap();
    (err, got)
}

fn entry(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0; frame_len(payload.len())];
    encode(
        &mut v,
        &Header::new(Kind::PacketRx, seq, seq, payload.len()),
        payload,
    )
    .unwrap();
    v
}

#[test]
fn corrupt_frames_stop_the_backup_naming_reason_and_seq() {
    let good: Vec<u8> = [entry(1, b"one"), entry(2, b"two")].concat();
    // CRC: flip a payload bit of seq 3.
    let mut bad = entry(3, b"three");
    bad[42] ^= 0x10;
    let (e, got) = backup_against_raw_peer([good.clone(), bad, entry(4, b"four")].concat());
    assert_eq!(got, vec![1, 2]);
    let msg = ftvm_channel::error_chain(&e);
    assert!(
        msg.contains("CRC mismatch")
            && msg.contains("expected seq 3")
            && msg.contains("(header claims seq 3, unverified)"),
        "{msg}"
    );

    // Wrong version.
    let mut bad = entry(3, b"three");
    bad[12] = 9;
    let (e, got) = backup_against_raw_peer([good.clone(), bad].concat());
    assert_eq!(got, vec![1, 2]);
    assert!(
        ftvm_channel::error_chain(&e).contains("unknown format version 9"),
        "{e}"
    );

    // Oversized length word: rejected without waiting for 2 GB.
    let mut bad = entry(3, b"three");
    bad[0..4].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let (e, _) = backup_against_raw_peer([good.clone(), bad].concat());
    assert!(
        ftvm_channel::error_chain(&e).contains("bad frame length 67108864"),
        "{e}"
    );

    // Truncated, then the connection ends.
    let bad = entry(3, b"three and more");
    let (e, got) = backup_against_raw_peer([good.clone(), bad[..30].to_vec()].concat());
    assert_eq!(got, vec![1, 2]);
    let msg = ftvm_channel::error_chain(&e);
    assert!(
        msg.contains("truncated") && msg.contains("expected seq 3"),
        "{msg}"
    );

    // A gap in sequence.
    let (e, got) = backup_against_raw_peer([good.clone(), entry(5, b"five")].concat());
    assert_eq!(got, vec![1, 2]);
    assert!(
        ftvm_channel::error_chain(&e).contains("expected seq 3, found 5"),
        "{e}"
    );

    // Garbage that is not a frame at all.
    let (e, got) = backup_against_raw_peer([good, vec![0xff; 64]].concat());
    assert_eq!(got, vec![1, 2]);
    assert!(
        matches!(
            e,
            ChannelError::Corrupt {
                expected_seq: 3,
                ..
            }
        ),
        "{e}"
    );
    if let ChannelError::Corrupt { source, .. } = e {
        assert!(
            matches!(source.reason, Reason::BadFrameLen { .. }),
            "{source}"
        );
    }
}

/// A backup that handshakes and then goes silent is reported lost within
/// peer_timeout_ms plus one tick (plus scheduling slack).
#[test]
fn silent_peer_is_reported_lost() {
    for kind in [TransportKind::Tcp, TransportKind::Shm] {
        let s = ChannelSettings {
            peer_timeout_ms: 300,
            tick_interval_ms: 50,
            ..settings(kind)
        };
        let (pt, bt) = pair(&s);
        let stop = Arc::new(Mutex::new(()));
        let guard = stop.lock().unwrap();
        let stop2 = stop.clone();
        let s_b = s.clone();
        let silent = thread::spawn(move || {
            let b = Backup::establish(bt, &s_b, params()).expect("backup handshake");
            // Hold the connection open but never poll again.
            let _g = stop2.lock().unwrap();
            drop(b);
        });
        let (mut p, _app) = Primary::establish(pt, &s, params()).unwrap();
        let start = Instant::now();
        let err = loop {
            if let Err(e) = p.poll() {
                break e;
            }
        };
        let took = start.elapsed();
        drop(guard);
        silent.join().unwrap();
        assert!(
            matches!(
                err,
                ChannelError::PeerTimeout {
                    timeout_ms: 300,
                    ..
                }
            ),
            "{kind:?}: {err}"
        );
        // The silence is counted from the peer's last bytes (its hello),
        // which arrived just before `start`.
        let ChannelError::PeerTimeout { silent_ms, .. } = &err else {
            unreachable!()
        };
        assert!(
            *silent_ms >= 300,
            "{kind:?}: reported after {silent_ms} ms of silence"
        );
        assert!(
            took <= Duration::from_millis(300 + 50 + 150),
            "{kind:?}: reported after {took:?}"
        );
        assert!(
            ftvm_channel::error_chain(&err).contains("silent for"),
            "{err}"
        );
    }
}

/// A raw TCP listener that accepts and never answers: the handshake fails
/// with a clear timeout instead of hanging.
#[test]
fn handshake_times_out_on_a_mute_peer() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let s = ChannelSettings {
        peer_timeout_ms: 200,
        ..settings(TransportKind::Tcp)
    };
    let t = transport::connect(&s, &addr).unwrap();
    let _conn = l.accept().unwrap();
    let err = Primary::establish(t, &s, params()).map(|_| ()).unwrap_err();
    assert!(
        ftvm_channel::error_chain(&err).contains("no hello within 200 ms"),
        "{err}"
    );
}

//! The channel (Primary, Backup, AckGate) over the rdma transport with
//! the simulated NIC: delivery and the output rule, and "the RC completion
//! is the ACK" (`rdma.completion_ack`).

use std::thread;
use std::time::{Duration, Instant};

use ftvm_channel::{AckGate, AppendError, Backup, ChannelError, HelloParams, Primary};
use ftvm_tuning::{ChannelSettings, RdmaNic, TransportKind};
use ftvm_wire::Kind;

fn settings(completion_ack: bool) -> ChannelSettings {
    let mut s = ChannelSettings {
        transport: TransportKind::Rdma,
        ring_bytes: 1 << 20,
        peer_timeout_ms: 5000,
        ..ChannelSettings::default()
    };
    s.rdma.nic = RdmaNic::Simulated;
    s.rdma.recv_ring_bytes = 128 << 10;
    s.rdma.completion_ack = completion_ack;
    s
}

fn params() -> HelloParams {
    HelloParams {
        settings_fingerprint: 0x5eed,
        ..HelloParams::default()
    }
}

mod common;
use common::pair;

fn payload(seq: u64) -> Vec<u8> {
    (0..(seq % 200) as usize)
        .map(|i| (seq as usize * 7 + i) as u8)
        .collect()
}

#[test]
fn entries_and_outputs_over_rdma() {
    let s = settings(false);
    let (pt, bt) = pair(&s);
    const N: u64 = 5_000;
    let sb = s.clone();
    let backup = thread::spawn(move || -> Result<u64, ChannelError> {
        let mut b = Backup::establish(bt, &sb, params())?;
        let mut next = 1u64;
        while !b.is_ended() {
            b.poll(|_, f| {
                assert_eq!(f.header.seq, next);
                assert_eq!(f.payload, &payload(next)[..]);
                next += 1;
            })?;
        }
        Ok(next - 1)
    });
    let (mut p, mut app) = Primary::establish(pt, &s, params()).expect("primary handshake");
    let mut gate = AckGate::new();
    let mut released = 0;
    for seq in 1..=N {
        let kind = if seq.is_multiple_of(5) {
            Kind::OpaqueOutput
        } else {
            Kind::Opaque
        };
        loop {
            match app.append(kind, seq, &payload(seq)) {
                Ok(_) => break,
                Err(AppendError::Full { .. }) => {
                    p.poll().expect("poll");
                }
                Err(e) => panic!("append: {e}"),
            }
        }
        if kind.is_output() {
            gate.hold(seq, seq).expect("hold");
        }
        p.poll().expect("poll");
        let acked = p.acked_seq();
        released += gate.release(acked, |s, _| assert!(s <= acked));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gate.held() > 0 {
        p.poll().expect("poll");
        let acked = p.acked_seq();
        released += gate.release(acked, |s, _| assert!(s <= acked));
        assert!(
            Instant::now() < deadline,
            "outputs still held at ack {acked}"
        );
    }
    p.finish(Duration::from_secs(5)).expect("finish");
    assert_eq!(released, (N / 5) as usize);
    assert_eq!(backup.join().unwrap().expect("backup"), N);
}

/// With `completion_ack` the primary's ACKed seq follows the RC completions
/// although the backup sends no ACK at all; without it, it does not move.
#[test]
fn the_rc_completion_is_the_ack_only_when_asked() {
    for completion_ack in [true, false] {
        let mut s = settings(completion_ack);
        // The backup would ACK only after a million entries or a second.
        s.ack_every = 1_000_000;
        s.ack_delay_us = 1_000_000;
        let (pt, bt) = pair(&s);
        let sb = s.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_b = stop.clone();
        let backup = thread::spawn(move || -> Result<(u64, u64), ChannelError> {
            let mut b = Backup::establish(bt, &sb, params())?;
            let t = Instant::now();
            // Until told to stop and every entry arrived (a loaded host may
            // deliver the last ones late), at most 10 s.
            while !(stop_b.load(std::sync::atomic::Ordering::Relaxed) && b.received_seq() >= 200)
                && t.elapsed() < Duration::from_secs(10)
            {
                b.poll(|_, _| {})?;
            }
            Ok((b.received_seq(), b.acked_seq()))
        });
        let (mut p, mut app) = Primary::establish(pt, &s, params()).expect("primary handshake");
        for seq in 1..=200u64 {
            app.append(Kind::Opaque, seq, &payload(seq))
                .expect("append");
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) && p.acked_seq() < 200 {
            p.poll().expect("poll");
        }
        let acked = p.acked_seq();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (received, backup_acked) = backup.join().unwrap().expect("backup");
        assert_eq!(received, 200, "completion_ack {completion_ack}");
        assert_eq!(backup_acked, 0, "the backup sent an ACK");
        if completion_ack {
            assert_eq!(acked, 200, "completions did not count as the ACK");
        } else {
            assert_eq!(acked, 0, "an ACK nobody sent");
        }
    }
}

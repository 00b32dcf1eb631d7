//! The one-sided ring protocol over the simulated NIC: a million records of
//! random sizes with random placement order, queue-full, receiver-not-ready
//! and completion-error injection. Every byte and the order are checked by
//! the sink; every injected fatal fault must surface as an error.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Rng, Sink, Source};
use ftvm_rdma::port::{OneSidedPort, Source as WrSource, WriteRequest};
use ftvm_rdma::sim::{Fault, SimConfig, SimNic, SimPort};
use ftvm_rdma::{Link, LinkParams, TransferError, Visibility, WcStatus, layout};

/// Seed of a run: `FTVM_SEED` to replay one, else fixed.
fn seed() -> u64 {
    std::env::var("FTVM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0f7e_5eed)
}

struct Opts {
    capacity: usize,
    visibility: Visibility,
    signal_every: u32,
    completion_ack: bool,
}

fn links(nic: &SimNic, a: SimConfig, b: SimConfig, o: &Opts) -> (Link<SimPort>, Link<SimPort>) {
    let (pa, pb) = nic.pair(a, b, o.capacity);
    let params = |me: &SimConfig, peer: &SimConfig| LinkParams {
        local_capacity: o.capacity,
        remote_capacity: o.capacity,
        local_visibility: o.visibility,
        remote_visibility: o.visibility,
        remote_rq_depth: peer.rq_depth,
        signal_every: o.signal_every,
        max_inline: me.max_inline,
        completion_ack: o.completion_ack,
    };
    let la = Link::new(pa, params(&a, &b)).expect("link a");
    let lb = Link::new(pb, params(&b, &a)).expect("link b");
    (la, lb)
}

#[test]
fn a_million_records_through_the_simulated_nic() -> Result<()> {
    let seed = seed();
    let start = Instant::now();
    let cfg = |s: u64| SimConfig {
        sq_depth: 16,
        rq_depth: 64,
        max_inline: 220,
        max_piece: 64,
        steps_per_call: 3,
        seed: s,
        ..SimConfig::default()
    };
    let nic = SimNic::new();
    let opts = Opts {
        capacity: 64 << 10,
        visibility: Visibility::Immediate,
        signal_every: 4,
        completion_ack: false,
    };
    let (mut a, mut b) = links(&nic, cfg(seed), cfg(seed + 1), &opts);
    // Receiver-not-ready storms (retried forever: a delay, not an error).
    let mut rng = Rng(seed);
    for i in 1..400u64 {
        a.port().inject(
            i * 997 + rng.below(500),
            Fault::RnrStorm {
                naks: 1 + rng.below(8) as u32,
            },
        );
    }
    const RECORDS: u64 = 1_000_000;
    let mut ab = Source::new(seed, RECORDS, 16 << 10);
    let mut ab_sink = Sink::new(seed, 16 << 10);
    // A thinner stream back, as ACKs are.
    let mut ba = Source::new(seed ^ 1, 20_000, 512);
    let mut ba_sink = Sink::new(seed ^ 1, 512);
    while ab_sink.next_seq < RECORDS || ba_sink.next_seq < 20_000 {
        // Bursts of posts: the send queue (16 slots) fills behind slow placement.
        for _ in 0..1 + rng.below(4) {
            if ab.pump(&mut a)? == 0 {
                break;
            }
        }
        ba.pump(&mut b)?;
        ab_sink.pump(&mut b)?;
        ba_sink.pump(&mut a)?;
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "seed {seed}: only {} of {RECORDS} records after 120 s",
            ab_sink.next_seq
        );
    }
    ensure!(ab.done() && ab_sink.received == ab.sent);
    let (sa, sb, na) = (a.stats(), b.stats(), a.port().stats());
    println!(
        "seed {seed}: {RECORDS} records, {} MB in {:.1} s; a: {sa:?}; b: {sb:?}; nic a: {na:?}",
        ab.sent / 1_000_000,
        start.elapsed().as_secs_f64()
    );
    ensure!(sa.queue_full > 0, "the send queue never filled: {sa:?}");
    ensure!(sa.credit_waits > 0, "the ring never filled: {sa:?}");
    ensure!(na.rnr_naks > 0 && na.reordered_writes > 0, "{na:?}");
    ensure!(sa.inline_writes > 0 && sa.staged_writes > 0, "{sa:?}");
    ensure!(sb.credit_piggybacked > 0 && sb.credit_writes > 0, "{sb:?}");
    Ok(())
}

#[test]
fn trailer_mode_with_in_order_placement() -> Result<()> {
    let seed = seed() ^ 0x7a11;
    let cfg = SimConfig {
        data_in_order: true,
        sq_depth: 32,
        seed,
        ..SimConfig::default()
    };
    let nic = SimNic::new();
    let opts = Opts {
        capacity: 32 << 10,
        visibility: Visibility::Trailer,
        signal_every: 8,
        completion_ack: false,
    };
    let (mut a, mut b) = links(&nic, cfg, cfg, &opts);
    let mut src = Source::new(seed, 150_000, 8 << 10);
    let mut sink = Sink::new(seed, 8 << 10);
    let start = Instant::now();
    while sink.next_seq < 150_000 {
        src.pump(&mut a)?;
        sink.pump(&mut b)?;
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "stalled at {}",
            sink.next_seq
        );
    }
    ensure!(b.stats().imms_received == 0, "trailer mode used immediates");
    ensure!(a.stats().credit_waits > 0);
    Ok(())
}

#[test]
fn completion_ack_never_runs_ahead_of_the_peers_memory() -> Result<()> {
    let seed = seed() ^ 0xac;
    let cfg = SimConfig {
        seed,
        steps_per_call: 1,
        ..SimConfig::default()
    };
    let nic = SimNic::new();
    let opts = Opts {
        capacity: 64 << 10,
        visibility: Visibility::Immediate,
        signal_every: 16,
        completion_ack: true,
    };
    let (mut a, mut b) = links(&nic, cfg, cfg, &opts);
    let mut src = Source::new(seed, 30_000, 2048);
    let mut sink = Sink::new(seed, 2048);
    let mut advanced = 0;
    let mut last = 0;
    while sink.next_seq < 30_000 {
        src.pump(&mut a)?;
        a.progress()?;
        let delivered = a.delivered();
        // What the completion proves landed, the peer can see at once.
        let landed = b.received() + b.readable()? as u64;
        ensure!(
            delivered <= landed,
            "delivered {delivered} > landed {landed}"
        );
        ensure!(delivered <= a.sent());
        if delivered > last {
            advanced += 1;
            last = delivered;
        }
        sink.pump(&mut b)?;
    }
    a.quiesce(Duration::from_secs(5))?;
    ensure!(
        a.delivered() == a.sent(),
        "{} of {}",
        a.delivered(),
        a.sent()
    );
    ensure!(advanced > 100, "delivered advanced only {advanced} times");
    Ok(())
}

/// The fault, and the completion status it must surface as.
const FATAL: [(Fault, WcStatus); 4] = [
    (Fault::LinkDown, WcStatus::RetryExceeded),
    (Fault::RemoteAccess, WcStatus::RemoteAccess),
    (Fault::QpError, WcStatus::Flushed),
    (Fault::RnrStorm { naks: 50 }, WcStatus::RnrRetryExceeded),
];

#[test]
fn every_injected_fault_is_an_error_not_corruption() -> Result<()> {
    let mut rng = Rng(seed() ^ 0xfa);
    let mut reported = [0u32; 4];
    for run in 0..80u64 {
        let kind = (run % 4) as usize;
        let (fault, status) = FATAL[kind];
        let at = rng.below(600);
        let cfg = SimConfig {
            sq_depth: 16,
            rq_depth: 16,
            rnr_retry: 3,
            retry_count: 1,
            ack_timeout: Duration::from_micros(500),
            seed: rng.next(),
            ..SimConfig::default()
        };
        let nic = SimNic::new();
        let opts = Opts {
            capacity: 16 << 10,
            visibility: Visibility::Immediate,
            signal_every: 1 + rng.below(8) as u32,
            completion_ack: rng.chance(300),
        };
        let (mut a, mut b) = links(&nic, cfg, cfg, &opts);
        a.port().inject(at, fault);
        let seed = rng.next();
        let mut src = Source::new(seed, u64::MAX, 4096);
        let mut sink = Sink::new(seed, 4096);
        let start = Instant::now();
        let err = loop {
            let r = src.pump(&mut a).and_then(|_| a.progress().map(|_| 0));
            if let Err(e) = r {
                break e;
            }
            // The receiver may fail too (a flushed receive); its bytes so far are checked.
            if let Err(e) = sink.pump(&mut b) {
                ensure!(
                    e.downcast_ref::<TransferError>().is_some(),
                    "run {run}: receiver corruption after {fault:?} at {at}: {e:#}"
                );
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!(
                    "run {run}: {fault:?} at work request {at} was never reported ({} records through)",
                    sink.next_seq
                );
            }
        };
        match &err {
            TransferError::Completion { status: s, .. } if *s == status => reported[kind] += 1,
            other => bail!(
                "run {run}: {fault:?} at {at} reported as {other}, expected status {status:?}"
            ),
        }
        // Sticky: the same error again, and nothing more is accepted.
        ensure!(
            a.send(&[b"more"]).unwrap_err() == err,
            "run {run}: error not sticky"
        );
        // Everything the receiver can still read is a correct prefix.
        for _ in 0..50 {
            if sink.pump(&mut b).is_err() {
                break;
            }
        }
        ensure!(sink.received <= src.sent);
    }
    ensure!(reported.iter().all(|&n| n == 20), "{reported:?}");
    Ok(())
}

/// A raw port that writes whatever it likes into a link's region.
fn hostile(local_visibility: Visibility) -> (SimPort, Link<SimPort>) {
    let nic = SimNic::new();
    let cfg = SimConfig::default();
    let (raw, pb) = nic.pair(cfg, cfg, 4096);
    let link = Link::new(
        pb,
        LinkParams {
            local_capacity: 4096,
            remote_capacity: 4096,
            local_visibility,
            remote_visibility: Visibility::Immediate,
            remote_rq_depth: cfg.rq_depth,
            signal_every: 1,
            max_inline: 64,
            completion_ack: false,
        },
    )
    .expect("link");
    (raw, link)
}

fn raw_write(p: &mut SimPort, bytes: &[u8], offset: usize, imm: Option<u32>) {
    p.post_writes(&[WriteRequest {
        wr_id: 0,
        source: WrSource::Inline(bytes),
        remote_offset: offset,
        imm,
        signaled: false,
    }])
    .expect("post");
}

fn first_error(link: &mut Link<SimPort>) -> Result<TransferError> {
    let mut buf = [0u8; 8192];
    for _ in 0..1000 {
        match link.recv(&mut buf) {
            Err(e) => return Ok(e),
            Ok(n) if n > 0 => bail!("delivered {n} bytes from a hostile peer"),
            Ok(_) => {}
        }
    }
    bail!("no error")
}

#[test]
fn a_hostile_peer_gets_errors_naming_the_bad_values() -> Result<()> {
    // An immediate beyond the ring.
    let (mut raw, mut link) = hostile(Visibility::Immediate);
    raw_write(
        &mut raw,
        &[1; 8],
        layout::DATA_OFFSET,
        Some(layout::encode_end(4097)),
    );
    let e = first_error(&mut link)?;
    assert_eq!(
        e.to_string(),
        "peer announced immediate 0x00001001, outside the window after position 0 (read position 0, ring of 4096 bytes)"
    );
    // A trailer behind the data already seen is as bad as one too far ahead.
    let (mut raw, mut link) = hostile(Visibility::Trailer);
    raw_write(
        &mut raw,
        &5000u64.to_le_bytes(),
        layout::TRAILER_OFFSET,
        None,
    );
    let e = first_error(&mut link)?;
    assert!(
        matches!(e, TransferError::BadTrailer { trailer: 5000, .. }),
        "{e}"
    );
    // (An immediate where trailers were agreed finds no receive posted: the
    // peer's NIC gets receiver-not-ready and the link never sees it.)
    // A well-formed credit for bytes never sent.
    let (mut raw, mut link) = hostile(Visibility::Immediate);
    let big = vec![0u8; 8192];
    ensure!(link.send(&[&big])? == 4096, "the first send fills the ring");
    raw_write(
        &mut raw,
        &layout::encode_credit(10_000, 0),
        layout::CREDIT_OFFSET,
        None,
    );
    for _ in 0..50 {
        link.progress().context("progress")?;
    }
    let e = link.send(&[&big]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "peer stored credit 10000 (immediates 0); valid: 0..=4096 and 0..=1"
    );
    Ok(())
}

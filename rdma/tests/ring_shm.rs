//! The one-sided ring protocol over the shm port: two ends on two threads,
//! each with its own mapping of one memfd, in both visibility modes; and the
//! proof that trailer mode is the pipe protocol (a `PipeReader` reads it).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use common::{Sink, Source};
use ftvm_rdma::port::{Completion, OneSidedPort, Source as WrSource, WriteRequest};
use ftvm_rdma::shm::{ShmConfig, ShmPort};
use ftvm_rdma::{Link, LinkParams, Visibility, layout};

fn params(cfg: &ShmConfig, visibility: Visibility) -> LinkParams {
    LinkParams {
        local_capacity: cfg.capacity,
        remote_capacity: cfg.capacity,
        local_visibility: visibility,
        remote_visibility: visibility,
        remote_rq_depth: cfg.rq_depth,
        signal_every: 8,
        max_inline: cfg.max_inline,
        completion_ack: false,
    }
}

/// One end: sends `send` records, receives `recv` records, on its own thread.
fn end(
    mut link: Link<ShmPort>,
    send: (u64, u64),
    recv: (u64, u64),
) -> thread::JoinHandle<Result<Link<ShmPort>>> {
    thread::spawn(move || {
        let mut src = Source::new(send.0, send.1, 6000);
        let mut sink = Sink::new(recv.0, 6000);
        let start = Instant::now();
        while !src.done() || sink.next_seq < recv.1 {
            let moved = src.pump(&mut link)? + sink.pump(&mut link)?;
            if !link.progress()? && moved == 0 {
                // Two spinning ends may share one core: let the other run.
                thread::yield_now();
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "stalled: sent {} of {}, received {} of {}",
                src.next_seq,
                send.1,
                sink.next_seq,
                recv.1
            );
        }
        Ok(link)
    })
}

fn both_ways(visibility: Visibility) -> Result<()> {
    let cfg = ShmConfig {
        capacity: 64 << 10,
        sq_depth: 32,
        rq_depth: 32,
        max_inline: 128,
    };
    let (a, b) = ShmPort::pair(cfg)?;
    let a = Link::new(a, params(&cfg, visibility))?;
    let b = Link::new(b, params(&cfg, visibility))?;
    let ta = end(a, (11, 100_000), (22, 30_000));
    let tb = end(b, (22, 30_000), (11, 100_000));
    let a = ta.join().map_err(|_| anyhow!("end a panicked"))??;
    let b = tb.join().map_err(|_| anyhow!("end b panicked"))??;
    let (sa, sb) = (a.stats(), b.stats());
    ensure!(sa.bytes_sent == sb.bytes_received && sb.bytes_sent == sa.bytes_received);
    ensure!(sa.credit_waits > 0 || sb.credit_waits > 0, "{sa:?} {sb:?}");
    match visibility {
        Visibility::Immediate => ensure!(sb.imms_received > 0),
        Visibility::Trailer => ensure!(sb.imms_received == 0),
    }
    Ok(())
}

#[test]
fn records_both_ways_with_immediates() -> Result<()> {
    both_ways(Visibility::Immediate)
}

#[test]
fn records_both_ways_with_trailers() -> Result<()> {
    both_ways(Visibility::Trailer)
}

#[test]
fn trailer_mode_is_the_pipe_protocol() -> Result<()> {
    let cfg = ShmConfig {
        capacity: 4096,
        ..ShmConfig::default()
    };
    let (a, mut b) = ShmPort::pair(cfg)?;
    let mut link = Link::new(a, params(&cfg, Visibility::Trailer))?;
    // SAFETY: b's region is a formatted pipe region of region_len(4096)
    // bytes in b's mapping, alive until `b` drops (after the reader).
    let mut reader = unsafe {
        ftvm_ring::pipe::PipeReader::attach(
            b.local_region_ptr().cast_mut(),
            layout::region_len(cfg.capacity),
        )
    }?;
    let mut src = Source::new(5, 20_000, 1500);
    let mut sink = Sink::new(5, 1500);
    let mut buf = vec![0u8; 3000];
    while sink.next_seq < 20_000 {
        src.pump(&mut link)?;
        let n = reader.read(&mut buf)?;
        sink.take(&buf[..n])?;
        if n > 0 {
            // The reader's credit goes back the RDMA way: a credit write into a's region.
            let credit = layout::encode_credit(reader.position(), 0);
            b.post_writes(&[WriteRequest {
                wr_id: 0,
                source: WrSource::Inline(&credit),
                remote_offset: layout::CREDIT_OFFSET,
                imm: None,
                signaled: true,
            }])?;
            let mut c = Vec::new();
            b.poll(&mut c, 8)?;
        }
    }
    ensure!(reader.position() == src.sent);
    Ok(())
}

#[test]
fn a_receiver_without_receives_holds_the_writer_back_then_releases_it() -> Result<()> {
    let cfg = ShmConfig {
        capacity: 4096,
        rq_depth: 8,
        ..ShmConfig::default()
    };
    let (a, mut b) = ShmPort::pair(cfg)?;
    let mut link = Link::new(a, params(&cfg, Visibility::Immediate))?;
    b.post_receives(2)?;
    for i in 0..3u8 {
        ensure!(link.send(&[&[i; 16]])? == 16);
    }
    let mut c = Vec::new();
    b.poll(&mut c, 8)?;
    ensure!(c.len() == 2, "{c:?}");
    ensure!(
        link.port().rnr_waits > 0,
        "the third write met no receiver-not-ready"
    );
    b.post_receives(1)?;
    link.progress()?; // the port retries the waiting write
    c.clear();
    b.poll(&mut c, 8)?;
    ensure!(
        c == [Completion::Recv {
            imm: Some(48),
            status: ftvm_rdma::WcStatus::Success
        }],
        "{c:?}"
    );
    let mut data = [0u8; 48];
    b.read_local(layout::DATA_OFFSET, &mut data);
    ensure!(data[..16] == [0; 16] && data[16..32] == [1; 16] && data[32..] == [2; 16]);
    Ok(())
}

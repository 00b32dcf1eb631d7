//! Micro-benchmark of the record ring and the byte pipe across two pinned
//! threads, each figure beside a floor measured in the same run (a bare
//! atomic ping-pong between the same two threads).
//!
//! `cargo bench -p ftvm-ring` (optionally `-- --quick`).

use std::hint::spin_loop;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ftvm_ring::log::{self, Consumer, Producer};
use ftvm_ring::pipe::{self, PipeReader, PipeWriter};

fn pin(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        // Best effort: on failure the figures are just noisier.
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>, floor_p50: Option<Duration>) -> Duration {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let p50 = at(0.5);
    let ratio = floor_p50.map_or(String::new(), |f| {
        format!(
            "  ({:.2}x floor)",
            p50.as_nanos() as f64 / f.as_nanos().max(1) as f64
        )
    });
    println!(
        "{name:<38} rtt p50 {:>7.2?} p99 {:>7.2?} p99.9 {:>7.2?} max {:>8.2?}{ratio}",
        p50,
        at(0.99),
        at(0.999),
        samples[samples.len() - 1]
    );
    p50
}

/// Floor: one AtomicU64 bounced between two threads.
fn floor_rtt(rounds: usize) -> Vec<Duration> {
    let flag = Arc::new(AtomicU64::new(0));
    let peer = Arc::clone(&flag);
    let echo = thread::spawn(move || {
        pin(1);
        for i in 0..rounds as u64 {
            // Acquire/Release: a plain hand-off; pairs with the main thread's ops.
            while peer.load(Ordering::Acquire) != 2 * i + 1 {
                spin_loop();
            }
            peer.store(2 * i + 2, Ordering::Release);
        }
    });
    pin(0);
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds as u64 {
        let start = Instant::now();
        flag.store(2 * i + 1, Ordering::Release);
        while flag.load(Ordering::Acquire) != 2 * i + 2 {
            spin_loop();
        }
        samples.push(start.elapsed());
    }
    echo.join().unwrap();
    samples
}

/// Writes the whole record (as the vCPU writes a frame), `value` at bytes 8..16.
fn send(producer: &mut Producer, len: usize, value: u64) {
    loop {
        if let Ok(mut claim) = producer.claim(len) {
            let buf = claim.buf();
            buf.fill(value as u8);
            buf[8..16].copy_from_slice(&value.to_le_bytes());
            claim.commit();
            return;
        }
        spin_loop();
    }
}

fn receive(consumer: &mut Consumer) -> u64 {
    loop {
        let chunk = consumer.read();
        if let Some(record) = chunk.records().next() {
            let value = u64::from_le_bytes(record[8..16].try_into().unwrap());
            let len = record.len();
            chunk.release_up_to(len);
            return value;
        }
        spin_loop();
    }
}

/// One 64-byte record there, one back, through two record rings.
fn log_rtt(rounds: usize) -> Vec<Duration> {
    let (mut there_p, mut there_c) = log::with_capacity(64 * 1024).unwrap();
    let (mut back_p, mut back_c) = log::with_capacity(64 * 1024).unwrap();
    let echo = thread::spawn(move || {
        pin(1);
        for _ in 0..rounds {
            let value = receive(&mut there_c);
            send(&mut back_p, 64, value);
        }
    });
    pin(0);
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds as u64 {
        let start = Instant::now();
        send(&mut there_p, 64, i);
        assert_eq!(receive(&mut back_c), i);
        samples.push(start.elapsed());
    }
    echo.join().unwrap();
    samples
}

/// One-way streaming throughput of `len`-byte records: the producer writes
/// every byte, the consumer walks the length words and releases (the sender
/// hands the slices to the kernel without touching the payload).
fn log_throughput(len: usize, records: u64) {
    let (mut producer, mut consumer) = log::with_capacity(64 * 1024).unwrap();
    let reader = thread::spawn(move || {
        pin(1);
        let mut seen = 0u64;
        while seen < records {
            let chunk = consumer.read();
            seen += chunk.records().count() as u64;
            chunk.release_all();
        }
    });
    pin(0);
    let start = Instant::now();
    for i in 0..records {
        send(&mut producer, len, i);
    }
    reader.join().unwrap();
    let elapsed = start.elapsed();
    println!(
        "{:<38} {:>7.1} M records/s {:>6.2} GB/s",
        format!("log stream {len} B records"),
        records as f64 / elapsed.as_secs_f64() / 1e6,
        (records * len as u64) as f64 / elapsed.as_secs_f64() / 1e9
    );
}

/// Code cost without cache-line transfers: one thread commits a batch of 16
/// records, reads and releases them, repeatedly.
fn log_single_thread(len: usize, records: u64) {
    let (mut producer, mut consumer) = log::with_capacity(64 * 1024).unwrap();
    let start = Instant::now();
    let mut seen = 0u64;
    for i in 0..records / 16 {
        for j in 0..16 {
            send(&mut producer, len, i * 16 + j);
        }
        let chunk = consumer.read();
        seen += chunk.records().count() as u64;
        chunk.release_all();
    }
    assert_eq!(seen, records / 16 * 16);
    let elapsed = start.elapsed();
    println!(
        "{:<38} {:>7.1} M records/s {:>6.2} GB/s",
        format!("log one thread {len} B records"),
        seen as f64 / elapsed.as_secs_f64() / 1e6,
        (seen * len as u64) as f64 / elapsed.as_secs_f64() / 1e9
    );
}

/// A heap region standing in for the shared mapping (same code path).
struct Region(Vec<u128>);

impl Region {
    fn pipe(&mut self) -> (PipeWriter, PipeReader) {
        let len = self.0.len() * 16;
        let ptr = self.0.as_mut_ptr().cast::<u8>();
        // SAFETY: `self` outlives both ends (the bench joins before dropping);
        // Vec<u128> is 16-aligned, so align the start to 128 by skipping.
        unsafe {
            let skip = ptr.align_offset(pipe::REGION_ALIGN);
            let (ptr, len) = (ptr.add(skip), len - skip);
            pipe::init(ptr, len).unwrap();
            (
                PipeWriter::attach(ptr, len).unwrap(),
                PipeReader::attach(ptr, len).unwrap(),
            )
        }
    }
}

fn pipe_rtt(rounds: usize) -> Vec<Duration> {
    let size = (pipe::region_len(64 * 1024) + pipe::REGION_ALIGN) / 16;
    let (mut there, mut back) = (Region(vec![0; size]), Region(vec![0; size]));
    let (mut tw, mut tr) = there.pipe();
    let (mut bw, mut br) = back.pipe();
    let echo = thread::spawn(move || {
        pin(1);
        let mut msg = [0u8; 64];
        for _ in 0..rounds {
            let mut got = 0;
            while got < 64 {
                got += tr.read(&mut msg[got..]).unwrap();
            }
            let mut sent = 0;
            while sent < 64 {
                sent += bw.write(&[&msg[sent..]]);
            }
        }
    });
    pin(0);
    let mut samples = Vec::with_capacity(rounds);
    let mut msg = [0u8; 64];
    for i in 0..rounds as u64 {
        let start = Instant::now();
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let mut sent = 0;
        while sent < 64 {
            sent += tw.write(&[&msg[sent..]]);
        }
        let mut got = 0;
        while got < 64 {
            got += br.read(&mut msg[got..]).unwrap();
        }
        assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), i);
        samples.push(start.elapsed());
    }
    echo.join().unwrap();
    // The ends (declared after the regions) drop before them.
    samples
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 20_000 } else { 200_000 };
    let records = if quick { 2_000_000 } else { 20_000_000 };
    println!("ftvm-ring micro-benchmark: 2 threads pinned to cores 0 and 1, {rounds} round trips");
    let floor = percentiles("floor: AtomicU64 ping-pong", floor_rtt(rounds), None);
    percentiles(
        "log ring 64 B record ping-pong",
        log_rtt(rounds),
        Some(floor),
    );
    percentiles("pipe 64 B message ping-pong", pipe_rtt(rounds), Some(floor));
    for len in [64, 512, 4096] {
        log_throughput(len, records * 64 / len as u64);
    }
    for len in [64, 512, 4096] {
        log_single_thread(len, records * 64 / len as u64);
    }
}

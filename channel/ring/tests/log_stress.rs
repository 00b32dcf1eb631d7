//! Two threads move 10^7 records of random sizes through a 64 KiB record ring
//! (it wraps every few hundred records); the consumer checks every byte and
//! the order of every record.

use std::thread;
use std::time::{Duration, Instant};

use ftvm_ring::idle::{IdleKind, Idler};
use ftvm_ring::log::{self, ClaimError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const RECORDS: u64 = 10_000_000;
const CAPACITY: usize = 64 * 1024;
/// A bug that stalls either side fails the test instead of hanging it.
const WATCHDOG: Duration = Duration::from_secs(120);

/// The u64 at word `word` (>= 1) of record `seq`.
fn pattern(seq: u64, word: usize) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (word as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Mostly small records, sometimes up to the maximum.
fn record_len(rng: &mut SmallRng, max: usize) -> usize {
    let upper = match rng.random_range(0..1000) {
        0 => max,
        1..=49 => 2048,
        _ => 128,
    };
    rng.random_range(1..=upper / 8) * 8
}

fn fill(buf: &mut [u8], seq: u64) {
    // Bytes 0..4: the length word (written by commit); 4..8: low half of seq.
    buf[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
    for (word, chunk) in buf.chunks_exact_mut(8).enumerate().skip(1) {
        chunk.copy_from_slice(&pattern(seq, word).to_le_bytes());
    }
}

fn check(record: &[u8], seq: u64) {
    let len = u32::from_le_bytes(record[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, record.len(), "record {seq}: length word vs slice");
    assert_eq!(
        u32::from_le_bytes(record[4..8].try_into().unwrap()),
        seq as u32,
        "record order broken at seq {seq}"
    );
    for (word, chunk) in record.chunks_exact(8).enumerate().skip(1) {
        let found = u64::from_le_bytes(chunk.try_into().unwrap());
        assert_eq!(
            found,
            pattern(seq, word),
            "record {seq} ({len} bytes): word {word} corrupt"
        );
    }
}

#[test]
fn ten_million_records_cross_threads_intact() {
    let (mut producer, mut consumer) = log::with_capacity(CAPACITY).unwrap();
    let start = Instant::now();

    let producer_thread = thread::spawn(move || {
        let mut rng = SmallRng::seed_from_u64(0xF7F7_0001);
        let mut idler = Idler::new(IdleKind::SpinYield, 64, Duration::ZERO);
        let max = producer.max_record_len();
        let (mut full, mut bytes) = (0u64, 0u64);
        for seq in 0..RECORDS {
            let len = record_len(&mut rng, max);
            loop {
                match producer.claim(len) {
                    Ok(mut claim) => {
                        fill(claim.buf(), seq);
                        claim.commit();
                        idler.reset();
                        break;
                    }
                    Err(ClaimError::Full { .. }) => {
                        full += 1;
                        assert!(start.elapsed() < WATCHDOG, "producer stalled at seq {seq}");
                        idler.idle(0);
                    }
                    Err(other) => panic!("claim({len}) at seq {seq}: {other}"),
                }
            }
            bytes += len as u64;
        }
        (full, bytes, producer.position())
    });

    let mut rng = SmallRng::seed_from_u64(0xF7F7_0002);
    let mut idler = Idler::new(IdleKind::SpinYield, 64, Duration::ZERO);
    let (mut seq, mut bytes, mut partial_releases) = (0u64, 0u64, 0u64);
    while seq < RECORDS {
        let chunk = consumer.read();
        if chunk.is_empty() {
            assert!(start.elapsed() < WATCHDOG, "consumer stalled at seq {seq}");
            idler.idle(0);
            continue;
        }
        idler.reset();
        // Release everything most of the time, else a random prefix: only the
        // whole records inside it count as consumed.
        let limit = if rng.random_range(0..4) == 0 {
            partial_releases += 1;
            rng.random_range(0..=chunk.len())
        } else {
            chunk.len()
        };
        let mut taken = 0;
        for record in chunk.records() {
            if taken + record.len() > limit {
                break;
            }
            check(record, seq);
            taken += record.len();
            seq += 1;
        }
        assert_eq!(chunk.release_up_to(limit), taken, "release_up_to({limit})");
        bytes += taken as u64;
    }
    let (full, produced, tail) = producer_thread.join().unwrap();
    assert!(consumer.is_empty(), "records beyond {RECORDS}");
    assert_eq!(bytes, produced);
    assert_eq!(consumer.position(), tail, "padding accounted identically");
    assert!(tail > produced, "the ring never wrapped with padding");
    println!(
        "{RECORDS} records, {produced} bytes, {} padding bytes, {full} full claims, \
         {partial_releases} partial releases in {:?}",
        tail - produced,
        start.elapsed()
    );
}

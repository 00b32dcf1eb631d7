//! Unit tests of the record ring: claim/commit/read/release, wrap, errors.

use super::*;

/// Commits one record of `len` bytes whose bytes after the length word are `fill`.
fn push(producer: &mut Producer, len: usize, fill: u8) {
    let mut claim = producer.claim(len).expect("room for the record");
    claim.buf().fill(fill);
    claim.commit();
}

/// (length word, fill byte) of every record in a fresh read, checking each
/// record's body is uniform.
fn records(consumer: &mut Consumer) -> Vec<(usize, u8)> {
    let chunk = consumer.read();
    chunk
        .records()
        .map(|r| {
            let word = u32::from_le_bytes(r[0..4].try_into().unwrap()) as usize;
            assert_eq!(word, r.len(), "length word disagrees with the record slice");
            assert!(r[4..].iter().all(|&b| b == r[4]), "record body not uniform");
            (word, r[4])
        })
        .collect()
}

#[test]
fn capacity_must_be_a_power_of_two_in_range() {
    for capacity in [
        0,
        1,
        1000,
        2048,
        4095,
        4097,
        6144,
        (1 << 31) + 4096,
        1 << 32,
    ] {
        assert_eq!(
            with_capacity(capacity).err(),
            Some(RingError::BadCapacity { capacity }),
            "capacity {capacity}"
        );
    }
    let (producer, _consumer) = with_capacity(4096).unwrap();
    assert_eq!(producer.capacity(), 4096);
    assert_eq!(producer.max_record_len(), 2048);
    assert_eq!(producer.free_bytes(), 4096);
    let message = with_capacity(1000).unwrap_err().to_string();
    assert!(message.contains("1000"), "{message}");
}

#[test]
fn claim_commit_read_release_round_trip() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    assert!(consumer.is_empty());
    assert!(consumer.read().is_empty());

    let mut claim = producer.claim(24).unwrap();
    assert_eq!(claim.buf().len(), 24);
    assert_eq!(claim.len(), 24);
    // Garbage in the length word is overwritten by commit.
    claim.buf().copy_from_slice(&[0xAB; 24]);
    claim.commit();
    push(&mut producer, 8, 0x11);
    assert_eq!(producer.position(), 32);
    assert_eq!(producer.free_bytes(), 4096 - 32);

    assert!(!consumer.is_empty());
    let chunk = consumer.read();
    assert_eq!(chunk.len(), 32);
    let (first, second) = chunk.slices();
    assert_eq!(first.len(), 32);
    assert!(second.is_empty());
    assert_eq!(&first[0..4], &24u32.to_le_bytes());
    assert_eq!(&first[4..24], &[0xAB; 20]);
    assert_eq!(&first[24..28], &8u32.to_le_bytes());
    assert_eq!(&first[28..32], &[0x11; 4]);
    // `chunk` is not used again: going out of use releases nothing.

    assert_eq!(records(&mut consumer), vec![(24, 0xAB), (8, 0x11)]);
    consumer.read().release_all();
    assert_eq!(consumer.position(), 32);
    assert!(consumer.is_empty());
    assert_eq!(producer.free_bytes(), 4096);
}

#[test]
fn bad_lengths_and_too_large_are_rejected() {
    let (mut producer, mut consumer) = with_capacity(8192).unwrap();
    for len in [0, 1, 4, 7, 12, 4097] {
        assert_eq!(
            producer.claim(len).unwrap_err(),
            ClaimError::BadLength { len },
            "len {len}"
        );
    }
    assert_eq!(
        producer.claim(4096 + 8).unwrap_err(),
        ClaimError::TooLarge {
            len: 4104,
            max: 4096
        }
    );
    let message = producer.claim(12).unwrap_err().to_string();
    assert!(message.contains("12"), "{message}");
    // The largest record is accepted, twice (the whole ring).
    push(&mut producer, 4096, 1);
    push(&mut producer, 4096, 2);
    assert_eq!(records(&mut consumer), vec![(4096, 1), (4096, 2)]);
    assert!(consumer.read().len() == 8192);
}

#[test]
fn full_ring_reports_needed_and_free_then_recovers() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    push(&mut producer, 2048, 1);
    push(&mut producer, 2000, 2);
    // 56 bytes would wrap: 48 of padding plus the record.
    assert_eq!(
        producer.claim(56).unwrap_err(),
        ClaimError::Full {
            needed: 104,
            free: 48
        }
    );
    push(&mut producer, 48, 3);
    assert_eq!(
        producer.claim(8).unwrap_err(),
        ClaimError::Full { needed: 8, free: 0 }
    );
    let message = producer.claim(8).unwrap_err().to_string();
    assert!(
        message.contains("needs 8") && message.contains("0 free"),
        "{message}"
    );

    // Releasing the first record gives its space back.
    assert_eq!(consumer.read().release_up_to(2048), 2048);
    assert_eq!(producer.free_bytes(), 2048);
    push(&mut producer, 2048, 4);
    assert_eq!(records(&mut consumer), vec![(2000, 2), (48, 3), (2048, 4)]);
}

#[test]
fn abandoned_claim_publishes_nothing_and_space_is_reused() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    {
        let mut claim = producer.claim(64).unwrap();
        claim.buf().fill(0xEE);
    }
    assert!(consumer.is_empty());
    assert_eq!(producer.position(), 0);
    assert_eq!(producer.free_bytes(), 4096);
    push(&mut producer, 16, 5);
    assert_eq!(records(&mut consumer), vec![(16, 5)]);

    // An abandoned wrapping claim leaves no padding behind either.
    consumer.read().release_all();
    push(&mut producer, 2048, 6);
    push(&mut producer, 1984, 7); // tail index 4048, 48 to the end
    consumer.read().release_all();
    {
        let _abandoned = producer.claim(64).unwrap(); // would pad 48 bytes
    }
    assert_eq!(producer.position(), 4048);
    push(&mut producer, 48, 8); // fits exactly before the end: no padding
    assert_eq!(producer.position(), 4096);
    assert_eq!(records(&mut consumer), vec![(48, 8)]);
}

#[test]
fn wrapping_record_is_preceded_by_padding() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    push(&mut producer, 1024, 1);
    push(&mut producer, 1024, 2);
    push(&mut producer, 1024, 3);
    push(&mut producer, 1000, 4); // tail index 4072: 24 bytes to the end
    assert_eq!(consumer.read().release_up_to(1024), 1024);
    // 512 does not fit in 24: padding of 24, record at index 0.
    push(&mut producer, 512, 5);
    assert_eq!(producer.position(), 4072 + 24 + 512);

    let chunk = consumer.read();
    let (first, second) = chunk.slices();
    assert_eq!(
        first.len(),
        1024 + 1024 + 1000,
        "first stops at the padding"
    );
    assert_eq!(second.len(), 512, "second starts at index 0");
    assert_eq!(chunk.len(), first.len() + second.len());
    assert_eq!(&second[0..4], &512u32.to_le_bytes());
    assert_eq!(
        records(&mut consumer),
        vec![(1024, 2), (1024, 3), (1000, 4), (512, 5)]
    );

    // The padding word itself is in the buffer, flagged.
    let chunk = consumer.read();
    let (first, _) = chunk.slices();
    // SAFETY: index 4072 is inside the 4096-byte buffer; the consumer
    // owns the committed padding record.
    let word = unsafe { chunk.consumer.region.read_word(4072) };
    assert_eq!(word, 24 | PADDING_FLAG);
    assert_eq!(first.len(), 3048);

    // Releasing up to (not through) the last record before the padding keeps it.
    assert_eq!(chunk.release_up_to(2047), 1024);
    assert_eq!(consumer.position(), 2048);
    // Releasing the last record before the padding releases the padding too.
    assert_eq!(consumer.read().release_up_to(2024), 2024);
    assert_eq!(consumer.position(), 4096);
    assert_eq!(records(&mut consumer), vec![(512, 5)]);
    let chunk = consumer.read();
    assert!(chunk.slices().1.is_empty());
    chunk.release_all();
    assert_eq!(consumer.position(), 4096 + 512);
    assert_eq!(producer.free_bytes(), 4096);
}

#[test]
fn padding_at_the_consumer_position_is_skipped() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    push(&mut producer, 2048, 1);
    push(&mut producer, 2024, 2); // tail index 4072
    consumer.read().release_all(); // no padding yet: head stops at 4072
    assert_eq!(consumer.position(), 4072);
    push(&mut producer, 64, 3); // padding 24 at 4072, record at 0
    let chunk = consumer.read();
    let (first, second) = chunk.slices();
    assert_eq!((first.len(), second.len()), (64, 0));
    assert_eq!(&first[0..4], &64u32.to_le_bytes());
    chunk.release_all();
    assert_eq!(consumer.position(), 4096 + 64);
}

#[test]
fn records_ending_exactly_at_the_buffer_end_wrap_without_padding() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    push(&mut producer, 2048, 1);
    push(&mut producer, 1024, 2);
    consumer.read().release_up_to(2048);
    push(&mut producer, 1024, 3); // ends exactly at 4096
    push(&mut producer, 16, 4); // starts at 0, no padding
    assert_eq!(producer.position(), 4096 + 16);
    let chunk = consumer.read();
    let (first, second) = chunk.slices();
    assert_eq!((first.len(), second.len()), (2048, 16));
    assert_eq!(chunk.release_up_to(2048 + 8), 2048);
    assert_eq!(consumer.position(), 4096);
    assert_eq!(records(&mut consumer), vec![(16, 4)]);
}

#[test]
fn release_up_to_stops_at_record_boundaries() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    for (len, fill) in [(64, 1), (128, 2), (256, 3)] {
        push(&mut producer, len, fill);
    }
    assert_eq!(consumer.read().release_up_to(0), 0);
    assert_eq!(consumer.read().release_up_to(63), 0);
    assert_eq!(consumer.position(), 0);
    assert_eq!(consumer.read().release_up_to(64 + 127), 64);
    assert_eq!(consumer.position(), 64);
    assert_eq!(consumer.read().release_up_to(usize::MAX), 384);
    assert_eq!(consumer.position(), 448);
    assert!(consumer.is_empty());
}

#[test]
fn record_larger_than_free_space_after_padding_is_full() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    for fill in 1..=3 {
        push(&mut producer, 1024, fill);
    }
    push(&mut producer, 512, 4); // tail index 3584: 512 to the end
    consumer.read().release_up_to(1024); // free 1536
    // 1280 <= 1536 free, but with 512 of padding it needs 1792.
    assert_eq!(
        producer.claim(1280).unwrap_err(),
        ClaimError::Full {
            needed: 1792,
            free: 1536
        }
    );
    // A record that fits before the end needs no padding.
    push(&mut producer, 512, 5);
    consumer.read().release_up_to(1024);
    // The tail is at index 0 now and 2048 bytes are free: no padding needed.
    push(&mut producer, 1280, 6);
    assert_eq!(
        records(&mut consumer),
        vec![(1024, 3), (512, 4), (512, 5), (1280, 6)]
    );
}

#[test]
fn max_record_fits_after_padding_once_drained() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    push(&mut producer, 2048, 1);
    push(&mut producer, 1032, 2); // tail index 3080
    assert!(
        matches!(producer.claim(2048), Err(ClaimError::Full { needed, free: 1016 }) if needed == 1016 + 2048)
    );
    consumer.read().release_all();
    push(&mut producer, 2048, 3); // padding 1016, record at 0
    assert_eq!(records(&mut consumer), vec![(2048, 3)]);
}

#[test]
fn many_laps_keep_order_and_contents() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    let lens = [8, 16, 200, 1000, 2048, 40, 8, 776, 1512];
    let mut expected = std::collections::VecDeque::new();
    let mut fill = 0u8;
    for round in 0..2000 {
        let len = lens[round % lens.len()];
        loop {
            match producer.claim(len) {
                Ok(mut claim) => {
                    fill = fill.wrapping_add(1);
                    claim.buf().fill(fill);
                    claim.commit();
                    expected.push_back((len, fill));
                    break;
                }
                Err(ClaimError::Full { .. }) => {
                    let chunk = consumer.read();
                    let seen: Vec<_> = chunk.records().map(|r| (r.len(), r[4])).take(2).collect();
                    let take: usize = seen.iter().map(|s| s.0).sum();
                    assert_eq!(chunk.release_up_to(take), take);
                    for s in seen {
                        assert_eq!(Some(s), expected.pop_front());
                    }
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
    }
    assert_eq!(records(&mut consumer), Vec::from(expected));
}

#[test]
fn ends_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Producer>();
    assert_send::<Consumer>();
}

#[test]
fn a_truncated_claim_commits_its_new_length_and_frees_the_rest() {
    let (mut producer, mut consumer) = with_capacity(4096).unwrap();
    let mut claim = producer.claim(1024).unwrap();
    assert_eq!(
        claim.truncate(1032),
        Err(ClaimError::BadLength { len: 1032 })
    );
    assert_eq!(claim.truncate(12), Err(ClaimError::BadLength { len: 12 }));
    assert_eq!(claim.truncate(0), Err(ClaimError::BadLength { len: 0 }));
    claim.truncate(64).unwrap();
    assert_eq!(claim.len(), 64);
    claim.buf().fill(7);
    claim.commit();
    assert_eq!(producer.position(), 64);
    push(&mut producer, 32, 9);
    assert_eq!(records(&mut consumer), vec![(64, 7), (32, 9)]);
}

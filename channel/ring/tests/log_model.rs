//! Model-based property test of the record ring: random claims (committed or
//! abandoned, some invalid), reads and partial releases, checked step by step
//! against a plain model of positions, padding and records.

use std::collections::VecDeque;

use ftvm_ring::log::{self, ClaimError, Consumer, Producer};
use proptest::prelude::*;

const CAPACITY: usize = 4096;

#[derive(Clone, Debug)]
enum Op {
    /// Claim `len` bytes; commit or abandon.
    Claim { len: usize, commit: bool },
    /// Read, then release a prefix of at most `permille`/1000 of the chunk.
    Release { permille: usize },
    /// Read and release everything.
    ReleaseAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..=2200, any::<bool>()).prop_map(|(len, commit)| Op::Claim { len, commit: commit || len % 3 != 0 }),
        6 => (1usize..=CAPACITY / 8 / 2).prop_map(|words| Op::Claim { len: words * 8, commit: true }),
        3 => (0usize..=1000).prop_map(|permille| Op::Release { permille }),
        1 => Just(Op::ReleaseAll),
    ]
}

/// A committed record in the model.
#[derive(Clone, Copy, Debug)]
struct Record {
    start: u64,
    len: usize,
    fill: u8,
}

#[derive(Default)]
struct Model {
    head: u64,
    tail: u64,
    records: VecDeque<Record>,
    fills: u8,
}

impl Model {
    fn claim(&self, len: usize) -> Result<(u64, usize), ClaimError> {
        if len < 8 || !len.is_multiple_of(8) {
            return Err(ClaimError::BadLength { len });
        }
        if len > CAPACITY / 2 {
            return Err(ClaimError::TooLarge {
                len,
                max: CAPACITY / 2,
            });
        }
        let index = (self.tail % CAPACITY as u64) as usize;
        let padding = if len <= CAPACITY - index {
            0
        } else {
            CAPACITY - index
        };
        let free = CAPACITY - (self.tail - self.head) as usize;
        if padding + len > free {
            return Err(ClaimError::Full {
                needed: padding + len,
                free,
            });
        }
        Ok((self.tail + padding as u64, padding))
    }

    /// Where the consumer position lands once the first `n` records are released.
    fn head_after(&self, n: usize) -> u64 {
        self.records.get(n).map_or(self.tail, |r| r.start)
    }

    /// Bytes of the first slice: records up to the end of the first record's lap.
    fn first_len(&self) -> usize {
        let Some(first) = self.records.front() else {
            return 0;
        };
        let lap_end = first.start - first.start % CAPACITY as u64 + CAPACITY as u64;
        self.records
            .iter()
            .take_while(|r| r.start < lap_end)
            .map(|r| r.len)
            .sum()
    }
}

fn check_read(consumer: &mut Consumer, model: &mut Model) {
    let chunk = consumer.read();
    // `read` steps over a padding record at the consumer position (its records
    // were released before the producer wrapped).
    if let Some(first) = model.records.front() {
        model.head = first.start;
    }
    let (first, second) = chunk.slices();
    assert_eq!(first.len(), model.first_len(), "first slice length");
    assert_eq!(
        chunk.len(),
        model.records.iter().map(|r| r.len).sum::<usize>()
    );
    assert_eq!(first.len() + second.len(), chunk.len());
    let seen: Vec<(usize, u8)> = chunk.records().map(|r| (r.len(), r[r.len() - 1])).collect();
    let expected: Vec<(usize, u8)> = model.records.iter().map(|r| (r.len, r.fill)).collect();
    assert_eq!(seen, expected, "records in order");
    for record in chunk.records() {
        assert_eq!(
            u32::from_le_bytes(record[..4].try_into().unwrap()) as usize,
            record.len()
        );
        assert!(
            record[4..].iter().all(|&b| b == record[record.len() - 1]),
            "record body"
        );
    }
    assert_eq!(
        consumer.position(),
        model.head,
        "consumer position after read"
    );
}

fn run(ops: &[Op]) {
    let (mut producer, mut consumer): (Producer, Consumer) = log::with_capacity(CAPACITY).unwrap();
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Claim { len, commit } => match (producer.claim(len), model.claim(len)) {
                (Ok(mut claim), Ok((start, _padding))) => {
                    assert_eq!(claim.buf().len(), len);
                    if commit {
                        model.fills = model.fills.wrapping_add(1);
                        claim.buf().fill(model.fills);
                        claim.commit();
                        model.records.push_back(Record {
                            start,
                            len,
                            fill: model.fills,
                        });
                        model.tail = start + len as u64;
                    } else {
                        claim.buf().fill(0xEE);
                    }
                }
                (Err(found), Err(expected)) => assert_eq!(found, expected, "claim({len})"),
                (found, expected) => panic!("claim({len}): ring {found:?}, model {expected:?}"),
            },
            Op::Release { permille } => {
                check_read(&mut consumer, &mut model);
                let chunk = consumer.read();
                let limit = chunk.len() * permille / 1000;
                let (mut n, mut bytes) = (0, 0);
                while let Some(r) = model.records.get(n).filter(|r| bytes + r.len <= limit) {
                    bytes += r.len;
                    n += 1;
                }
                assert_eq!(chunk.release_up_to(limit), bytes, "release_up_to({limit})");
                if n > 0 {
                    model.head = model.head_after(n);
                }
                model.records.drain(..n);
                if n > 0 {
                    assert_eq!(consumer.position(), model.head, "consumer position");
                }
            }
            Op::ReleaseAll => {
                check_read(&mut consumer, &mut model);
                consumer.read().release_all();
                model.head = model.tail;
                model.records.clear();
                assert_eq!(consumer.position(), model.tail);
            }
        }
        assert_eq!(producer.position(), model.tail, "producer position");
        assert_eq!(
            producer.free_bytes(),
            CAPACITY - (model.tail - model.head) as usize
        );
        assert_eq!(consumer.is_empty(), model.records.is_empty());
    }
    check_read(&mut consumer, &mut model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(ops in proptest::collection::vec(op(), 1..200)) {
        run(&ops);
    }
}

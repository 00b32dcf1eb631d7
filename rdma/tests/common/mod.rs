//! Checked record streams for the protocol tests: records of random sizes
//! whose every byte is a function of (seed, seq, index), so the receiver
//! checks each byte and the order without keeping a copy.

#![allow(dead_code)]

use anyhow::{Result, bail, ensure};
use ftvm_rdma::{Link, OneSidedPort, TransferError};

/// Header of a record: total length (u32 LE), then seq (u64 LE).
pub const HEADER: usize = 12;

/// SplitMix64: a small, fast, seedable generator.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Byte `i` of the payload of record `seq` of stream `seed`.
pub fn byte(seed: u64, seq: u64, i: usize) -> u8 {
    let x = (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).wrapping_add(i as u64 * 0x2545_f491);
    (x ^ (x >> 29)) as u8
}

/// Record length of `seq` (header included): mostly small, some large, a few huge.
pub fn record_len(seed: u64, seq: u64, max: usize) -> usize {
    let mut r = Rng(seed ^ seq.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let len = match r.below(1000) {
        0..=899 => HEADER + r.below(300) as usize,
        900..=989 => HEADER + r.below(4096) as usize,
        _ => HEADER + r.below(max as u64) as usize,
    };
    len.min(max).max(HEADER)
}

/// The sending side of a checked stream.
#[derive(Debug)]
pub struct Source {
    pub seed: u64,
    pub next_seq: u64,
    pub records: u64,
    pub max_len: usize,
    buf: Vec<u8>,
    start: usize,
    pub sent: u64,
    /// Stream positions where pending records end.
    ends: std::collections::VecDeque<u64>,
    rng: Rng,
}

impl Source {
    pub fn new(seed: u64, records: u64, max_len: usize) -> Source {
        Source {
            seed,
            next_seq: 0,
            records,
            max_len,
            buf: Vec::new(),
            start: 0,
            sent: 0,
            ends: std::collections::VecDeque::new(),
            rng: Rng(seed ^ 0x5eed),
        }
    }

    pub fn done(&self) -> bool {
        self.next_seq == self.records && self.start == self.buf.len()
    }

    fn refill(&mut self) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Between 1 and ~32 records pending, like a batch of log entries.
        let want = 1 + self.rng.below(32);
        let mut added = 0;
        while added < want
            && self.next_seq < self.records
            && self.buf.len() - self.start < 256 << 10
        {
            let seq = self.next_seq;
            let len = record_len(self.seed, seq, self.max_len);
            self.buf.extend_from_slice(&(len as u32).to_le_bytes());
            self.buf.extend_from_slice(&seq.to_le_bytes());
            self.buf
                .extend((0..len - HEADER).map(|i| byte(self.seed, seq, i)));
            let queued = self.sent + (self.buf.len() - self.start) as u64;
            self.ends.push_back(queued);
            self.next_seq += 1;
            added += 1;
        }
    }

    /// Bytes from the send position to the end of the record it is in.
    fn record_end(&mut self) -> usize {
        while self.ends.front().is_some_and(|&e| e <= self.sent) {
            self.ends.pop_front();
        }
        self.ends.front().map_or(0, |&e| (e - self.sent) as usize)
    }

    /// Offers pending bytes (as two slices split at a random point); returns bytes accepted.
    pub fn pump<P: OneSidedPort>(&mut self, link: &mut Link<P>) -> Result<usize, TransferError> {
        if self.buf.len() - self.start < 64 << 10 && self.rng.chance(500) {
            self.refill();
        }
        let record_end = self.record_end();
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return Ok(0);
        }
        let offer = match self.rng.below(10) {
            // Everything pending (a batch)...
            0..=2 => pending.len(),
            // ...the rest of one record (an OUTPUT entry flushed alone)...
            3..=6 => record_end.clamp(1, pending.len()),
            // ...or any prefix.
            _ => (1 + self.rng.below(pending.len() as u64) as usize).min(pending.len()),
        };
        let split = self.rng.below(offer as u64 + 1) as usize;
        let n = link.send(&[&pending[..split], &pending[split..offer]])?;
        assert!(n <= offer, "send accepted {n} of {offer}");
        self.start += n;
        self.sent += n as u64;
        Ok(n)
    }
}

/// The receiving side: parses records and checks every byte and the order.
#[derive(Debug)]
pub struct Sink {
    pub seed: u64,
    pub max_len: usize,
    pub next_seq: u64,
    buf: Vec<u8>,
    pub received: u64,
    rng: Rng,
}

impl Sink {
    pub fn new(seed: u64, max_len: usize) -> Sink {
        Sink {
            seed,
            max_len,
            next_seq: 0,
            buf: Vec::new(),
            received: 0,
            rng: Rng(seed ^ 0x51c4),
        }
    }

    /// Receives into a random-size buffer and checks whole records.
    pub fn pump<P: OneSidedPort>(&mut self, link: &mut Link<P>) -> Result<usize> {
        let mut chunk = vec![0u8; 1 + self.rng.below(96 << 10) as usize];
        let n = link.recv(&mut chunk)?;
        self.take(&chunk[..n])?;
        Ok(n)
    }

    /// Checks received bytes `bytes` (whole records as they complete).
    pub fn take(&mut self, bytes: &[u8]) -> Result<()> {
        self.received += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        while self.buf.len() - at >= HEADER {
            let len = u32::from_le_bytes(self.buf[at..at + 4].try_into()?) as usize;
            let seq = u64::from_le_bytes(self.buf[at + 4..at + 12].try_into()?);
            if seq != self.next_seq {
                bail!(
                    "record at stream offset {} has seq {seq}, expected {}",
                    self.received - (self.buf.len() - at) as u64,
                    self.next_seq
                );
            }
            let want = record_len(self.seed, seq, self.max_len);
            ensure!(
                len == want,
                "record {seq} has length {len}, expected {want}"
            );
            if self.buf.len() - at < len {
                break;
            }
            for (i, &b) in self.buf[at + HEADER..at + len].iter().enumerate() {
                if b != byte(self.seed, seq, i) {
                    bail!(
                        "record {seq} byte {i} is {b:#04x}, expected {:#04x}",
                        byte(self.seed, seq, i)
                    );
                }
            }
            at += len;
            self.next_seq += 1;
        }
        self.buf.drain(..at);
        Ok(())
    }
}

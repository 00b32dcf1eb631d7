//! The output rule: an output leaves the primary only once the backup has
//! ACKed the log entry that records it.
//!
//! The guest never waits for the ACK: outputs queue here while the vCPU runs
//! on, and [`AckGate::release`] hands them to the outside world, in order,
//! once the cumulative ACK covers their sequence number.

use std::collections::VecDeque;

/// An output held with a sequence number that does not follow the last one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("output held with seq {seq}, not after the last held seq {last}")]
pub struct HoldError {
    /// The refused sequence number.
    pub seq: u64,
    /// The last sequence number held.
    pub last: u64,
}

/// Outputs waiting for the backup's ACK, in sequence order.
#[derive(Debug)]
pub struct AckGate<T> {
    held: VecDeque<(u64, T)>,
    last_held: u64,
    acked: u64,
    released: u64,
}

impl<T> Default for AckGate<T> {
    fn default() -> Self {
        AckGate::new()
    }
}

impl<T> AckGate<T> {
    /// An empty gate.
    pub fn new() -> AckGate<T> {
        AckGate {
            held: VecDeque::new(),
            last_held: 0,
            acked: 0,
            released: 0,
        }
    }

    /// Holds `item`, the output recorded by log entry `seq`. Sequence numbers
    /// must increase; an output whose entry is already ACKed is still held
    /// until the next `release` (the rule is checked in one place).
    pub fn hold(&mut self, seq: u64, item: T) -> Result<(), HoldError> {
        if seq <= self.last_held {
            return Err(HoldError {
                seq,
                last: self.last_held,
            });
        }
        self.last_held = seq;
        self.held.push_back((seq, item));
        Ok(())
    }

    /// Records the cumulative ACK `acked` (a lower value than one seen before
    /// changes nothing) and releases, in order, every held output with
    /// `seq <= acked` through `release`. Returns how many were released.
    pub fn release(&mut self, acked: u64, mut release: impl FnMut(u64, T)) -> usize {
        self.acked = self.acked.max(acked);
        let mut n = 0;
        while let Some(&(seq, _)) = self.held.front() {
            if seq > self.acked {
                break;
            }
            if let Some((seq, item)) = self.held.pop_front() {
                release(seq, item);
                n += 1;
            }
        }
        self.released += n as u64;
        n
    }

    /// Outputs waiting.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Highest ACK seen.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Sequence number of the last output held (0 before the first).
    pub fn last_held(&self) -> u64 {
        self.last_held
    }

    /// Outputs released so far.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Sequence number of the oldest held output.
    pub fn oldest(&self) -> Option<u64> {
        self.held.front().map(|(s, _)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};

    /// Delayed and reordered ACK arrival: every release is checked against
    /// the highest ACK delivered so far, and nothing is released twice,
    /// early, out of order, or lost.
    #[test]
    fn never_releases_before_the_covering_ack() {
        let mut rng = StdRng::seed_from_u64(7);
        for _round in 0..200 {
            let mut gate = AckGate::new();
            let mut seq = 0u64;
            let mut outputs = Vec::new();
            for _ in 0..rng.random_range(1..200) {
                seq += rng.random_range(1..5);
                gate.hold(seq, seq * 10).unwrap();
                outputs.push(seq);
            }
            // ACK values the backup would send, then delayed and shuffled in windows.
            let mut acks: Vec<u64> = (0..rng.random_range(1..50))
                .map(|_| rng.random_range(0..=seq + 3))
                .collect();
            acks.push(seq);
            for w in acks.chunks_mut(4) {
                w.shuffle(&mut rng);
            }
            let mut max_ack = 0;
            let mut released = Vec::new();
            for a in acks {
                max_ack = max_ack.max(a);
                gate.release(a, |s, item| {
                    assert!(s <= max_ack, "released seq {s} with ack {max_ack}");
                    assert_eq!(item, s * 10);
                    released.push(s);
                });
                // Everything covered is out; nothing uncovered is.
                assert!(gate.oldest().is_none_or(|o| o > max_ack));
            }
            assert_eq!(released, outputs, "all released, in order, once");
            assert_eq!(gate.held(), 0);
        }
    }

    #[test]
    fn hold_refuses_non_increasing_seq() {
        let mut gate = AckGate::new();
        gate.hold(5, ()).unwrap();
        assert_eq!(gate.hold(5, ()), Err(HoldError { seq: 5, last: 5 }));
        assert!(gate.hold(3, ()).is_err());
        assert_eq!(gate.release(4, |_, _| panic!("released early")), 0);
        assert_eq!(gate.release(5, |_, _| {}), 1);
    }
}

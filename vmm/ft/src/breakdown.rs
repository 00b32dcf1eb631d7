//! Where each output's output-rule time goes, measured by the primary's
//! driver for every output it releases while protected:
//!
//! ```text
//! submitted ──to_ship──▶ shipped ──ack──▶ ACK acted on ──send──▶ released (datagram sent)
//! (the VM logged the       (the driver's send        (the pump that saw    (the release
//!  OUTPUT entry and         that carried the entry    the backup's ACK      closure returned)
//!  handed the output on)    returned)                 covering it)
//! ```
//!
//! `to_ship` holds the hand-off to a threaded driver and any batching;
//! `ack` the transport both ways, the backup's receipt and ACK, and — for
//! an inline driver — the wait for the vCPU thread's next pump; `send` the
//! release itself. `bench e2e` prints them beside the client's added
//! latency (docs/benchmarks.md).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The three stages' distributions (ns, 1 ns .. 100 s, 3 digits).
#[derive(Debug)]
pub struct RuleBreakdown {
    stages: Mutex<Stages>,
}

#[derive(Debug)]
struct Stages {
    to_ship: Histogram<u64>,
    ack: Histogram<u64>,
    send: Histogram<u64>,
    total: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Bounds fixed here: recording never resizes (no allocation per output).
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

impl Default for RuleBreakdown {
    fn default() -> RuleBreakdown {
        RuleBreakdown {
            stages: Mutex::new(Stages {
                to_ship: histogram(),
                ack: histogram(),
                send: histogram(),
                total: histogram(),
            }),
        }
    }
}

/// p50 and p99 of one stage, µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageQuantiles {
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
}

/// A copy of the breakdown's quantiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct BreakdownSnapshot {
    /// Outputs measured.
    pub outputs: u64,
    /// Submitted → shipped.
    pub to_ship: StageQuantiles,
    /// Shipped → ACK acted on.
    pub ack: StageQuantiles,
    /// ACK acted on → released.
    pub send: StageQuantiles,
    /// Submitted → released.
    pub total: StageQuantiles,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn quantiles(h: &Histogram<u64>) -> StageQuantiles {
    let us = |q| h.value_at_quantile(q) as f64 / 1000.0;
    StageQuantiles {
        p50_us: us(0.5),
        p99_us: us(0.99),
    }
}

impl RuleBreakdown {
    /// Counts one output's three stages.
    pub fn observe(&self, to_ship: Duration, ack: Duration, send: Duration) {
        let mut s = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        s.to_ship.saturating_record(ns(to_ship));
        s.ack.saturating_record(ns(ack));
        s.send.saturating_record(ns(send));
        s.total.saturating_record(ns(to_ship + ack + send));
    }

    /// The quantiles so far.
    pub fn snapshot(&self) -> BreakdownSnapshot {
        let s = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        BreakdownSnapshot {
            outputs: s.total.len(),
            to_ship: quantiles(&s.to_ship),
            ack: quantiles(&s.ack),
            send: quantiles(&s.send),
            total: quantiles(&s.total),
        }
    }
}

/// When the driver shipped what: one mark per send that moved the shipped
/// seq, kept until the outputs up to it are released (at most `CAP`).
#[derive(Debug)]
pub(crate) struct ShipMarks {
    marks: VecDeque<(u64, Instant)>,
    last: u64,
}

impl ShipMarks {
    /// Marks beyond this many are dropped oldest first (an idle primary's
    /// ticks, shipped with no output waiting).
    const CAP: usize = 1024;

    pub(crate) fn new() -> ShipMarks {
        ShipMarks {
            marks: VecDeque::with_capacity(Self::CAP),
            last: 0,
        }
    }

    /// The driver's sends now cover every entry up to `seq`.
    pub(crate) fn shipped(&mut self, seq: u64) {
        if seq <= self.last {
            return;
        }
        if self.marks.len() == Self::CAP {
            self.marks.pop_front();
        }
        self.marks.push_back((seq, Instant::now()));
        self.last = seq;
    }

    /// When the entry `seq` was shipped (`None`: not by this driver's
    /// sends, or its mark was dropped). Outputs are asked in seq order.
    pub(crate) fn when(&mut self, seq: u64) -> Option<Instant> {
        while self.marks.front().is_some_and(|(s, _)| *s < seq) {
            self.marks.pop_front();
        }
        self.marks.front().map(|(_, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_is_shipped_by_the_first_send_that_covers_it() {
        let mut m = ShipMarks::new();
        m.shipped(3);
        let t3 = m.marks.back().unwrap().1;
        m.shipped(3); // nothing new sent: no mark
        m.shipped(9);
        let t9 = m.marks.back().unwrap().1;
        assert_eq!(m.marks.len(), 2);
        assert_eq!(m.when(2), Some(t3));
        assert_eq!(m.when(3), Some(t3));
        assert_eq!(m.when(4), Some(t9));
        assert_eq!(m.when(9), Some(t9));
        assert_eq!(m.when(10), None);
    }

    #[test]
    fn the_stages_add_up_to_the_total() {
        let b = RuleBreakdown::default();
        for _ in 0..10 {
            b.observe(
                Duration::from_micros(2),
                Duration::from_micros(10),
                Duration::from_micros(3),
            );
        }
        let s = b.snapshot();
        assert_eq!(s.outputs, 10);
        assert!((s.to_ship.p50_us - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.ack.p50_us - 10.0).abs() < 0.02, "{s:?}");
        assert!((s.total.p50_us - 15.0).abs() < 0.02, "{s:?}");
    }
}

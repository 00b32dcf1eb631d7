//! The backup's output gate while it replays: outputs never leave, but the
//! few whose release on the primary is not confirmed yet are kept, so that a
//! backup going live can finish the primary's work (docs/failover.md):
//!
//! * **shared-disk writes** after the primary's released-through watermark
//!   (`Released` frames) are re-issued at go-live — the primary may have died
//!   before performing them; a write issued twice is harmless (same data,
//!   same place), and re-issuing in log order leaves every sector with the
//!   log's last write to it;
//! * **replies** after the watermark may be re-sent (`resend_replies`): a
//!   client that already has one ignores the duplicate, one that does not is
//!   answered without waiting for its retry timeout. At most
//!   [`MAX_KEPT_REPLIES`] are kept (the newest).
//!
//! Console output is never kept (a duplicate line is noise, not a fix).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ftvm_vmm::{KeptOutput, OutputGate, Release};
use ftvm_wire::Kind;

/// Newest replies kept for a re-send at go-live.
pub const MAX_KEPT_REPLIES: usize = 256;

/// The standby gate (module doc).
pub struct StandbyGate {
    /// The primary's released-through watermark (kept current by the source).
    released: Arc<AtomicU64>,
    kept: VecDeque<KeptOutput>,
    replies: usize,
    resend_replies: bool,
}

impl std::fmt::Debug for StandbyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandbyGate")
            .field("kept", &self.kept.len())
            .field("replies", &self.replies)
            .finish()
    }
}

impl StandbyGate {
    /// A gate pruning by the watermark in `released`.
    pub fn new(released: Arc<AtomicU64>, resend_replies: bool) -> StandbyGate {
        StandbyGate {
            released,
            kept: VecDeque::new(),
            replies: 0,
            resend_replies,
        }
    }

    /// Drops what the primary confirmed released.
    fn prune(&mut self) {
        // Relaxed: a watermark; a stale value only keeps a few more.
        let released = self.released.load(Ordering::Relaxed);
        while self.kept.front().is_some_and(|k| k.seq <= released) {
            if let Some(k) = self.kept.pop_front()
                && k.kind == Kind::NetTx
            {
                self.replies -= 1;
            }
        }
    }
}

impl OutputGate for StandbyGate {
    fn submit(&mut self, seq: Option<u64>, _kind: Kind, release: Release) {
        // A replaying VM never submits; after go-live the gate is replaced.
        // Anything submitted here in live mode may leave.
        if seq.is_none() {
            release();
        }
    }

    fn replayed(&mut self, seq: u64, kind: Kind, release: Release) {
        self.prune();
        match kind {
            Kind::DiskWrite => self.kept.push_back(KeptOutput { seq, kind, release }),
            Kind::NetTx if self.resend_replies => {
                self.kept.push_back(KeptOutput { seq, kind, release });
                self.replies += 1;
                if self.replies > MAX_KEPT_REPLIES
                    && let Some(i) = self.kept.iter().position(|k| k.kind == Kind::NetTx)
                {
                    self.kept.remove(i);
                    self.replies -= 1;
                }
            }
            _ => {}
        }
    }

    fn take_kept(&mut self) -> Vec<KeptOutput> {
        self.prune();
        self.replies = 0;
        self.kept.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn noop() -> Release {
        Box::new(|| {})
    }

    #[test]
    fn keeps_what_the_watermark_does_not_cover_in_order() {
        let released = Arc::new(AtomicU64::new(0));
        let mut g = StandbyGate::new(released.clone(), true);
        let ran = Arc::new(Mutex::new(Vec::new()));
        for seq in 1..=10 {
            let kind = if seq % 2 == 0 {
                Kind::DiskWrite
            } else {
                Kind::NetTx
            };
            let r = ran.clone();
            g.replayed(seq, kind, Box::new(move || r.lock().unwrap().push(seq)));
        }
        g.replayed(11, Kind::Console, noop());
        released.store(6, Ordering::Relaxed);
        let kept = g.take_kept();
        let seqs: Vec<u64> = kept.iter().map(|k| k.seq).collect();
        assert_eq!(
            seqs,
            vec![7, 8, 9, 10],
            "after the watermark, console dropped"
        );
        for k in kept {
            (k.release)();
        }
        assert_eq!(*ran.lock().unwrap(), vec![7, 8, 9, 10]);
    }

    #[test]
    fn replies_are_bounded_and_optional_disk_writes_are_not() {
        let released = Arc::new(AtomicU64::new(0));
        let mut g = StandbyGate::new(released.clone(), true);
        for seq in 1..=(MAX_KEPT_REPLIES as u64 + 10) {
            g.replayed(seq, Kind::NetTx, noop());
        }
        g.replayed(10_000, Kind::DiskWrite, noop());
        let kept = g.take_kept();
        assert_eq!(kept.len(), MAX_KEPT_REPLIES + 1);
        assert_eq!(kept[0].seq, 11, "the oldest replies went first");
        let mut g = StandbyGate::new(released, false);
        g.replayed(1, Kind::NetTx, noop());
        g.replayed(2, Kind::DiskWrite, noop());
        assert_eq!(g.take_kept().len(), 1, "no replies kept without resend");
    }
}

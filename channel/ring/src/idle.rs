//! Idle strategies: what a polling loop does after a poll that found no work.
//!
//! Thread wake-ups cost 60–80 µs on the target machines, so the low-latency
//! setting spins; the others trade latency for CPU. Modelled on Aeron's
//! `BackoffIdleStrategy`:
//!
//! 1. A poll that did work calls [`Idler::idle`] with `work_done > 0`: the
//!    backoff resets and the call returns at once.
//! 2. Each idle poll (`work_done == 0`) moves one step along the phases of the
//!    [`IdleKind`]: spin (`core::hint::spin_loop`) for `spins_before_yield`
//!    calls, then `thread::yield_now` (for [`IdleKind::Park`]:
//!    [`YIELDS_BEFORE_PARK`] calls), then `thread::sleep(park)`.
//! 3. Once in the park phase [`Idler::is_parking`] is true: a caller with a
//!    blocking wait (a socket, an io_uring wait) may block there instead of
//!    sleeping blindly.

use std::time::Duration;

/// Yield calls between the spin and park phases of [`IdleKind::Park`].
pub const YIELDS_BEFORE_PARK: u32 = 16;

/// Which phases an [`Idler`] goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdleKind {
    /// Spin forever: lowest latency, one core at 100 %.
    Spin,
    /// Spin, then yield the CPU on every idle call.
    SpinYield,
    /// Spin, yield a little, then sleep `park` per idle call.
    Park,
}

/// The phase an [`Idler`] is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Spinning { spins: u32 },
    Yielding { yields: u32 },
    Parking,
}

/// A backoff idle strategy. Cheap to call on every loop iteration.
#[derive(Clone, Debug)]
pub struct Idler {
    kind: IdleKind,
    spins_before_yield: u32,
    park: Duration,
    phase: Phase,
}

impl Idler {
    /// An idler of `kind` that spins `spins_before_yield` idle calls before
    /// yielding (ignored by [`IdleKind::Spin`]) and parks for `park` per idle
    /// call in the park phase (used by [`IdleKind::Park`] only).
    pub fn new(kind: IdleKind, spins_before_yield: u32, park: Duration) -> Idler {
        Idler {
            kind,
            spins_before_yield,
            park,
            phase: Phase::Spinning { spins: 0 },
        }
    }

    /// Backs off one step if `work_done == 0`, else resets.
    pub fn idle(&mut self, work_done: usize) {
        if work_done > 0 {
            self.reset();
            return;
        }
        self.phase = match (self.kind, self.phase) {
            (IdleKind::Spin, phase) => {
                core::hint::spin_loop();
                phase
            }
            (_, Phase::Spinning { spins }) if spins < self.spins_before_yield => {
                core::hint::spin_loop();
                Phase::Spinning { spins: spins + 1 }
            }
            (_, Phase::Spinning { .. }) => {
                std::thread::yield_now();
                Phase::Yielding { yields: 1 }
            }
            (IdleKind::SpinYield, phase) => {
                std::thread::yield_now();
                phase
            }
            (IdleKind::Park, Phase::Yielding { yields }) if yields < YIELDS_BEFORE_PARK => {
                std::thread::yield_now();
                Phase::Yielding { yields: yields + 1 }
            }
            (IdleKind::Park, _) => {
                std::thread::sleep(self.park);
                Phase::Parking
            }
        };
    }

    /// Back to the first spin.
    pub fn reset(&mut self) {
        self.phase = Phase::Spinning { spins: 0 };
    }

    /// True once the strategy has reached its park phase (only [`IdleKind::Park`]).
    pub fn is_parking(&self) -> bool {
        self.phase == Phase::Parking
    }

    /// The configured kind.
    pub fn kind(&self) -> IdleKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn park_reaches_parking_after_spins_and_yields() {
        let mut idler = Idler::new(IdleKind::Park, 3, Duration::from_micros(50));
        for call in 0..3 + YIELDS_BEFORE_PARK {
            idler.idle(0);
            assert!(!idler.is_parking(), "parking too early at idle call {call}");
        }
        let start = Instant::now();
        idler.idle(0);
        assert!(idler.is_parking());
        assert!(
            start.elapsed() >= Duration::from_micros(50),
            "park phase did not sleep"
        );
        idler.idle(1);
        assert!(!idler.is_parking(), "work done must reset the backoff");
        assert_eq!(idler.phase, Phase::Spinning { spins: 0 });
    }

    #[test]
    fn spin_and_spin_yield_never_park() {
        for kind in [IdleKind::Spin, IdleKind::SpinYield] {
            let mut idler = Idler::new(kind, 2, Duration::from_secs(10));
            let start = Instant::now();
            for _ in 0..1000 {
                idler.idle(0);
            }
            assert!(!idler.is_parking(), "{kind:?} parked");
            // A 10 s park would have been taken on the first park-phase call.
            assert!(start.elapsed() < Duration::from_secs(5), "{kind:?} slept");
        }
    }

    #[test]
    fn spin_yield_moves_to_yield_phase_and_reset_restarts() {
        let mut idler = Idler::new(IdleKind::SpinYield, 2, Duration::ZERO);
        idler.idle(0);
        idler.idle(0);
        assert_eq!(idler.phase, Phase::Spinning { spins: 2 });
        idler.idle(0);
        assert_eq!(idler.phase, Phase::Yielding { yields: 1 });
        idler.reset();
        assert_eq!(idler.phase, Phase::Spinning { spins: 0 });
    }
}

//! Waiting for an unreachable arbiter: the paper's "it waits until it can".
//! Retrying a test-and-set is safe because a retry by the winner returns
//! `Won` (see [`crate::Arbiter::test_and_set`]).

use std::time::Duration;

use crate::{Arbiter, ArbiterError, Decision};

/// Exponential backoff with jitter: the k-th wait is drawn from
/// `[d/2, d]` where `d = min(max, initial * 2^k)`, so racing survivors do not
/// retry in lock-step and no wait is ever zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The first backoff bound (a zero is taken as 1 ms).
    pub initial: Duration,
    /// The largest backoff bound (a `max` below `initial` is taken as `initial`).
    pub max: Duration,
}

impl Default for Retry {
    /// 10 ms doubling up to 1 s.
    fn default() -> Self {
        Retry {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// The backoff bounds in order: `initial`, doubled each time, capped at `max`.
    fn bounds(&self) -> impl Iterator<Item = Duration> {
        let first = self.initial.max(Duration::from_millis(1));
        let max = self.max.max(first);
        std::iter::successors(Some(first), move |d| Some(d.saturating_mul(2).min(max)))
    }
}

/// A wait drawn uniformly from `[bound/2, bound]`.
fn jittered(bound: Duration) -> Duration {
    let half = bound / 2;
    let span = u64::try_from((bound - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::random_range(0..=span))
}

/// [`Arbiter::test_and_set`], retried while the arbiter is unreachable.
///
/// Returns the first decision; an error that is not
/// [`ArbiterError::Unreachable`] (denied, corrupt, bad name, protocol) at
/// once; and the last `Unreachable` once `give_up()` is true (asked after
/// each failure). Before each sleep, `on_retry(error, next_delay)` reports
/// the failure and how long we will wait (for logs and status).
pub fn test_and_set_with_retry(
    a: &dyn Arbiter,
    vm: &str,
    generation: u64,
    candidate: &str,
    retry: &Retry,
    give_up: &dyn Fn() -> bool,
    on_retry: &mut dyn FnMut(&ArbiterError, Duration),
) -> Result<Decision, ArbiterError> {
    let mut bounds = retry.bounds();
    loop {
        match a.test_and_set(vm, generation, candidate) {
            Err(e) if e.is_unreachable() && !give_up() => {
                let wait = jittered(bounds.next().unwrap_or(retry.max));
                on_retry(&e, wait);
                std::thread::sleep(wait);
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_max() {
        let r = Retry::default();
        let b: Vec<_> = r.bounds().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(b, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        let odd = Retry {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(
            odd.bounds().take(2).collect::<Vec<_>>(),
            [Duration::from_millis(1); 2]
        );
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let bound = Duration::from_millis(100);
        for _ in 0..1000 {
            let d = jittered(bound);
            assert!(d >= bound / 2 && d <= bound, "{d:?}");
        }
    }
}

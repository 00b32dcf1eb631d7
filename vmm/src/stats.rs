//! The one counter type of the statistics that devices, sinks, sources and
//! gates share with the status and metrics endpoints, benchmarks and tests.
//!
//! No data rides on these values — nothing is read or written because a
//! counter says so — so every access is `Relaxed`, said once, here.

use std::sync::atomic::{AtomicU64, Ordering};

/// A shared statistics counter (module doc).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at `v`.
    pub const fn new(v: u64) -> Counter {
        Counter(AtomicU64::new(v))
    }

    /// The value now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value (a gauge: position, lag, ordinal).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Raises the value to `v` if it is lower (a high-water mark).
    pub fn max(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sets_and_keeps_the_high_water_mark() {
        let c = Counter::new(2);
        c.add(1);
        c.add(3);
        assert_eq!(c.get(), 6);
        c.max(4);
        assert_eq!(c.get(), 6);
        c.max(9);
        assert_eq!(c.get(), 9);
        c.set(1);
        assert_eq!(c.get(), 1);
    }
}

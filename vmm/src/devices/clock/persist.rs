//! The clock's [`Persist`]: time since the VM started and the last value
//! the guest was given (so a restored clock never goes backwards).
//!
//! Fields of the `clock` section (version 1): `elapsed_ns` (u64, host time
//! since the clock started, at the save), `last_ns` (u64).

use std::time::{Duration, Instant};

use super::Clock;
use crate::persist::{Component, FieldError, Persist, PersistError, Section};

/// The saved clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    /// Nanoseconds since the clock started.
    pub elapsed_ns: u64,
    /// The last value applied to the guest.
    pub last_ns: u64,
}

impl Component for ClockState {
    const ID: &'static str = "clock";
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        s.put_u64("elapsed_ns", self.elapsed_ns);
        s.put_u64("last_ns", self.last_ns);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        Ok(ClockState {
            elapsed_ns: s.u64("elapsed_ns")?,
            last_ns: s.u64("last_ns")?,
        })
    }
}

impl Persist<'_> for Clock {
    type State = ClockState;
    /// Now: the restored clock continues from `elapsed_ns` at this instant.
    type ConstructorArgs = Instant;
    type Error = PersistError;

    fn save(&self) -> Result<ClockState, PersistError> {
        Ok(ClockState {
            elapsed_ns: u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            last_ns: self.last,
        })
    }

    fn restore(now: Instant, s: &ClockState) -> Result<Clock, PersistError> {
        // A host that booted less than `elapsed_ns` ago cannot place the
        // start in the past: start now, and `last` keeps time monotonic.
        let start = now
            .checked_sub(Duration::from_nanos(s.elapsed_ns))
            .unwrap_or(now);
        Ok(Clock {
            start,
            last: s.last_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_clock_continues() {
        let c = Clock {
            start: Instant::now() - Duration::from_millis(50),
            last: 123,
        };
        let s = ClockState::from_section(&c.save().unwrap().to_section()).unwrap();
        assert!(s.elapsed_ns >= 50_000_000);
        let r = Clock::restore(Instant::now(), &s).unwrap();
        assert_eq!(r.last, 123);
        assert!(r.start.elapsed() >= Duration::from_millis(50));
    }
}

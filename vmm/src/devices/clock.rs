//! CLOCK (port 0x20): the guest writes the GPA of a u64; the VMM stores the
//! monotonic nanoseconds since VM start there (a logged `Clock` input).
//! The value never goes backwards, in any mode: the device remembers the
//! last value it applied (logged or read), so a backup that switches from
//! replay to live continues from the primary's time.

use std::ops::RangeInclusive;
use std::time::Instant;

use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx, out_u32};
use crate::layout::port;
use crate::memory::GuestMemoryError;

/// The clock device.
#[derive(Debug)]
pub struct Clock {
    start: Instant,
    last: u64,
}

impl Clock {
    /// A clock starting at 0 now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            last: 0,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Device for Clock {
    fn name(&self) -> &'static str {
        "clock"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        port::CLOCK..=port::CLOCK
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let gpa = u64::from(out_u32(port, data)?);
        if !gpa.is_multiple_of(8) {
            return Err(GuestMemoryError::Misaligned { gpa, align: 8 }.into());
        }
        // Check the target before asking the host, so a bad GPA is not logged.
        ctx.mem().read_u64(gpa)?;
        let (start, last) = (self.start, self.last);
        let mem = ctx.mem();
        let ns = ctx.input(
            Kind::Clock,
            port,
            8,
            |buf| {
                let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                buf[..8].copy_from_slice(&ns.max(last).to_le_bytes());
                Ok(8)
            },
            |v| {
                let ns: [u8; 8] = v.try_into().map_err(|_| DeviceError::BadRequest {
                    port,
                    detail: format!("clock value of {} bytes (expected 8)", v.len()),
                })?;
                mem.write(gpa, &ns)?;
                Ok(ns)
            },
        )?;
        self.last = u64::from_le_bytes(ns);
        Ok(())
    }
}

pub mod persist;

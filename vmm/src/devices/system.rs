//! The system ports: EXIT (0x11), FAULT (0x12), NOP (0x13) in [`System`];
//! TIMER (0x22) and WAIT (0x23) in [`TimerWait`].
//! They carry no data through the log themselves: the VM loop acts on the
//! requests they leave in the exit context (stop, fault report, timer
//! period, wait with timeout).

use std::ops::RangeInclusive;

use crate::device::{Device, DeviceError, ExitCtx, out_u32};
use crate::layout::port;

/// EXIT, FAULT and NOP.
#[derive(Debug, Default)]
pub struct System;

/// TIMER and WAIT.
#[derive(Debug, Default)]
pub struct TimerWait;

impl Device for TimerWait {
    fn name(&self) -> &'static str {
        "timer"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        port::TIMER..=port::WAIT
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let v = out_u32(port, data)?;
        if port == port::TIMER {
            ctx.request_timer(v);
        } else {
            ctx.request_wait(v);
        }
        Ok(())
    }
}

impl Device for System {
    fn name(&self) -> &'static str {
        "system"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        port::EXIT..=port::NOP
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let v = out_u32(port, data)?;
        match port {
            port::EXIT => ctx.request_exit(v),
            port::FAULT => ctx.request_fault(v),
            port::NOP => {}
            _ => {
                return Err(DeviceError::Unsupported {
                    port,
                    dir: "out",
                    size: data.len(),
                });
            }
        }
        Ok(())
    }
}

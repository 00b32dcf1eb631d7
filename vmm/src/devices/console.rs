//! CONSOLE (port 0x10): the guest writes an `IoDesc` GPA; the bytes are an
//! OUTPUT `Console` entry, released to the console target by the gate.

use std::io::Write;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx, out_u32};
use crate::layout::{MAX_CONSOLE_LEN, port};

/// Where console output goes once released.
#[derive(Clone, Debug, Default)]
pub enum ConsoleTarget {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// Appended to a shared buffer (tests, tools).
    Capture(Arc<Mutex<Vec<u8>>>),
    /// Dropped.
    Discard,
}

impl ConsoleTarget {
    fn emit(&self, bytes: &[u8]) {
        match self {
            ConsoleTarget::Stdout => {
                let mut out = std::io::stdout().lock();
                // Console output is best effort: a closed stdout must not stop the VM.
                let _ = out.write_all(bytes).and_then(|()| out.flush());
            }
            ConsoleTarget::Capture(buf) => {
                // A poisoned buffer still holds valid bytes; keep appending.
                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                b.extend_from_slice(bytes);
            }
            ConsoleTarget::Discard => {}
        }
    }
}

/// The console device.
#[derive(Debug)]
pub struct Console {
    target: ConsoleTarget,
}

impl Console {
    /// A console releasing to `target`.
    pub fn new(target: ConsoleTarget) -> Console {
        Console { target }
    }
}

impl Device for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        port::CONSOLE..=port::CONSOLE
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let gpa = u64::from(out_u32(port, data)?);
        let desc = ctx.mem().read_desc(gpa, MAX_CONSOLE_LEN)?;
        let bytes = ctx.mem().read_vec(desc.addr, desc.len as usize)?;
        let target = self.target.clone();
        let released = bytes.clone();
        ctx.output(Kind::Console, port, &bytes, move || target.emit(&released))
    }
}

//! RANDOM (port 0x21): the guest writes an `IoDesc` GPA; the VMM fills the
//! buffer with host random bytes (a logged `Random` input).

use std::ops::RangeInclusive;

use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx, out_u32};
use crate::layout::{MAX_RANDOM_LEN, port};

/// The random device.
#[derive(Debug, Default)]
pub struct Random;

fn host_random(buf: &mut [u8]) -> Result<(), DeviceError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes for
        // the duration of the call; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(DeviceError::Host {
                what: format!("getrandom of {} bytes", rest.len()),
                source: e,
            });
        }
        done += n as usize;
    }
    Ok(())
}

impl Device for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        port::RANDOM..=port::RANDOM
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let gpa = u64::from(out_u32(port, data)?);
        let desc = ctx.mem().read_desc(gpa, MAX_RANDOM_LEN)?;
        let len = desc.len as usize;
        let mem = ctx.mem();
        ctx.input(
            Kind::Random,
            port,
            len,
            |buf| host_random(&mut buf[..len]).map(|()| len),
            |bytes| {
                if bytes.len() != len {
                    return Err(DeviceError::BadRequest {
                        port,
                        detail: format!(
                            "random input of {} bytes for a {len}-byte buffer",
                            bytes.len()
                        ),
                    });
                }
                Ok(mem.write(desc.addr, bytes)?)
            },
        )?;
        Ok(())
    }
}

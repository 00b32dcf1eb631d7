//! The guest driver of the ftvm block device (`docs/devices.md`): a request
//! ring at a fixed GPA, an INFO port and a doorbell; every request of a
//! batch completes during the one doorbell exit.

use core::ptr;

/// Doorbell port: handles every pending request.
pub const PORT_DOORBELL: u16 = 0x48;
/// INFO port: GPA of a 16-byte buffer the VMM fills.
pub const PORT_INFO: u16 = 0x49;
/// Control block: `req_prod` (guest), `req_cons` (VMM).
pub const CTRL: u64 = ftvm_rt::abi::DEV_REGION + 0x80_0000;
/// Request ring.
pub const RING: u64 = CTRL + 0x1000;
/// Requests in the ring.
pub const SLOTS: u32 = 64;
/// Bytes per request descriptor.
pub const DESC_SIZE: u64 = 32;
/// Sector size.
pub const SECTOR: usize = 512;
/// Largest request in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Request status values (written by the VMM).
pub mod status {
    /// Not handled.
    pub const PENDING: u32 = 0;
    /// Done.
    pub const OK: u32 = 1;
    /// Beyond the capacity.
    pub const OUT_OF_RANGE: u32 = 2;
    /// Malformed request.
    pub const BAD_REQUEST: u32 = 3;
    /// The host read failed.
    pub const IO_ERROR: u32 = 4;
    /// INFO not called yet.
    pub const NOT_READY: u32 = 5;
}

/// What INFO reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// Capacity in sectors.
    pub sectors: u64,
    /// Largest request in bytes.
    pub max_request: u32,
    /// Sector size in bytes.
    pub sector_size: u32,
}

#[repr(C, align(16))]
struct InfoBuf([u8; 16]);

/// One request of a batch; `status` is filled by [`Disk::run`].
#[derive(Debug)]
pub enum Request<'a> {
    /// Read `buf.len()` bytes (a multiple of 512) from `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Destination.
        buf: &'a mut [u8],
        /// Outcome.
        status: u32,
    },
    /// Write `buf` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Source.
        buf: &'a [u8],
        /// Outcome.
        status: u32,
    },
}

/// The batch is larger than the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyRequests {
    /// Requests given.
    pub given: usize,
    /// Ring size.
    pub max: u32,
}

fn write_u32(gpa: u64, v: u32) {
    // SAFETY: `gpa` is a 4-aligned word of the block device's part of the
    // device region (identity-mapped, reserved by docs/guest-abi.md §2).
    unsafe { ptr::write_volatile(gpa as *mut u32, v) }
}

fn read_u32(gpa: u64) -> u32 {
    // SAFETY: as for `write_u32`; volatile because the VMM writes it at exits.
    unsafe { ptr::read_volatile(gpa as *const u32) }
}

fn write_u64(gpa: u64, v: u64) {
    // SAFETY: as for `write_u32` (8-aligned descriptor fields).
    unsafe { ptr::write_volatile(gpa as *mut u64, v) }
}

/// Asks the VMM for the disk's geometry (one exit).
pub fn info() -> Info {
    let mut b = InfoBuf([0; 16]);
    ftvm_rt::io::outl(PORT_INFO, &mut b as *mut InfoBuf as u64 as u32);
    // SAFETY: `b` is a live local the VMM filled during the exit above;
    // volatile so the compiler does not assume it still holds zeros.
    let bytes = unsafe { ptr::read_volatile(&b) }.0;
    Info {
        sectors: u64::from_le_bytes([
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
        ]),
        max_request: u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        sector_size: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
    }
}

/// The driver; owns `req_prod`.
#[derive(Debug)]
pub struct Disk {
    prod: u32,
}

impl Disk {
    /// Takes over the ring in its current state.
    pub fn new() -> Disk {
        Disk {
            prod: read_u32(CTRL),
        }
    }

    /// Queues every request, rings the doorbell once (all complete during
    /// that exit) and stores each request's status.
    pub fn run(&mut self, reqs: &mut [Request<'_>]) -> Result<(), TooManyRequests> {
        if reqs.len() > SLOTS as usize {
            return Err(TooManyRequests {
                given: reqs.len(),
                max: SLOTS,
            });
        }
        let first = self.prod;
        for r in reqs.iter_mut() {
            let desc = RING + u64::from(self.prod % SLOTS) * DESC_SIZE;
            let (op, sector, addr, len) = match r {
                Request::Read { sector, buf, .. } => {
                    (1, *sector, buf.as_mut_ptr() as u64, buf.len())
                }
                Request::Write { sector, buf, .. } => (2, *sector, buf.as_ptr() as u64, buf.len()),
            };
            write_u32(desc, op);
            write_u32(desc + 4, status::PENDING);
            write_u64(desc + 8, sector);
            write_u64(desc + 16, addr);
            write_u32(desc + 24, len as u32);
            write_u32(desc + 28, 0);
            self.prod = self.prod.wrapping_add(1);
        }
        write_u32(CTRL, self.prod);
        ftvm_rt::io::outl(PORT_DOORBELL, 1);
        for (i, r) in reqs.iter_mut().enumerate() {
            let desc = RING + u64::from(first.wrapping_add(i as u32) % SLOTS) * DESC_SIZE;
            let st = read_u32(desc + 4);
            match r {
                Request::Read { status, buf, .. } => {
                    *status = st;
                    // The VMM wrote the buffer during the exit: make the
                    // compiler forget what it knew of its contents.
                    core::hint::black_box(&mut **buf);
                }
                Request::Write { status, .. } => *status = st,
            }
        }
        Ok(())
    }
}

impl Default for Disk {
    fn default() -> Disk {
        Disk::new()
    }
}

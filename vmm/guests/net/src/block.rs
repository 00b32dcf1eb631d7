//! The guest driver of the ftvm block device (`docs/devices.md`): a request
//! ring at a fixed GPA, an INFO port and a doorbell; every request of a
//! batch completes during the one doorbell exit.

use core::ptr;

// The layout, ports, ops and statuses: one definition with the VMM's device.
pub use ftvm_rt::abi::block::{
    CTRL, DESC_SIZE, OP_READ, OP_WRITE, PORT_DOORBELL, PORT_INFO, REQ_PROD, RING, SLOTS, status,
};

/// Sector size, as a buffer length (`ftvm_guest_abi::block::SECTOR`).
pub const SECTOR: usize = ftvm_rt::abi::block::SECTOR as usize;
/// Largest request in bytes, as a buffer length (`ftvm_guest_abi::block::MAX_REQUEST`).
pub const MAX_REQUEST: usize = ftvm_rt::abi::block::MAX_REQUEST as usize;

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
            prod: read_u32(CTRL + REQ_PROD),
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
                    (OP_READ, *sector, buf.as_mut_ptr() as u64, buf.len())
                }
                Request::Write { sector, buf, .. } => {
                    (OP_WRITE, *sector, buf.as_ptr() as u64, buf.len())
                }
            };
            write_u32(desc, op);
            write_u32(desc + 4, status::PENDING);
            write_u64(desc + 8, sector);
            write_u64(desc + 16, addr);
            write_u32(desc + 24, len as u32);
            write_u32(desc + 28, 0);
            self.prod = self.prod.wrapping_add(1);
        }
        write_u32(CTRL + REQ_PROD, self.prod);
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

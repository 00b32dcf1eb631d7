//! Guest memory: one anonymous private mapping at guest-physical 0, with
//! bounds-checked access for devices and a VMM-side dirty bitmap (KVM's dirty
//! log only sees writes made by the vCPU; writes made here are tracked here).

use std::cell::Cell;

use crate::layout::PAGE_SIZE;

/// A guest memory access that falls outside guest memory or is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// The range `[gpa, gpa + len)` is not inside guest memory.
    #[error("guest range gpa {gpa:#x} len {len} is outside guest memory of {size:#x} bytes")]
    OutOfRange {
        /// Start address.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Guest memory size.
        size: u64,
    },
    /// The address is not aligned as the object needs.
    #[error("guest address {gpa:#x} is not {align}-byte aligned")]
    Misaligned {
        /// Address.
        gpa: u64,
        /// Required alignment.
        align: u64,
    },
    /// A descriptor's reserved field is not zero.
    #[error("descriptor at gpa {gpa:#x} has reserved field {value:#x} (must be 0)")]
    Reserved {
        /// Descriptor address.
        gpa: u64,
        /// The value found.
        value: u32,
    },
}

/// Creating the guest memory mapping failed.
#[derive(Debug, thiserror::Error)]
#[error("mmap of {bytes} bytes of guest memory failed")]
pub struct MapGuestMemoryError {
    /// Requested size.
    pub bytes: usize,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// A guest buffer descriptor (`IoDesc` in `docs/guest-abi.md`): 16 bytes,
/// 8-aligned, `{ addr: u64, len: u32, reserved: u32 }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoDesc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// Guest memory. Used only from the vCPU thread (not `Sync`); the vCPU is
/// stopped whenever the VMM touches it (the bounce-buffer rule).
#[derive(Debug)]
pub struct GuestMemory {
    ptr: *mut u8,
    len: usize,
    /// Pages written by the VMM since the last `take_vmm_dirty`, one bit each.
    dirty: Box<[Cell<u64>]>,
}

// SAFETY: the mapping is owned exclusively by this value (created in `new`,
// unmapped in `drop`); moving it to another thread moves that ownership. It is
// deliberately not `Sync` (the dirty bitmap uses `Cell`).
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Maps `bytes` (a positive multiple of the page size) of zeroed
    /// anonymous memory.
    pub fn new(bytes: usize) -> Result<GuestMemory, MapGuestMemoryError> {
        if bytes == 0 || !bytes.is_multiple_of(PAGE_SIZE) {
            return Err(MapGuestMemoryError {
                bytes,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("size is not a positive multiple of {PAGE_SIZE}"),
                ),
            });
        }
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked against MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapGuestMemoryError {
                bytes,
                source: std::io::Error::last_os_error(),
            });
        }
        let pages = bytes / PAGE_SIZE;
        let dirty = (0..pages.div_ceil(64)).map(|_| Cell::new(0)).collect();
        Ok(GuestMemory {
            ptr: ptr.cast(),
            len: bytes,
            dirty,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.len as u64
    }

    /// Host address of guest-physical 0 (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize, GuestMemoryError> {
        let end = gpa.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len as u64 => Ok(gpa as usize),
            _ => Err(GuestMemoryError::OutOfRange {
                gpa,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }

    /// Copies guest bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let off = self.check(gpa, buf.len())?;
        // SAFETY: `check` proved `[off, off + buf.len())` lies inside the
        // mapping of `self.len` bytes; `buf` is a distinct host allocation.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa` and marks the pages dirty.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let off = self.check(gpa, data.len())?;
        // SAFETY: `check` proved the range lies inside the mapping; the vCPU
        // is not running while the VMM handles an exit, so nothing else
        // accesses these bytes now.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
        self.mark_dirty(off, data.len());
        Ok(())
    }

    /// Reads guest bytes into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>, GuestMemoryError> {
        self.check(gpa, len)?;
        let mut v = vec![0u8; len];
        self.read(gpa, &mut v)?;
        Ok(v)
    }

    /// Reads a little-endian u64 at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, GuestMemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32 at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian u64 at `gpa`.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian u32 at `gpa`.
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<(), GuestMemoryError> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Reads and checks an `IoDesc` at `gpa` (8-aligned, reserved 0, buffer
    /// inside guest memory, `len <= max_len`).
    pub fn read_desc(&self, gpa: u64, max_len: u32) -> Result<IoDesc, GuestMemoryError> {
        if !gpa.is_multiple_of(8) {
            return Err(GuestMemoryError::Misaligned { gpa, align: 8 });
        }
        let mut b = [0u8; 16];
        self.read(gpa, &mut b)?;
        let addr = u64::from_le_bytes(b[0..8].try_into().unwrap_or([0; 8]));
        let len = u32::from_le_bytes(b[8..12].try_into().unwrap_or([0; 4]));
        let reserved = u32::from_le_bytes(b[12..16].try_into().unwrap_or([0; 4]));
        if reserved != 0 {
            return Err(GuestMemoryError::Reserved {
                gpa,
                value: reserved,
            });
        }
        if len > max_len {
            return Err(GuestMemoryError::OutOfRange {
                gpa: addr,
                len: u64::from(len),
                size: u64::from(max_len),
            });
        }
        self.check(addr, len as usize)?;
        Ok(IoDesc { addr, len })
    }

    /// The bytes of page `index` (for digests).
    pub(crate) fn page(&self, index: usize) -> &[u8] {
        assert!(index < self.pages(), "page {index} out of range");
        // SAFETY: `index < pages` so the page lies inside the mapping; the
        // vCPU is stopped while the VMM computes digests, so the bytes do not
        // change while the slice is alive (the borrow of `self` ends before
        // the next KVM_RUN, which needs `&mut` access to the VM elsewhere only
        // after digest computation returns).
        unsafe { std::slice::from_raw_parts(self.ptr.add(index * PAGE_SIZE), PAGE_SIZE) }
    }

    fn mark_dirty(&self, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = off / PAGE_SIZE;
        let last = (off + len - 1) / PAGE_SIZE;
        for p in first..=last {
            let w = &self.dirty[p / 64];
            w.set(w.get() | 1u64 << (p % 64));
        }
    }

    /// Returns and clears the VMM-side dirty bitmap (one bit per page).
    pub(crate) fn take_vmm_dirty(&self) -> Vec<u64> {
        self.dirty.iter().map(|c| c.replace(0)).collect()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in `new`, and
        // no borrow of guest memory outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_writes_are_tracked() {
        let m = GuestMemory::new(16 * PAGE_SIZE).unwrap();
        m.write_u64(0x1ff8, 7).unwrap();
        assert_eq!(m.read_u64(0x1ff8).unwrap(), 7);
        m.write(0x2ffe, &[1, 2, 3, 4]).unwrap();
        let d = m.take_vmm_dirty();
        assert_eq!(d[0], 0b1110);
        assert_eq!(m.take_vmm_dirty()[0], 0);
        let e = m.write(16 * PAGE_SIZE as u64 - 2, &[0; 4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest range gpa 0xfffe len 4 is outside guest memory of 0x10000 bytes"
        );
        assert!(m.read_u64(u64::MAX - 3).is_err());
    }

    #[test]
    fn descriptors_are_validated() {
        let m = GuestMemory::new(16 * PAGE_SIZE).unwrap();
        m.write_u64(0x100, 0x200).unwrap();
        m.write_u32(0x108, 16).unwrap();
        assert_eq!(
            m.read_desc(0x100, 64).unwrap(),
            IoDesc {
                addr: 0x200,
                len: 16
            }
        );
        assert!(matches!(
            m.read_desc(0x104, 64),
            Err(GuestMemoryError::Misaligned { .. })
        ));
        assert!(m.read_desc(0x100, 8).is_err());
        m.write_u32(0x10c, 9).unwrap();
        assert_eq!(
            m.read_desc(0x100, 64).unwrap_err(),
            GuestMemoryError::Reserved {
                gpa: 0x100,
                value: 9
            }
        );
    }
}

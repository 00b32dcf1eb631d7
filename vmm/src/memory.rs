//! Guest memory: one anonymous private mapping at guest-physical 0, with
//! bounds-checked access for devices and a VMM-side dirty bitmap (KVM's dirty
//! log only sees writes made by the vCPU; writes made here are tracked here).
//!
//! The mapping is shared: [`GuestMemory::reader`] hands out a [`MemoryReader`]
//! that another thread uses to copy pages while the guest runs (state
//! transfer pre-copy, `docs/transfer.md`); the mapping lives until the last
//! of them is dropped.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The mapping itself, shared by the [`GuestMemory`] and its readers.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Pages written by the VMM since the last `take_vmm_dirty`, one bit each.
    dirty: Box<[AtomicU64]>,
}

// SAFETY: the mapping is owned by this value (created in `GuestMemory::new`,
// unmapped in `drop`) and the pointer is only dereferenced through the
// bounds-checked methods below; the dirty bitmap is atomic. Writes happen only
// through `GuestMemory`, which is not `Sync` (one writing thread: the vCPU
// thread); concurrent readers copy with volatile loads (`MemoryReader`).
unsafe impl Send for Mapping {}
// SAFETY: see `Send`: shared access is reads (volatile) and atomic bitmap ops.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping created in
        // `GuestMemory::new`; this is the last owner (the `Arc` is gone), so
        // no borrow of guest memory outlives it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Guest memory. Written only from the vCPU thread (not `Sync`); the vCPU
/// is stopped whenever the VMM touches it (the bounce-buffer rule).
#[derive(Debug)]
pub struct GuestMemory {
    map: Arc<Mapping>,
    /// Not `Sync`: one thread writes (the one owning the VM).
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

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
        let dirty = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(GuestMemory {
            map: Arc::new(Mapping {
                ptr: ptr.cast(),
                len: bytes,
                dirty,
            }),
            _not_sync: PhantomData,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len as u64
    }

    /// Host address of guest-physical 0 (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.map.ptr as u64
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.map.len / PAGE_SIZE
    }

    /// A handle that copies pages from another thread while the guest runs.
    pub fn reader(&self) -> MemoryReader {
        MemoryReader {
            map: Arc::clone(&self.map),
        }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<usize, GuestMemoryError> {
        self.map.check(gpa, len)
    }

    /// Copies guest bytes at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let off = self.check(gpa, buf.len())?;
        // SAFETY: `check` proved `[off, off + buf.len())` lies inside the
        // mapping of `len` bytes; `buf` is a distinct host allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.ptr.add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` into guest memory at `gpa` and marks the pages dirty.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let off = self.check(gpa, data.len())?;
        // SAFETY: `check` proved the range lies inside the mapping; the vCPU
        // is not running while the VMM handles an exit and `GuestMemory` is
        // not `Sync`, so no other write touches these bytes now (a
        // `MemoryReader` may copy them concurrently: it only reads, and the
        // page is marked dirty below, so a torn copy is sent again).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.ptr.add(off), data.len()) };
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

    /// Makes pages `first..first + count` all zero without touching them
    /// (`MADV_DONTNEED`: an anonymous private mapping reads back zeros and
    /// the host frees the memory; KVM drops its mappings through its MMU
    /// notifier). Marks them dirty.
    pub fn discard_pages(&self, first: usize, count: usize) -> Result<(), GuestMemoryError> {
        let off = self.check((first * PAGE_SIZE) as u64, count * PAGE_SIZE)?;
        if count == 0 {
            return Ok(());
        }
        // SAFETY: `check` proved the range lies inside our mapping (page
        // aligned: mmap, and `off` is a multiple of the page size). The vCPU
        // is not running while the VMM handles guest memory and no borrow of
        // these bytes is alive (`page` slices end before any write). The
        // mapping is anonymous and private, so the pages read back as zero.
        let r = unsafe {
            libc::madvise(
                self.map.ptr.add(off).cast(),
                count * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            // Not expected for a valid range; fall back to writing zeros.
            for p in first..first + count {
                self.write((p * PAGE_SIZE) as u64, &[0u8; PAGE_SIZE])?;
            }
            return Ok(());
        }
        self.mark_dirty(off, count * PAGE_SIZE);
        Ok(())
    }

    /// The bytes of page `index` (for digests).
    pub(crate) fn page(&self, index: usize) -> &[u8] {
        assert!(index < self.pages(), "page {index} out of range");
        // SAFETY: `index < pages` so the page lies inside the mapping; the
        // vCPU is stopped while the VMM computes digests and only this
        // (non-`Sync`) value writes, so the bytes do not change while the
        // slice is alive (the borrow of `self` ends before the next KVM_RUN,
        // which needs `&mut` access to the VM elsewhere only after digest
        // computation returns). Readers on other threads only read.
        unsafe { std::slice::from_raw_parts(self.map.ptr.add(index * PAGE_SIZE), PAGE_SIZE) }
    }

    fn mark_dirty(&self, off: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = off / PAGE_SIZE;
        let last = (off + len - 1) / PAGE_SIZE;
        for p in first..=last {
            // Release: the bytes written above are visible to whoever takes
            // this bit (Acquire swap in `take_vmm_dirty`) and copies the page.
            self.map.dirty[p / 64].fetch_or(1u64 << (p % 64), Ordering::Release);
        }
    }

    /// Returns and clears the VMM-side dirty bitmap (one bit per page).
    /// The VM takes it through the dirty tracker (`dirty.rs`).
    #[cfg(test)]
    pub(crate) fn take_vmm_dirty(&self) -> Vec<u64> {
        self.map.take_vmm_dirty()
    }
}

impl Mapping {
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

    fn take_vmm_dirty(&self) -> Vec<u64> {
        // Acquire: pairs with the Release `fetch_or` in `mark_dirty`, so a
        // page copied after this sees the bytes whose bit was taken.
        self.dirty
            .iter()
            .map(|w| w.swap(0, Ordering::Acquire))
            .collect()
    }
}

/// Copies guest pages from any thread, concurrently with the running guest
/// and with the vCPU thread's device writes (state-transfer pre-copy).
///
/// A copy may be torn: bytes can change while they are copied. That is the
/// pre-copy contract: a page written during (or after) its copy is in the
/// dirty log and is copied again in a later round or at the pause.
#[derive(Clone, Debug)]
pub struct MemoryReader {
    map: Arc<Mapping>,
}

impl MemoryReader {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.map.len as u64
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.map.len / PAGE_SIZE
    }

    /// Copies page `index` into `out` (one page) with volatile 8-byte loads.
    pub fn copy_page(&self, index: usize, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let off = self
            .map
            .check((index * PAGE_SIZE) as u64, PAGE_SIZE)
            .ok()
            .filter(|_| out.len() == PAGE_SIZE)
            .ok_or(GuestMemoryError::OutOfRange {
                gpa: (index * PAGE_SIZE) as u64,
                len: out.len() as u64,
                size: self.map.len as u64,
            })?;
        // SAFETY: `check` proved the page lies inside the mapping, which is
        // page aligned (mmap), so every `u64` read is aligned and in bounds.
        // The guest (through KVM) or the vCPU thread may write these bytes
        // meanwhile: the loads are volatile and no reference into guest
        // memory is created (the vm-memory `VolatileSlice` rule), so a
        // concurrent change only yields a torn copy, which the dirty log
        // re-sends (type doc).
        let src = unsafe { self.map.ptr.add(off) }.cast::<u64>();
        for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: `i < PAGE_SIZE / 8`: inside the page (see above).
            let w = unsafe { std::ptr::read_volatile(src.add(i)) };
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        Ok(())
    }

    /// Returns and clears the VMM-side dirty bitmap (for the dirty tracker).
    pub(crate) fn take_vmm_dirty(&self) -> Vec<u64> {
        self.map.take_vmm_dirty()
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
        // Discarded pages read back as zero and are dirty.
        m.discard_pages(1, 1).unwrap();
        assert_eq!(m.read_u64(0x1ff8).unwrap(), 0);
        assert_eq!(m.take_vmm_dirty()[0], 0b10);
        assert!(m.discard_pages(15, 2).is_err());
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

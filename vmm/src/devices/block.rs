//! The block device: a file-backed disk driven through a request ring in
//! guest memory, several requests per exit.
//!
//! Contract: two disk modes (`vmm.disk_mode`, `--disk-mode`; normative
//! text in `docs/devices.md`). **Shared** (one disk both sides reach): reads
//! reach the guest only through `DiskRead` input entries that carry the data
//! (so a backup replays them without the file), writes leave only as OUTPUT
//! `DiskWrite` entries whose release writes the file (only the primary
//! writes). **Local** (each side owns a copy, identical at the same exit by
//! construction): a write goes to the own copy at once, in every mode, and
//! is not logged (its data are guest memory, which replay reproduces); a
//! read comes from the own copy and is logged as a 24-byte digest entry, so
//! a copy that differs is caught at the first read that sees it. The disk's
//! capacity reaches the guest through a logged INFO exchange, so request
//! checks are deterministic. Normative layout: `docs/devices.md`.
//!
//! # Layout (guest-physical, second half of the device region)
//!
//! ```text
//! BLK_CTRL  0x180_0000  u32 req_prod (guest)  u32 req_cons (VMM)
//! BLK_RING  0x180_1000  64 requests x 32 bytes
//! request:  0 u32 op (1 READ, 2 WRITE)   4 u32 status (VMM writes, see `status`)
//!           8 u64 sector (512 bytes)     16 u64 buffer GPA
//!           24 u32 len (multiple of 512, <= 64 KiB)   28 u32 reserved (0)
//! info:     0 u64 capacity in sectors    8 u32 max request bytes  12 u32 sector size
//! ```
//!
//! # The main flow
//!
//! 1. The guest writes the GPA of a 16-byte info buffer to port `0x49`
//!    (INFO): the VMM answers the capacity through `ctx.input(PortIn)`.
//! 2. The guest fills requests, advances `req_prod`, writes port `0x48`
//!    (doorbell).
//! 3. At that exit [`Block`] handles every request `req_cons..req_prod` in
//!    order: a READ is one `ctx.input(DiskRead)` (record/live: `pread` from
//!    the file; replay: the log) whose bytes are copied to the buffer; a
//!    WRITE is one `ctx.output(DiskWrite)` whose release `pwrite`s the file;
//!    until then the write is held in `HeldWrites` and patched over later
//!    reads. Local mode: a READ `pread`s the own copy and logs its digest
//!    (replay compares), a WRITE `pwrite`s the own copy. Each request's
//!    status is written, then `req_cons = req_prod`.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use ftvm_tuning::DiskMode;
use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx, out_u32};
use crate::journal::{Divergence, Mode};
use crate::layout::DEV_REGION;
use crate::payload::fnv1a64;
use crate::stats::Counter;

/// Payload of a local-disk `DiskRead` entry: `u32 status | u32 form (1) |
/// u32 len | u32 0 | u64 FNV-1a 64 of the data`. The shared form has `0` in
/// the form word and the data after it.
const LOCAL_READ_LEN: usize = 24;
/// The form word of a local-disk `DiskRead` entry.
const FORM_LOCAL: u32 = 1;

/// Guest-visible constants of the block device (`ftvm_guest_abi::block`,
/// shared with the guest driver `vmm/guests/net/src/block.rs`).
pub use ftvm_guest_abi::block as abi;

use abi::*;

const _: () = assert!(
    RING + SLOTS as u64 * DESC_SIZE <= DEV_REGION + 0x100_0000,
    "block ring fits the device region"
);

/// The block device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BlockSetupError {
    /// The disk file could not be opened or measured.
    #[error("disk file {path}: {what}")]
    File {
        /// The `--disk` path.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Counters of a block device.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Read requests completed.
    pub reads: Counter,
    /// Write requests completed.
    pub writes: Counter,
    /// Bytes read.
    pub read_bytes: Counter,
    /// Bytes written.
    pub write_bytes: Counter,
    /// Writes whose release failed on the host.
    pub write_errors: Counter,
    /// Doorbell exits.
    pub doorbells: Counter,
}

/// Writes handed to the output gate but not yet in the file, per sector.
///
/// With a gate that defers releases (the output rule: a write leaves only
/// once the backup has its entry), a READ of a sector whose WRITE is still
/// held must see the written data, as a disk would. Reads patch what the
/// file returns with the held sectors; a release writes the file first and
/// then drops its sectors unless a newer write holds them.
#[derive(Debug, Default)]
struct HeldWrites {
    next_generation: u64,
    sectors: BTreeMap<u64, (u64, Box<[u8]>)>,
}

impl HeldWrites {
    /// Holds `data` (whole sectors) from `sector` on; returns its generation.
    fn hold(&mut self, sector: u64, data: &[u8]) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
            self.sectors
                .insert(sector + i as u64, (generation, chunk.into()));
        }
        generation
    }

    /// The write of `generation` is in the file: forget its sectors.
    fn released(&mut self, sector: u64, count: u64, generation: u64) {
        for s in sector..sector + count {
            if self.sectors.get(&s).is_some_and(|(g, _)| *g == generation) {
                self.sectors.remove(&s);
            }
        }
    }

    /// Overlays held sectors on `out`, the bytes read from `sector` on.
    fn patch(&self, sector: u64, out: &mut [u8]) {
        let count = (out.len() as u64).div_ceil(SECTOR);
        for (s, (_, data)) in self.sectors.range(sector..sector + count) {
            let at = ((s - sector) * SECTOR) as usize;
            out[at..at + data.len()].copy_from_slice(data);
        }
    }
}

fn lock_held(held: &Mutex<HeldWrites>) -> std::sync::MutexGuard<'_, HeldWrites> {
    // A panic while holding the lock cannot leave the map half-updated in a
    // way that matters more than losing the process: take it anyway.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sectors per chunk of [`DiskDirty`] (64 KiB, one transfer record).
pub const DISK_CHUNK_SECTORS: u64 = 128;

/// Chunks of a local disk copy written while a state transfer copies it:
/// the transfer starts tracking before its full copy, takes the written set
/// each round and, with the guest paused, the last one; writes mark their
/// chunks only while tracking.
#[derive(Debug, Default)]
pub struct DiskDirty {
    chunks: Mutex<Option<std::collections::BTreeSet<u64>>>,
}

impl DiskDirty {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<std::collections::BTreeSet<u64>>> {
        // A poisoned set only means a panicking writer: keep the marks.
        self.chunks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts tracking (an empty set).
    pub fn start(&self) {
        *self.lock() = Some(Default::default());
    }

    /// Whether writes are being tracked.
    pub fn tracking(&self) -> bool {
        self.lock().is_some()
    }

    /// Stops tracking.
    pub fn stop(&self) {
        *self.lock() = None;
    }

    /// The chunks written since `start` or the last `take`, ascending.
    pub fn take(&self) -> Vec<u64> {
        self.lock()
            .as_mut()
            .map(|set| std::mem::take(set).into_iter().collect())
            .unwrap_or_default()
    }

    fn mark(&self, sector: u64, count: u64) {
        if let Some(set) = self.lock().as_mut() {
            let last = (sector + count.max(1) - 1) / DISK_CHUNK_SECTORS;
            set.extend(sector / DISK_CHUNK_SECTORS..=last);
        }
    }
}

/// A local disk copy as state transfer sees it: its file, size and the
/// tracker of chunks the guest writes.
#[derive(Clone, Debug)]
pub struct LocalDisk {
    /// The open disk file (shared with the device).
    pub file: Arc<File>,
    /// Its capacity in sectors.
    pub sectors: u64,
    /// Its path, for messages.
    pub path: String,
    /// Chunks written while a transfer tracks them.
    pub dirty: Arc<DiskDirty>,
}

/// The block device (ports `0x48..=0x49`).
#[derive(Debug)]
pub struct Block {
    /// Shared or local disk.
    mode: DiskMode,
    /// The disk file's path (messages); `None` when detached.
    path: Option<PathBuf>,
    /// `None` for a replay-only device (reads and INFO come from the log).
    file: Option<Arc<File>>,
    /// Writes not yet released (only with a file: a replaying device never
    /// releases, and its reads come from the log).
    held: Option<Arc<Mutex<HeldWrites>>>,
    /// Host capacity in sectors (record/live).
    host_sectors: u64,
    /// Local mode: chunks written while a transfer copies the disk.
    written: Arc<DiskDirty>,
    /// Capacity the guest learned through INFO (same in every mode).
    sectors: Option<u64>,
    stats: Arc<BlockStats>,
}

impl Block {
    /// Opens `path` read-write as a shared disk; the capacity is its length
    /// rounded down to whole sectors.
    pub fn open(path: &Path) -> Result<Block, BlockSetupError> {
        Block::open_mode(path, DiskMode::Shared)
    }

    /// Opens `path` read-write in `mode` (local: this side's own copy).
    pub fn open_mode(path: &Path, mode: DiskMode) -> Result<Block, BlockSetupError> {
        let err = |what| {
            move |source| BlockSetupError::File {
                path: path.to_path_buf(),
                what,
                source,
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err("open read-write"))?;
        let len = file.metadata().map_err(err("stat"))?.len();
        Ok(Block {
            mode,
            path: Some(path.to_path_buf()),
            file: Some(Arc::new(file)),
            // A local copy is written at once: nothing is ever held.
            held: (mode == DiskMode::Shared).then(Arc::default),
            host_sectors: len / SECTOR,
            written: Arc::default(),
            sectors: None,
            stats: Arc::new(BlockStats::default()),
        })
    }

    /// A device without a file, for replay: INFO answers and read data come
    /// from the log, writes are checked and dropped. Asked for host data (a
    /// live or record run), it fails with an error.
    pub fn detached() -> Block {
        Block {
            mode: DiskMode::Shared,
            path: None,
            file: None,
            held: None,
            host_sectors: 0,
            written: Arc::default(),
            sectors: None,
            stats: Arc::new(BlockStats::default()),
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        Arc::clone(&self.stats)
    }

    /// The disk mode.
    pub fn mode(&self) -> DiskMode {
        self.mode
    }

    /// The disk file (`None` when detached), for state transfer.
    pub fn file(&self) -> Option<&Arc<File>> {
        self.file.as_ref()
    }

    /// The disk file's path, for messages (`-` when detached).
    pub fn path_display(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| p.display().to_string())
    }

    /// Local mode: the disk copy for state transfer (`None`: shared or
    /// detached).
    pub fn local_disk(&self) -> Option<LocalDisk> {
        let file = self
            .file
            .as_ref()
            .filter(|_| self.mode == DiskMode::Local)?;
        Some(LocalDisk {
            file: Arc::clone(file),
            sectors: self.host_sectors,
            path: self.path_display(),
            dirty: Arc::clone(&self.written),
        })
    }

    /// The tracker of chunks written to a local copy (state transfer).
    pub fn disk_dirty(&self) -> Arc<DiskDirty> {
        Arc::clone(&self.written)
    }

    /// The host file's capacity in sectors (0 when detached).
    pub fn host_sectors(&self) -> u64 {
        self.host_sectors
    }

    fn no_file(what: &str) -> DeviceError {
        DeviceError::Host {
            what: format!("block device {what}"),
            source: std::io::Error::other("no disk file (replay-only device)"),
        }
    }

    fn info(&mut self, ctx: &mut ExitCtx<'_>, port: u16, gpa: u64) -> Result<(), DeviceError> {
        let file = self.file.is_some();
        let host_sectors = self.host_sectors;
        let sectors = ctx.input(
            Kind::PortIn,
            port,
            8,
            |buf| {
                if !file {
                    return Err(Block::no_file("INFO"));
                }
                buf[..8].copy_from_slice(&host_sectors.to_le_bytes());
                Ok(8)
            },
            |bytes| {
                <[u8; 8]>::try_from(bytes)
                    .map(u64::from_le_bytes)
                    .map_err(|_| DeviceError::BadRequest {
                        port,
                        detail: format!("INFO input of {} bytes, expected 8", bytes.len()),
                    })
            },
        )?;
        if self.mode == DiskMode::Local && sectors != host_sectors {
            return Err(DeviceError::Host {
                what: format!(
                    "local disk copy {}: {host_sectors} sectors, the primary's copy has {sectors} (INFO at exit {})",
                    self.path_display(),
                    ctx.ordinal()
                ),
                source: std::io::Error::other("the disk copies differ in size"),
            });
        }
        self.sectors = Some(sectors);
        let mut info = [0u8; 16];
        info[0..8].copy_from_slice(&sectors.to_le_bytes());
        info[8..12].copy_from_slice(&MAX_REQUEST.to_le_bytes());
        info[12..16].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        ctx.mem().write(gpa, &info)?;
        Ok(())
    }

    /// Step 3: every pending request, in ring order.
    fn doorbell(&mut self, ctx: &mut ExitCtx<'_>, port: u16) -> Result<(), DeviceError> {
        let mem = ctx.mem();
        let prod = mem.read_u32(CTRL + REQ_PROD)?;
        let cons = mem.read_u32(CTRL + REQ_CONS)?;
        let pending = prod.wrapping_sub(cons);
        if pending > SLOTS {
            return Err(DeviceError::BadRequest {
                port,
                detail: format!(
                    "block ring: req_prod {prod} is {pending} requests ahead of req_cons {cons}, ring has {SLOTS}"
                ),
            });
        }
        for i in 0..pending {
            let desc = RING + u64::from(cons.wrapping_add(i) % SLOTS) * DESC_SIZE;
            let status = self.request(ctx, port, desc)?;
            mem.write_u32(desc + 4, status)?;
        }
        if pending > 0 {
            mem.write_u32(CTRL + REQ_CONS, prod)?;
        }
        Ok(())
    }

    /// One request; returns its status.
    fn request(&mut self, ctx: &mut ExitCtx<'_>, port: u16, desc: u64) -> Result<u32, DeviceError> {
        let mem = ctx.mem();
        let op = mem.read_u32(desc)?;
        let sector = mem.read_u64(desc + 8)?;
        let buf = mem.read_u64(desc + 16)?;
        let len = mem.read_u32(desc + 24)?;
        let reserved = mem.read_u32(desc + 28)?;
        if !(op == OP_READ || op == OP_WRITE)
            || len == 0
            || len > MAX_REQUEST
            || !u64::from(len).is_multiple_of(SECTOR)
            || reserved != 0
        {
            return Ok(status::BAD_REQUEST);
        }
        let Some(capacity) = self.sectors else {
            return Ok(status::NOT_READY);
        };
        let count = u64::from(len) / SECTOR;
        if sector.checked_add(count).is_none_or(|end| end > capacity) {
            return Ok(status::OUT_OF_RANGE);
        }
        let offset = sector * SECTOR;
        let len = len as usize;
        if self.mode == DiskMode::Local {
            return if op == OP_READ {
                self.local_read(ctx, port, sector, buf, len)
            } else {
                self.local_write(ctx, sector, buf, len)
            };
        }
        if op == OP_READ {
            let file = self.file.clone();
            let held = self.held.clone();
            let stats = &self.stats;
            return ctx.input(
                Kind::DiskRead,
                port,
                8 + len,
                |out| {
                    let (Some(file), Some(held)) = (file, held) else {
                        return Err(Block::no_file("read"));
                    };
                    // Held across the read: a release cannot drop a sector
                    // between our `pread` and the patch.
                    let held = lock_held(&held);
                    out[0..4].copy_from_slice(&status::OK.to_le_bytes());
                    out[4..8].fill(0);
                    let data = &mut out[8..8 + len];
                    // A short file reads as zeros; a failing read is reported
                    // to the guest as IO_ERROR (and logged, so replay agrees).
                    let mut done = 0;
                    while done < len {
                        match file.read_at(&mut data[done..], offset + done as u64) {
                            Ok(0) => break,
                            Ok(n) => done += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                out[0..4].copy_from_slice(&status::IO_ERROR.to_le_bytes());
                                return Ok(8);
                            }
                        }
                    }
                    data[done..].fill(0);
                    held.patch(sector, data);
                    Ok(8 + len)
                },
                |data| {
                    let st = data
                        .get(0..4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    match st {
                        Some(status::OK) if data.len() == 8 + len => {
                            mem.write(buf, &data[8..])?;
                            stats.reads.add(1);
                            stats.read_bytes.add(len as u64);
                            Ok(status::OK)
                        }
                        Some(status::IO_ERROR) if data.len() == 8 => Ok(status::IO_ERROR),
                        _ => Err(DeviceError::BadRequest {
                            port,
                            detail: format!(
                                "DiskRead input of {} bytes (status {st:?}) for a {len}-byte read of sector {sector}{}",
                                data.len(),
                                if is_local_form(data) {
                                    ": a local-disk entry (digest only), this device's disk mode is shared"
                                } else {
                                    ""
                                }
                            ),
                        }),
                    }
                },
            );
        }
        let data: Arc<[u8]> = mem.read_vec(buf, len)?.into();
        let file = self.file.clone();
        let stats = Arc::clone(&self.stats);
        // A replaying device reads from the log, never the file, and its
        // writes are released only at go-live, if at all: nothing to patch.
        let held = self.held.clone().filter(|_| ctx.mode() != Mode::Replay);
        let generation = held.as_ref().map(|h| lock_held(h).hold(sector, &data));
        let bytes = Arc::clone(&data);
        ctx.output(Kind::DiskWrite, port, &data, move || {
            let ok = file.is_some_and(|f| f.write_all_at(&bytes, offset).is_ok());
            if !ok {
                stats.write_errors.add(1);
            }
            if let (Some(held), Some(generation)) = (held, generation) {
                lock_held(&held).released(sector, count, generation);
            }
        })?;
        self.stats.writes.add(1);
        self.stats.write_bytes.add(len as u64);
        Ok(status::OK)
    }
}

/// Reads `len` bytes at `offset` of `file`: `(status, data)`. A short file
/// reads as zeros; a failing read is IO_ERROR with no data.
fn pread(file: &File, offset: u64, len: usize) -> (u32, Vec<u8>) {
    let mut out = vec![0; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut out[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (status::IO_ERROR, Vec::new()),
        }
    }
    (status::OK, out)
}

/// A `DiskRead` payload in the local-disk form.
fn is_local_form(data: &[u8]) -> bool {
    data.len() == LOCAL_READ_LEN && data.get(4..8) == Some(&FORM_LOCAL.to_le_bytes()[..])
}

fn word(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(b)
}

impl Block {
    fn local_file(&self, what: &str) -> Result<&Arc<File>, DeviceError> {
        self.file.as_ref().ok_or_else(|| Block::no_file(what))
    }

    /// Local mode: read the own copy; log (record) or check (replay) the
    /// digest of what it returned.
    fn local_read(
        &mut self,
        ctx: &mut ExitCtx<'_>,
        port: u16,
        sector: u64,
        buf: u64,
        len: usize,
    ) -> Result<u32, DeviceError> {
        let (own_status, own) = pread(self.local_file("read")?, sector * SECTOR, len);
        let digest = fnv1a64(&own);
        // The logged entry's length and first bytes (a local-form entry is
        // LOCAL_READ_LEN bytes; longer ones only need their length named).
        let (logged_len, head) = ctx.input(
            Kind::DiskRead,
            port,
            LOCAL_READ_LEN,
            |out| {
                out[0..4].copy_from_slice(&own_status.to_le_bytes());
                out[4..8].copy_from_slice(&FORM_LOCAL.to_le_bytes());
                out[8..12].copy_from_slice(&(len as u32).to_le_bytes());
                out[12..16].fill(0);
                out[16..24].copy_from_slice(&digest.to_le_bytes());
                Ok(LOCAL_READ_LEN)
            },
            |logged| {
                let mut head = [0u8; LOCAL_READ_LEN];
                let n = logged.len().min(LOCAL_READ_LEN);
                head[..n].copy_from_slice(&logged[..n]);
                Ok((logged.len(), head))
            },
        )?;
        let logged = &head[..logged_len.min(LOCAL_READ_LEN)];
        let ordinal = ctx.ordinal();
        if !is_local_form(logged) || word(logged, 8) as usize != len {
            return Err(Divergence::Entry {
                ordinal,
                expected: format!(
                    "a local-disk DiskRead entry (digest) for a {len}-byte read of sector {sector}"
                ),
                found: if logged_len == 8 + len || logged_len == 8 {
                    format!(
                        "a shared-disk DiskRead entry of {} bytes: the primary's disk mode is shared, this side's local",
                        logged_len
                    )
                } else {
                    format!("a DiskRead entry of {} bytes", logged_len)
                },
            }
            .into());
        }
        let log_status = word(logged, 0);
        if log_status == status::IO_ERROR {
            // The primary's read failed: the guest sees the same on every side.
            return Ok(status::IO_ERROR);
        }
        if own_status != status::OK {
            return Err(DeviceError::Host {
                what: format!(
                    "local disk copy {}: the read of {len} bytes at sector {sector} (exit {ordinal}) failed here, the primary's succeeded",
                    self.path_display()
                ),
                source: std::io::Error::other("read error"),
            });
        }
        let mut d = [0u8; 8];
        d.copy_from_slice(&logged[16..24]);
        let log_digest = u64::from_le_bytes(d);
        if log_status != status::OK || log_digest != digest {
            return Err(Divergence::DiskRead {
                ordinal,
                sector,
                len: len as u32,
                digest,
                log_digest,
            }
            .into());
        }
        ctx.mem().write(buf, &own)?;
        self.stats.reads.add(1);
        self.stats.read_bytes.add(len as u64);
        Ok(status::OK)
    }

    /// Local mode: write the own copy now (no entry: the data are guest
    /// memory, which replay reproduces). A failing write stops this side.
    fn local_write(
        &mut self,
        ctx: &mut ExitCtx<'_>,
        sector: u64,
        buf: u64,
        len: usize,
    ) -> Result<u32, DeviceError> {
        let data = ctx.mem().read_vec(buf, len)?;
        let file = self.local_file("write")?;
        file.write_all_at(&data, sector * SECTOR)
            .map_err(|source| DeviceError::Host {
                what: format!(
                    "local disk copy {}: writing {len} bytes at sector {sector} (exit {})",
                    self.path_display(),
                    ctx.ordinal()
                ),
                source,
            })?;
        self.written.mark(sector, (len as u64) / SECTOR);
        self.stats.writes.add(1);
        self.stats.write_bytes.add(len as u64);
        Ok(status::OK)
    }
}

impl Device for Block {
    fn name(&self) -> &'static str {
        "block"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        PORT_DOORBELL..=PORT_INFO
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let value = out_u32(port, data)?;
        match port {
            PORT_INFO => self.info(ctx, port, u64::from(value)),
            _ => {
                self.stats.doorbells.add(1);
                self.doorbell(ctx, port)
            }
        }
    }
}

pub mod persist;

#[cfg(test)]
mod tests {
    //! Device-level tests without KVM: the block device driven through real
    //! exit contexts over real guest memory, live and record → replay.
    use std::sync::Mutex;

    use super::*;
    use crate::device::ExitRequests;
    use crate::journal::Journal;
    use crate::log::{LogFileReader, SharedLog};
    use crate::memory::GuestMemory;
    use crate::output::ImmediateGate;

    fn exit(
        mem: &GuestMemory,
        journal: &mut Journal,
        ordinal: u64,
        dev: &mut Block,
        port: u16,
        value: u32,
    ) -> Result<(), DeviceError> {
        let mut requests = ExitRequests::default();
        let mut ctx = ExitCtx {
            mem,
            journal,
            ordinal,
            requests: &mut requests,
        };
        dev.io_out(&mut ctx, port, &value.to_le_bytes())
    }

    /// Writes request `i` of the ring.
    fn put(mem: &GuestMemory, i: u32, op: u32, sector: u64, buf: u64, len: u32) {
        let d = RING + u64::from(i % SLOTS) * DESC_SIZE;
        mem.write_u32(d, op).unwrap();
        mem.write_u32(d + 4, 0).unwrap();
        mem.write_u64(d + 8, sector).unwrap();
        mem.write_u64(d + 16, buf).unwrap();
        mem.write_u32(d + 24, len).unwrap();
        mem.write_u32(d + 28, 0).unwrap();
    }

    fn status_of(mem: &GuestMemory, i: u32) -> u32 {
        mem.read_u32(RING + u64::from(i % SLOTS) * DESC_SIZE + 4)
            .unwrap()
    }

    const INFO_GPA: u64 = 0x60_0000;
    const BUF: u64 = 0x61_0000;

    /// INFO, then one batch: read 2 sectors, write 1, and four bad requests.
    fn session(mem: &GuestMemory, journal: &mut Journal, dev: &mut Block) {
        exit(mem, journal, 1, dev, PORT_INFO, INFO_GPA as u32).unwrap();
        mem.write(BUF + 0x1000, &[0xab; 512]).unwrap();
        put(mem, 0, OP_READ, 0, BUF, 1024);
        put(mem, 1, OP_WRITE, 3, BUF + 0x1000, 512);
        put(mem, 2, OP_READ, 0, BUF, 100); // not a multiple of 512
        put(mem, 3, 7, 0, BUF, 512); // unknown op
        put(mem, 4, OP_READ, 15, BUF, 1024); // past the end (16 sectors)
        put(mem, 5, OP_READ, 0, BUF, 512);
        mem.write_u32(RING + 5 * DESC_SIZE + 28, 1).unwrap(); // reserved != 0
        mem.write_u32(CTRL + REQ_PROD, 6).unwrap();
        exit(mem, journal, 2, dev, PORT_DOORBELL, 0).unwrap();
    }

    fn disk_file(dir: &Path) -> PathBuf {
        let path = dir.join("disk.img");
        let data: Vec<u8> = (0..16 * 512).map(|i| (i / 512) as u8 + 1).collect();
        std::fs::write(&path, data).unwrap();
        path
    }

    fn check_guest_view(mem: &GuestMemory) {
        assert_eq!(mem.read_u64(INFO_GPA).unwrap(), 16);
        assert_eq!(mem.read_u32(INFO_GPA + 8).unwrap(), MAX_REQUEST);
        let got = mem.read_vec(BUF, 1024).unwrap();
        assert!(got[..512].iter().all(|&b| b == 1) && got[512..].iter().all(|&b| b == 2));
        let st: Vec<u32> = (0..6).map(|i| status_of(mem, i)).collect();
        assert_eq!(
            st,
            [
                status::OK,
                status::OK,
                status::BAD_REQUEST,
                status::BAD_REQUEST,
                status::OUT_OF_RANGE,
                status::BAD_REQUEST
            ]
        );
        assert_eq!(mem.read_u32(CTRL + REQ_CONS).unwrap(), 6);
    }

    #[test]
    fn requests_complete_with_their_status_and_replay_without_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_file(dir.path());
        let log = SharedLog::default();
        let mem = GuestMemory::new(64 << 20).unwrap();
        let mut journal = Journal::record(Box::new(log.clone()), Box::new(ImmediateGate));
        let mut dev = Block::open(&path).unwrap();
        session(&mem, &mut journal, &mut dev);
        check_guest_view(&mem);
        // The write reached the file (released at once by the gate).
        let file = std::fs::read(&path).unwrap();
        assert!(file[3 * 512..4 * 512].iter().all(|&b| b == 0xab));
        assert_eq!(dev.stats.reads.get(), 1);
        assert_eq!(dev.stats.writes.get(), 1);

        // Replay on fresh memory with no file: the same guest view.
        std::fs::remove_file(&path).unwrap();
        let bytes = log.bytes();
        let source = LogFileReader::from_bytes(Path::new("mem"), &bytes).unwrap();
        let mem2 = GuestMemory::new(64 << 20).unwrap();
        let mut journal2 = Journal::replay(Box::new(source), Box::new(ImmediateGate));
        let mut dev2 = Block::detached();
        session(&mem2, &mut journal2, &mut dev2);
        check_guest_view(&mem2);
        assert!(!path.exists(), "replay must not write the disk");
    }

    #[test]
    fn requests_before_info_are_not_ready_and_a_corrupt_ring_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mem = GuestMemory::new(64 << 20).unwrap();
        let mut journal = Journal::live(Box::new(ImmediateGate));
        let mut dev = Block::open(&disk_file(dir.path())).unwrap();
        put(&mem, 0, OP_READ, 0, BUF, 512);
        mem.write_u32(CTRL + REQ_PROD, 1).unwrap();
        exit(&mem, &mut journal, 1, &mut dev, PORT_DOORBELL, 0).unwrap();
        assert_eq!(status_of(&mem, 0), status::NOT_READY);
        mem.write_u32(CTRL + REQ_PROD, 1 + SLOTS + 1).unwrap();
        let e = exit(&mem, &mut journal, 2, &mut dev, PORT_DOORBELL, 0).unwrap_err();
        assert!(e.to_string().contains("req_prod 66"), "{e}");
        // A buffer outside guest memory is a memory error naming the GPA.
        exit(&mem, &mut journal, 3, &mut dev, PORT_INFO, INFO_GPA as u32).unwrap();
        mem.write_u32(CTRL + REQ_PROD, 1).unwrap();
        mem.write_u32(CTRL + REQ_CONS, 0).unwrap();
        put(&mem, 0, OP_WRITE, 0, 0xffff_0000_0000, 512);
        let e = exit(&mem, &mut journal, 4, &mut dev, PORT_DOORBELL, 0).unwrap_err();
        assert!(matches!(e, DeviceError::Memory(_)), "{e}");
        // A missing file is a setup error naming the path.
        let e = Block::open(&dir.path().join("nope.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.img"), "{e}");
    }

    /// A gate that holds every release until the test runs them (what the
    /// channel's OutputGate does until the backup ACKs).
    struct Deferring(Arc<Mutex<Vec<crate::output::Release>>>);

    impl crate::output::OutputGate for Deferring {
        fn submit(&mut self, _seq: Option<u64>, _kind: Kind, release: crate::output::Release) {
            self.0.lock().unwrap().push(release);
        }
    }

    #[test]
    fn a_read_sees_a_write_still_held_by_the_output_gate() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk_file(dir.path());
        let held = Arc::new(Mutex::new(Vec::new()));
        let log = SharedLog::default();
        let mem = GuestMemory::new(64 << 20).unwrap();
        let mut journal = Journal::record(Box::new(log.clone()), Box::new(Deferring(held.clone())));
        let mut dev = Block::open(&path).unwrap();
        exit(&mem, &mut journal, 1, &mut dev, PORT_INFO, INFO_GPA as u32).unwrap();
        // Write sectors 4..6 (held), then sector 5 again (newer, held).
        mem.write(BUF + 0x1000, &[0xaa; 1024]).unwrap();
        mem.write(BUF + 0x2000, &[0xbb; 512]).unwrap();
        put(&mem, 0, OP_WRITE, 4, BUF + 0x1000, 1024);
        put(&mem, 1, OP_WRITE, 5, BUF + 0x2000, 512);
        // Read sectors 3..7 in the same batch, after the writes.
        put(&mem, 2, OP_READ, 3, BUF, 2048);
        mem.write_u32(CTRL + REQ_PROD, 3).unwrap();
        exit(&mem, &mut journal, 2, &mut dev, PORT_DOORBELL, 0).unwrap();
        let got = mem.read_vec(BUF, 2048).unwrap();
        assert!(got[..512].iter().all(|&b| b == 4), "sector 3 from the file");
        assert!(got[512..1024].iter().all(|&b| b == 0xaa), "sector 4 held");
        assert!(
            got[1024..1536].iter().all(|&b| b == 0xbb),
            "sector 5: newer write"
        );
        assert!(
            got[1536..].iter().all(|&b| b == 7),
            "sector 6 from the file"
        );
        // Nothing reached the file yet.
        assert!(
            std::fs::read(&path).unwrap()[4 * 512..6 * 512]
                .iter()
                .all(|&b| b == 5 || b == 6)
        );
        // Release in order: the file ends with both writes, nothing stays held.
        for r in held.lock().unwrap().drain(..) {
            r();
        }
        let file = std::fs::read(&path).unwrap();
        assert!(file[4 * 512..5 * 512].iter().all(|&b| b == 0xaa));
        assert!(file[5 * 512..6 * 512].iter().all(|&b| b == 0xbb));
        assert!(lock_held(dev.held.as_ref().unwrap()).sectors.is_empty());
    }

    #[test]
    fn local_mode_writes_the_own_copy_at_once_and_replay_checks_read_digests() {
        let dir = tempfile::tempdir().unwrap();
        let a = disk_file(dir.path());
        let b = dir.path().join("b.img");
        let c = dir.path().join("c.img");
        std::fs::copy(&a, &b).unwrap();
        std::fs::copy(&a, &c).unwrap();
        let log = SharedLog::default();
        let mem = GuestMemory::new(64 << 20).unwrap();
        // A deferring gate: a local write must not wait for it.
        let released = Arc::new(Mutex::new(Vec::new()));
        let mut journal =
            Journal::record(Box::new(log.clone()), Box::new(Deferring(released.clone())));
        let mut dev = Block::open_mode(&a, DiskMode::Local).unwrap();
        assert!(dev.held.is_none());
        let dirty = dev.disk_dirty();
        dirty.start();
        session(&mem, &mut journal, &mut dev);
        check_guest_view(&mem);
        assert!(released.lock().unwrap().is_empty(), "no output entry");
        assert!(
            std::fs::read(&a).unwrap()[3 * 512..4 * 512]
                .iter()
                .all(|&x| x == 0xab)
        );
        assert_eq!(dirty.take(), vec![0], "sector 3 is in chunk 0");
        assert!(dirty.take().is_empty());
        dirty.stop();
        assert!(!dirty.tracking());

        // Replay onto copy b: the same guest view, b gets the write.
        let bytes = log.bytes();
        let replay = |path: &Path| {
            let source = LogFileReader::from_bytes(Path::new("mem"), &bytes).unwrap();
            let mem2 = GuestMemory::new(64 << 20).unwrap();
            let mut j = Journal::replay(Box::new(source), Box::new(ImmediateGate));
            let mut d = Block::open_mode(path, DiskMode::Local).unwrap();
            exit(&mem2, &mut j, 1, &mut d, PORT_INFO, INFO_GPA as u32)?;
            mem2.write(BUF + 0x1000, &[0xab; 512]).unwrap();
            put(&mem2, 0, OP_READ, 0, BUF, 1024);
            put(&mem2, 1, OP_WRITE, 3, BUF + 0x1000, 512);
            put(&mem2, 2, OP_READ, 0, BUF, 100);
            put(&mem2, 3, 7, 0, BUF, 512);
            put(&mem2, 4, OP_READ, 15, BUF, 1024);
            put(&mem2, 5, OP_READ, 0, BUF, 512);
            mem2.write_u32(RING + 5 * DESC_SIZE + 28, 1).unwrap();
            mem2.write_u32(CTRL + REQ_PROD, 6).unwrap();
            exit(&mem2, &mut j, 2, &mut d, PORT_DOORBELL, 0)?;
            check_guest_view(&mem2);
            Ok::<(), DeviceError>(())
        };
        replay(&b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // A copy whose sector 1 differs: the first read is a divergence.
        let mut other = std::fs::read(&c).unwrap();
        other[512 + 7] ^= 1;
        std::fs::write(&c, other).unwrap();
        let e = replay(&c).unwrap_err().to_string();
        assert!(
            e.contains("divergence at exit 2: the read of 1024 bytes at sector 0"),
            "{e}"
        );
    }
}

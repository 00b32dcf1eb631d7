//! The sending side: live pre-copy of a running VM ([`send_live`]) and the
//! stream of a paused snapshot ([`write_snapshot`]).

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::record::{
    Begin, DISK_SECTOR, End, MAX_PAGES_PER_RECORD, Record, RecordKind, RecordWriter,
};
use crate::devices::block::{DISK_CHUNK_SECTORS, LocalDisk};
use crate::dirty::{DirtyPages, Subscription};
use crate::layout::PAGE_SIZE;
use crate::memory::GuestMemoryError;
use crate::payload::CheckpointRecord;
use crate::persist::{Identity, PersistError, STATE_VERSION, VmSnapshot, VmState, is_zero_page};
use crate::vcpu::KvmError;
use crate::vm::{AtExitError, ExitBoundary, VmControl};

/// How a live pre-copy runs.
#[derive(Clone, Debug)]
pub struct PrecopyConfig {
    /// Rounds of dirty pages after the full copy, at most.
    pub max_rounds: u32,
    /// Stop and copy once a round would send at most this many pages.
    pub stop_pages: usize,
    /// Pages per `Pages` record (at most 248).
    pub pages_per_record: usize,
    /// How long to wait for the exit boundary of the pause.
    pub pause_wait: Duration,
    /// Written into `Begin` (tells attempts apart in logs).
    pub attempt: u64,
}

impl Default for PrecopyConfig {
    fn default() -> PrecopyConfig {
        PrecopyConfig {
            max_rounds: 16,
            stop_pages: 256,
            pages_per_record: 64,
            pause_wait: Duration::from_secs(10),
            attempt: 1,
        }
    }
}

/// One round of a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Round number (0: the full copy; the last: stop-and-copy).
    pub round: u32,
    /// Pages sent with their contents.
    pub pages: u64,
    /// Pages sent as zero runs.
    pub zero_pages: u64,
    /// Bytes of the round's records.
    pub bytes: u64,
    /// Wall time of the round (for stop-and-copy: the encoding and sending
    /// after the guest resumed).
    pub elapsed: Duration,
}

/// What a transfer did.
#[derive(Clone, Debug, PartialEq)]
pub struct SendReport {
    /// Every round; the last one is the stop-and-copy.
    pub rounds: Vec<RoundReport>,
    /// Begin to End written.
    pub total: Duration,
    /// The pause the guest saw: from the guest exit of the join point (or
    /// the pause request, if later: a guest asleep in WAIT was not running)
    /// to the guest's first exit after it (`None` if the guest did not exit
    /// again within a second).
    pub pause: Option<Duration>,
    /// Time spent inside the boundary (final pages copied, state saved,
    /// digest): the part of the pause the transfer adds.
    pub stop_copy: Duration,
    /// The pause before the boundary: the join exit's own handling (device,
    /// checkpoint) after the guest left it.
    pub to_boundary: Duration,
    /// The pause after the boundary: the guest's run to its next exit.
    pub resume: Option<Duration>,
    /// Bytes written.
    pub bytes: u64,
    /// Records written (End included).
    pub records: u64,
    /// Exit ordinal of the join point.
    pub ordinal: u64,
    /// The sender's next log seq at the join point (after `on_join`).
    pub next_seq: u64,
    /// The state digest at the join point.
    pub digest: CheckpointRecord,
    /// Local disk: sectors sent (the full copy and every re-sent chunk);
    /// 0 with a shared disk.
    pub disk_sectors: u64,
    /// Local disk: sectors re-sent at the pause (written during the copy
    /// and not re-sent by a round before).
    pub disk_sectors_at_pause: u64,
}

/// Sending a VM's state failed. The VM keeps running either way.
#[derive(Debug, thiserror::Error)]
pub enum SendStateError {
    /// Writing to the stream failed.
    #[error("send state: writing record {index} ({kind})")]
    Write {
        /// The record's index.
        index: u64,
        /// Its kind.
        kind: RecordKind,
        /// The error of the byte sink.
        #[source]
        source: std::io::Error,
    },
    /// Reading the dirty log failed.
    #[error("send state: dirty log")]
    DirtyLog(#[source] KvmError),
    /// Reading guest memory failed.
    #[error("send state: guest memory")]
    Memory(#[source] GuestMemoryError),
    /// The VM did not pause at an exit boundary.
    #[error("send state: pausing the VM")]
    Pause(#[source] AtExitError),
    /// Saving a component at the boundary failed.
    #[error("send state: at the join point")]
    Save(#[source] PersistError),
    /// Reading the local disk copy failed.
    #[error("send state: reading the local disk copy {path} at sector {sector}")]
    Disk {
        /// The disk file.
        path: String,
        /// First sector of the read.
        sector: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Sectors per `disk-blocks` record of the full copy (512 KiB).
const DISK_EXTENT_SECTORS: u64 = 1024;

/// Reads `count` sectors from `sector` on (clipped to the disk).
fn read_disk(disk: &LocalDisk, sector: u64, count: u64) -> Result<Record, SendStateError> {
    use std::os::unix::fs::FileExt;
    let count = count.min(disk.sectors.saturating_sub(sector));
    let mut data = vec![0u8; count as usize * DISK_SECTOR];
    let err = |source| SendStateError::Disk {
        path: disk.path.clone(),
        sector,
        source,
    };
    // A file shorter than its sectors cannot be (capacity = length / 512);
    // a short read is an error, not zeros.
    disk.file
        .read_exact_at(&mut data, sector * DISK_SECTOR as u64)
        .map_err(err)?;
    Ok(Record::DiskBlocks {
        round: 0,
        sector,
        data,
    })
}

/// Reads the written chunks `chunks` of `disk` as round-`round` records.
fn read_chunks(
    disk: &LocalDisk,
    chunks: &[u64],
    round: u32,
) -> Result<Vec<Record>, SendStateError> {
    let mut out = Vec::with_capacity(chunks.len());
    for &c in chunks {
        let sector = c * DISK_CHUNK_SECTORS;
        if sector >= disk.sectors {
            continue;
        }
        let mut rec = read_disk(disk, sector, DISK_CHUNK_SECTORS)?;
        if let Record::DiskBlocks { round: r, .. } = &mut rec {
            *r = round;
        }
        out.push(rec);
    }
    Ok(out)
}

/// Writes disk records; returns (bytes, sectors).
fn write_disk<W: Write>(
    w: &mut RecordWriter<W>,
    recs: &[Record],
) -> Result<(u64, u64), SendStateError> {
    let (mut bytes, mut sectors) = (0, 0);
    for rec in recs {
        bytes += write(w, rec)?;
        if let Record::DiskBlocks { data, .. } = rec {
            sectors += (data.len() / DISK_SECTOR) as u64;
        }
    }
    Ok((bytes, sectors))
}

/// Stops the disk's write tracking however the transfer ends.
struct Tracking<'a>(&'a LocalDisk);

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        self.0.dirty.stop();
    }
}

/// Accumulates one round's pages into `Pages` and `ZeroPages` records.
struct Batch<'a, W: Write> {
    w: &'a mut RecordWriter<W>,
    round: u32,
    per_record: usize,
    index: Vec<u32>,
    data: Vec<u8>,
    runs: Vec<(u32, u32)>,
    report: RoundReport,
}

/// Zero runs per `ZeroPages` record (8 bytes each).
const RUNS_PER_RECORD: usize = 65_536;

fn write<W: Write>(w: &mut RecordWriter<W>, rec: &Record) -> Result<u64, SendStateError> {
    let index = w.records();
    w.write(rec)
        .map(|n| n as u64)
        .map_err(|source| SendStateError::Write {
            index,
            kind: rec.kind(),
            source,
        })
}

impl<'a, W: Write> Batch<'a, W> {
    fn new(w: &'a mut RecordWriter<W>, round: u32, per_record: usize) -> Batch<'a, W> {
        let per_record = per_record.clamp(1, MAX_PAGES_PER_RECORD);
        Batch {
            w,
            round,
            per_record,
            index: Vec::with_capacity(per_record),
            data: Vec::with_capacity(per_record * PAGE_SIZE),
            runs: Vec::new(),
            report: RoundReport {
                round,
                ..Default::default()
            },
        }
    }

    fn page(&mut self, i: u32, bytes: &[u8]) -> Result<(), SendStateError> {
        if is_zero_page(bytes) {
            self.report.zero_pages += 1;
            match self.runs.last_mut() {
                Some((first, count)) if *first + *count == i => *count += 1,
                _ => self.runs.push((i, 1)),
            }
            if self.runs.len() >= RUNS_PER_RECORD {
                self.flush_zero()?;
            }
            return Ok(());
        }
        self.report.pages += 1;
        self.index.push(i);
        self.data.extend_from_slice(bytes);
        if self.index.len() >= self.per_record {
            self.flush_pages()?;
        }
        Ok(())
    }

    fn flush_pages(&mut self) -> Result<(), SendStateError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let rec = Record::Pages {
            round: self.round,
            index: std::mem::take(&mut self.index),
            data: std::mem::take(&mut self.data),
        };
        self.report.bytes += write(self.w, &rec)?;
        if let Record::Pages {
            mut index,
            mut data,
            ..
        } = rec
        {
            index.clear();
            data.clear();
            self.index = index;
            self.data = data;
        }
        Ok(())
    }

    fn flush_zero(&mut self) -> Result<(), SendStateError> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let rec = Record::ZeroPages {
            round: self.round,
            runs: std::mem::take(&mut self.runs),
        };
        self.report.bytes += write(self.w, &rec)?;
        Ok(())
    }

    fn finish(mut self) -> Result<RoundReport, SendStateError> {
        self.flush_pages()?;
        self.flush_zero()?;
        Ok(self.report)
    }
}

fn begin(id: &Identity, attempt: u64) -> Record {
    Record::Begin(Begin {
        state_version: STATE_VERSION,
        page_size: PAGE_SIZE as u32,
        mem_bytes: id.mem_bytes,
        image_digest: id.image_digest,
        attempt,
        guest: id.guest.clone(),
    })
}

/// The state records and End (after the last pages).
fn write_state<W: Write>(
    w: &mut RecordWriter<W>,
    state: &VmState,
    digest: CheckpointRecord,
    next_seq: u64,
) -> Result<u64, SendStateError> {
    let mut bytes = 0;
    let mut own = crate::persist::StateTree::default();
    for (id, s) in &state.tree.sections {
        let mut enc = Vec::new();
        s.encode(&mut enc);
        match id.as_str() {
            "vcpu" => bytes += write(w, &Record::VcpuState(enc))?,
            "timer" | "journal" => own.insert(s.clone()),
            _ => bytes += write(w, &Record::DeviceState(enc))?,
        }
    }
    bytes += write(
        w,
        &Record::VmState {
            ordinal: state.ordinal,
            tree: own.encode(),
        },
    )?;
    let records = w.records();
    bytes += write(
        w,
        &Record::End(End {
            ordinal: state.ordinal,
            records,
            next_seq,
            digest,
        }),
    )?;
    Ok(bytes)
}

/// Writes a paused VM's [`VmSnapshot`] as a transfer stream (one round):
/// [`super::receive()`] restores it like a live transfer.
pub fn write_snapshot<W: Write>(snap: &VmSnapshot, out: W) -> Result<W, SendStateError> {
    let mut w = RecordWriter::new(out);
    write(&mut w, &begin(&snap.state.identity, 0))?;
    let zero = [0u8; PAGE_SIZE];
    let pages = (snap.memory.bytes / PAGE_SIZE as u64) as u32;
    let mut b = Batch::new(&mut w, 0, MAX_PAGES_PER_RECORD);
    let mut next = 0u32;
    for (i, data) in &snap.memory.pages {
        for z in next..*i {
            b.page(z, &zero)?;
        }
        b.page(*i, data)?;
        next = i + 1;
    }
    for z in next..pages {
        b.page(z, &zero)?;
    }
    b.finish()?;
    write_state(&mut w, &snap.state, snap.digest, 0)?;
    w.flush().map_err(|source| SendStateError::Write {
        index: w.records(),
        kind: RecordKind::End,
        source,
    })?;
    Ok(w.into_inner())
}

/// What the boundary hands back to the transfer thread.
struct Captured {
    state: VmState,
    pages: Vec<(u32, Box<[u8]>)>,
    digest: CheckpointRecord,
    ordinal: u64,
    next_seq: u64,
    /// Where the pause began: the join exit, or the request if later.
    paused_at: Instant,
    /// When the boundary request started and ended.
    boundary: (Instant, Instant),
    next_exit: mpsc::Receiver<Instant>,
    stop_copy: Duration,
    /// Local disk chunks written since the last round, read at the pause.
    disk: Vec<Record>,
}

/// The stop-and-copy, on the vCPU thread at the join boundary: the pages
/// dirtied since the last round, every component, the digest; then
/// `on_join` (e.g. start logging to the new backup at exactly this exit).
fn capture(
    b: &mut ExitBoundary<'_>,
    sub: Subscription,
    mut unsent: DirtyPages,
    queued_at: Instant,
    disk: Option<(LocalDisk, u32)>,
    on_join: impl FnOnce(&mut ExitBoundary<'_>),
) -> Result<Captured, PersistError> {
    let t0 = Instant::now();
    // A guest asleep in WAIT was not running before the request woke it:
    // its pause starts at the request.
    let paused_at = b.last_exit_at().map_or(queued_at, |e| e.max(queued_at));
    // Completes the exit's port I/O first: nothing changes memory after.
    let state = b.save()?;
    let more = sub
        .take()
        .map_err(|e| PersistError::save("memory", "dirty_log", crate::error_chain(&e)))?;
    for (u, m) in unsent.bits.iter_mut().zip(&more.bits) {
        *u |= m;
    }
    let mem = b.memory();
    let pages = unsent
        .iter()
        .filter(|&i| i < mem.pages())
        .map(|i| (i as u32, mem.page(i).into()))
        .collect();
    // The guest is stopped: no write is in flight, the copy is that of
    // this exit once the chunks written since the last round are re-sent.
    let disk = match disk {
        Some((d, round)) => read_chunks(&d, &d.dirty.take(), round)
            .map_err(|e| PersistError::save("block", "disk", crate::error_chain(&e)))?,
        None => Vec::new(),
    };
    let digest = b.state_digest()?;
    drop(sub);
    on_join(b);
    let t1 = Instant::now();
    Ok(Captured {
        boundary: (t0, t1),
        ordinal: b.ordinal(),
        next_seq: b.next_seq(),
        next_exit: b.next_exit_at(),
        state,
        pages,
        digest,
        paused_at,
        stop_copy: t1 - t0,
        disk,
    })
}

/// Live pre-copy of the VM behind `control` into `out`, while it runs:
///
/// 1. `Begin`; with a local disk copy, `Disk`, write tracking on and the
///    whole disk (`DiskBlocks`, round 0); then subscribe to the dirty
///    tracker and copy every page (round 0; zero pages as runs).
/// 2. Round after round, re-send the pages the dirty log reports (and the
///    disk chunks written since the last round), until a round would send
///    at most `stop_pages` or `max_rounds` is reached.
/// 3. Pause at the next exit boundary (`capture`): the last dirty pages and
///    written disk chunks, every component, the join digest; `on_join`
///    runs there too.
/// 4. The guest resumes; once it reached its next exit (or after 20 ms),
///    the captured pages, the state records and `End` are written.
///
/// Returns the report and the sink. On error the VM keeps running.
pub fn send_live<W: Write>(
    control: &VmControl,
    out: W,
    cfg: &PrecopyConfig,
    on_join: impl FnOnce(&mut ExitBoundary<'_>) + Send + 'static,
) -> Result<(SendReport, W), SendStateError> {
    let start = Instant::now();
    // Exit times for the pause measurement (one clock read per exit).
    control.stamp_exits(true);
    let r = precopy(control, out, cfg, on_join, start);
    control.stamp_exits(false);
    r
}

fn precopy<W: Write>(
    control: &VmControl,
    out: W,
    cfg: &PrecopyConfig,
    on_join: impl FnOnce(&mut ExitBoundary<'_>) + Send + 'static,
    start: Instant,
) -> Result<(SendReport, W), SendStateError> {
    let mut w = RecordWriter::new(out);
    write(&mut w, &begin(control.identity(), cfg.attempt))?;
    // A local disk copy: its size, then tracking of the chunks the guest
    // writes from now on (before the full copy, like the dirty log).
    let disk = control.local_disk().cloned();
    let _tracking = disk.as_ref().map(|d| {
        d.dirty.start();
        Tracking(d)
    });
    let mut disk_sectors = 0;
    let mut disk_bytes = 0;
    let t = Instant::now();
    if let Some(d) = &disk {
        // The full copy of the disk first (round 0): what the guest writes
        // from here on is re-sent by a later round or at the pause.
        disk_bytes += write(&mut w, &Record::Disk { sectors: d.sectors })?;
        let mut sector = 0;
        while sector < d.sectors {
            let rec = read_disk(d, sector, DISK_EXTENT_SECTORS)?;
            let (bytes, n) = write_disk(&mut w, std::slice::from_ref(&rec))?;
            disk_bytes += bytes;
            disk_sectors += n;
            sector += DISK_EXTENT_SECTORS;
        }
    }
    // Step 1.
    let sub = control
        .tracker()
        .subscribe()
        .map_err(SendStateError::DirtyLog)?;
    let mem = control.memory();
    let mut page = vec![0u8; PAGE_SIZE];
    let mut rounds = Vec::new();
    let mut b = Batch::new(&mut w, 0, cfg.pages_per_record);
    for i in 0..mem.pages() {
        mem.copy_page(i, &mut page)
            .map_err(SendStateError::Memory)?;
        b.page(i as u32, &page)?;
    }
    let mut full = b.finish()?;
    full.bytes += disk_bytes;
    rounds.push(RoundReport {
        elapsed: t.elapsed(),
        ..full
    });
    // Step 2.
    let mut round = 1u32;
    let mut dirty = sub.take().map_err(SendStateError::DirtyLog)?;
    while dirty.count() > cfg.stop_pages && round <= cfg.max_rounds {
        let t = Instant::now();
        let mut b = Batch::new(&mut w, round, cfg.pages_per_record);
        for i in dirty.iter().filter(|&i| i < mem.pages()) {
            mem.copy_page(i, &mut page)
                .map_err(SendStateError::Memory)?;
            b.page(i as u32, &page)?;
        }
        let mut r = b.finish()?;
        if let Some(d) = &disk {
            let recs = read_chunks(d, &d.dirty.take(), round)?;
            let (bytes, n) = write_disk(&mut w, &recs)?;
            r.bytes += bytes;
            disk_sectors += n;
        }
        rounds.push(RoundReport {
            elapsed: t.elapsed(),
            ..r
        });
        round += 1;
        dirty = sub.take().map_err(SendStateError::DirtyLog)?;
    }
    // Step 3.
    let queued_at = Instant::now();
    let at_pause = disk.clone().map(|d| (d, round));
    let pending =
        control.call_at_next_exit(move |b| capture(b, sub, dirty, queued_at, at_pause, on_join));
    let captured = pending
        .wait(cfg.pause_wait)
        .map_err(SendStateError::Pause)?
        .map_err(SendStateError::Save)?;
    // Step 4. Let the guest reach its next exit before competing with it for
    // a core (the records are in memory; their order does not depend on it).
    let mut next_exit = captured
        .next_exit
        .recv_timeout(Duration::from_millis(20))
        .ok();
    let t = Instant::now();
    let mut b = Batch::new(&mut w, round, cfg.pages_per_record);
    for (i, data) in &captured.pages {
        b.page(*i, data)?;
    }
    let mut last = b.finish()?;
    let (bytes, disk_sectors_at_pause) = write_disk(&mut w, &captured.disk)?;
    last.bytes += bytes;
    disk_sectors += disk_sectors_at_pause;
    last.bytes += write_state(&mut w, &captured.state, captured.digest, captured.next_seq)?;
    w.flush().map_err(|source| SendStateError::Write {
        index: w.records(),
        kind: RecordKind::End,
        source,
    })?;
    last.elapsed = t.elapsed();
    rounds.push(last);
    if next_exit.is_none() {
        next_exit = captured.next_exit.recv_timeout(Duration::from_secs(1)).ok();
    }
    let pause = next_exit.map(|next| next.saturating_duration_since(captured.paused_at));
    let report = SendReport {
        rounds,
        total: start.elapsed(),
        pause,
        stop_copy: captured.stop_copy,
        to_boundary: captured
            .boundary
            .0
            .saturating_duration_since(captured.paused_at),
        resume: next_exit.map(|n| n.saturating_duration_since(captured.boundary.1)),
        bytes: w.bytes(),
        records: w.records(),
        ordinal: captured.ordinal,
        next_seq: captured.next_seq,
        digest: captured.digest,
        disk_sectors,
        disk_sectors_at_pause,
    };
    Ok((report, w.into_inner()))
}

//! The receiving side: a state machine over the records of one attempt,
//! writing pages into the VM's memory as they come and restoring every
//! component at `End` once the join digest matches.
//!
//! ```text
//!              Begin               Pages / ZeroPages (round >= last)
//!   AwaitBegin ------> Precopy <----------------+
//!                        |  \-------------------+
//!                        | VcpuState / DeviceState / VmState
//!                        v
//!                      Joining <---- more state records
//!                        | End: all pages sent, digest matches, restore
//!                        v
//!                      Done
//! ```
//!
//! Any other record, or any check failing, ends the attempt with a
//! [`ReceiveStateError`] naming what was wrong. The VM is then in no
//! defined state, but a next attempt rewrites all of it (round 0 covers
//! every page, the state records every component): call [`receive`] again
//! on the same VM, or drop it.

use std::io::Read;

use super::record::{Begin, DISK_SECTOR, End, ReadRecordError, Record, RecordKind, RecordReader};
use crate::devices::block::LocalDisk;
use crate::layout::PAGE_SIZE;
use crate::payload::CheckpointRecord;
use crate::persist::{Identity, RestoreStateError, STATE_VERSION, Section, StateTree, VmState};
use crate::vm::Vm;

const EMPTY: CheckpointRecord = CheckpointRecord {
    digest: 0,
    mem_digest: 0,
    cpu_digest: 0,
    rip: 0,
    is_final: false,
};

/// What a completed transfer brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiveReport {
    /// Guest name.
    pub guest: String,
    /// The sender's attempt number.
    pub attempt: u64,
    /// Exit ordinal of the join point: the VM continues after it.
    pub ordinal: u64,
    /// The sender's next log seq at the join point.
    pub next_seq: u64,
    /// The join digest (sender's and this VM's).
    pub digest: CheckpointRecord,
    /// Records read.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Page contents received (a page sent in several rounds counts each time).
    pub pages: u64,
    /// Zero pages received.
    pub zero_pages: u64,
    /// Pre-copy rounds seen (0 = full copy only).
    pub last_round: u32,
    /// Local disk: sectors received (a sector sent in several rounds counts
    /// each time); 0 with a shared disk.
    pub disk_sectors: u64,
}

/// A transfer attempt was refused. The sender learns it from the lost
/// connection; this side can accept the next attempt.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveStateError {
    /// The stream is cut, corrupt, or not a transfer stream.
    #[error("receive state")]
    Read(#[source] ReadRecordError),
    /// A record is out of place or names something outside this VM.
    #[error("receive state: record {index} ({kind}): {detail}")]
    Record {
        /// The record's index.
        index: u64,
        /// Its kind.
        kind: RecordKind,
        /// What was wrong, with the values.
        detail: String,
    },
    /// Not every page was sent.
    #[error("receive state: {missing} of {pages} pages were never sent (first: page {first})")]
    Incomplete {
        /// Pages not covered.
        missing: usize,
        /// Pages of guest memory.
        pages: usize,
        /// The lowest one.
        first: usize,
    },
    /// The state is for another VM or version, or a component refused it.
    #[error("receive state")]
    Restore(#[source] RestoreStateError),
    /// The received memory does not hash to the sender's memory digest.
    #[error(
        "receive state: memory digest at exit {ordinal}: the received memory hashes to {mine:016x}, the sender's to {sender:016x}"
    )]
    MemoryDigest {
        /// Exit ordinal of the join point.
        ordinal: u64,
        /// The sender's memory digest.
        sender: u64,
        /// This VM's.
        mine: u64,
    },
    /// This VM's state digest at the join point is not the sender's.
    #[error(
        "receive state: state digest at exit {ordinal}: this VM has {mine}, the sender's is {sender}"
    )]
    Digest {
        /// Exit ordinal of the join point.
        ordinal: u64,
        /// The sender's digest.
        sender: CheckpointRecord,
        /// This VM's digest.
        mine: CheckpointRecord,
    },
}

/// The phases of one attempt (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitBegin,
    Precopy { round: u32 },
    Joining,
    Done,
}

struct Receiver<'a> {
    vm: &'a mut Vm,
    identity: Identity,
    pages: usize,
    /// Pages written in this attempt.
    covered: Vec<u64>,
    vcpu: Option<Section>,
    devices: Vec<Section>,
    own: Option<(u64, StateTree)>,
    /// This VM's local disk copy, if its disk mode is local.
    disk: Option<LocalDisk>,
    /// The sender's `disk` record came.
    disk_announced: bool,
    /// Sectors `0..disk_covered` written by the full copy (round 0, in order).
    disk_covered: u64,
    report: ReceiveReport,
}

impl Receiver<'_> {
    fn bad(&self, index: u64, kind: RecordKind, detail: String) -> ReceiveStateError {
        ReceiveStateError::Record {
            index,
            kind,
            detail,
        }
    }

    fn cover(&mut self, i: usize) {
        self.covered[i / 64] |= 1 << (i % 64);
    }

    fn await_begin(&mut self, index: u64, rec: Record) -> Result<Phase, ReceiveStateError> {
        let Record::Begin(b) = rec else {
            return Err(self.bad(index, rec.kind(), "expected begin first".into()));
        };
        let Begin {
            state_version,
            page_size,
            mem_bytes,
            image_digest,
            attempt,
            guest,
        } = b;
        if state_version != STATE_VERSION {
            return Err(ReceiveStateError::Restore(RestoreStateError::Version {
                found: state_version,
                reads: STATE_VERSION,
            }));
        }
        if page_size as usize != PAGE_SIZE {
            return Err(self.bad(
                index,
                RecordKind::Begin,
                format!("page size {page_size}, this VM's is {PAGE_SIZE}"),
            ));
        }
        let theirs = Identity {
            guest: guest.clone(),
            image_digest,
            mem_bytes,
        };
        theirs
            .check(&self.identity)
            .map_err(ReceiveStateError::Restore)?;
        self.report.guest = guest;
        self.report.attempt = attempt;
        Ok(Phase::Precopy { round: 0 })
    }

    fn check_round(
        &self,
        index: u64,
        kind: RecordKind,
        now: u32,
        got: u32,
    ) -> Result<(), ReceiveStateError> {
        if got < now {
            return Err(self.bad(index, kind, format!("round {got} after round {now}")));
        }
        Ok(())
    }

    fn beyond(&self, index: u64, kind: RecordKind, page: u64) -> ReceiveStateError {
        self.bad(
            index,
            kind,
            format!("page {page} is beyond guest memory of {} pages", self.pages),
        )
    }

    fn precopy(&mut self, round: u32, index: u64, rec: Record) -> Result<Phase, ReceiveStateError> {
        let kind = rec.kind();
        match rec {
            Record::Pages {
                round: r,
                index: idx,
                data,
            } => {
                self.check_round(index, kind, round, r)?;
                if let Some(&p) = idx.iter().find(|&&p| p as usize >= self.pages) {
                    return Err(self.beyond(index, kind, u64::from(p)));
                }
                let mem = self.vm.memory();
                for (p, bytes) in idx.iter().zip(data.chunks_exact(PAGE_SIZE)) {
                    // In range: checked above.
                    let _ = mem.write(u64::from(*p) * PAGE_SIZE as u64, bytes);
                }
                for p in &idx {
                    self.cover(*p as usize);
                }
                self.report.pages += idx.len() as u64;
                self.report.last_round = r;
                Ok(Phase::Precopy { round: r })
            }
            Record::ZeroPages { round: r, runs } => {
                self.check_round(index, kind, round, r)?;
                for &(first, count) in &runs {
                    let end = u64::from(first) + u64::from(count);
                    if end > self.pages as u64 {
                        return Err(self.beyond(index, kind, end - 1));
                    }
                }
                for (first, count) in runs {
                    // In range: checked above.
                    let _ = self
                        .vm
                        .memory()
                        .discard_pages(first as usize, count as usize);
                    for p in first as usize..(first + count) as usize {
                        self.cover(p);
                    }
                    self.report.zero_pages += u64::from(count);
                }
                self.report.last_round = r;
                Ok(Phase::Precopy { round: r })
            }
            Record::Begin(_) => Err(self.bad(index, kind, "a second begin".into())),
            Record::Disk { sectors } => {
                self.disk_record(index, sectors)?;
                Ok(Phase::Precopy { round })
            }
            Record::DiskBlocks {
                round: r,
                sector,
                data,
            } => {
                self.check_round(index, kind, round, r)?;
                self.disk_blocks(index, r, sector, &data)?;
                self.report.last_round = r;
                Ok(Phase::Precopy { round: r })
            }
            other => self.joining(index, other),
        }
    }

    /// `disk`: the sender copies a local disk of `sectors`; this VM must
    /// own a local copy of the same size.
    fn disk_record(&mut self, index: u64, sectors: u64) -> Result<(), ReceiveStateError> {
        let kind = RecordKind::Disk;
        if self.disk_announced {
            return Err(self.bad(index, kind, "a second disk record".into()));
        }
        let Some(d) = &self.disk else {
            return Err(self.bad(
                index,
                kind,
                format!(
                    "the sender copies a local disk of {sectors} sectors; this VM's disk mode is shared (or it has no disk)"
                ),
            ));
        };
        if d.sectors != sectors {
            return Err(self.bad(
                index,
                kind,
                format!(
                    "disk size mismatch: the sender's disk has {sectors} sectors, this VM's disk file {} has {}",
                    d.path, d.sectors
                ),
            ));
        }
        self.disk_announced = true;
        Ok(())
    }

    /// `disk-blocks`: written to this VM's copy at once.
    fn disk_blocks(
        &mut self,
        index: u64,
        round: u32,
        sector: u64,
        data: &[u8],
    ) -> Result<(), ReceiveStateError> {
        use std::os::unix::fs::FileExt;
        let kind = RecordKind::DiskBlocks;
        let (Some(d), true) = (&self.disk, self.disk_announced) else {
            return Err(self.bad(index, kind, "disk blocks before the disk record".into()));
        };
        let count = (data.len() / DISK_SECTOR) as u64;
        if sector.checked_add(count).is_none_or(|end| end > d.sectors) {
            return Err(self.bad(
                index,
                kind,
                format!(
                    "block at sector {sector} ({count} sectors) is beyond the disk of {} sectors",
                    d.sectors
                ),
            ));
        }
        if let Err(e) = d.file.write_all_at(data, sector * DISK_SECTOR as u64) {
            return Err(self.bad(
                index,
                kind,
                format!(
                    "writing {count} sectors at sector {sector} to the disk file {}: {e}",
                    d.path
                ),
            ));
        }
        if round == 0 && sector == self.disk_covered {
            self.disk_covered += count;
        }
        self.report.disk_sectors += count;
        Ok(())
    }

    fn section(
        &self,
        index: u64,
        kind: RecordKind,
        b: &[u8],
    ) -> Result<Section, ReceiveStateError> {
        Section::decode(b).map_err(|e| self.bad(index, kind, e.to_string()))
    }

    fn joining(&mut self, index: u64, rec: Record) -> Result<Phase, ReceiveStateError> {
        let kind = rec.kind();
        match rec {
            Record::VcpuState(b) => {
                let s = self.section(index, kind, &b)?;
                if s.id != "vcpu" || self.vcpu.is_some() {
                    return Err(self.bad(
                        index,
                        kind,
                        format!("section {} (a second vcpu, or not the vcpu)", s.id),
                    ));
                }
                self.vcpu = Some(s);
            }
            Record::DeviceState(b) => {
                let s = self.section(index, kind, &b)?;
                if matches!(s.id.as_str(), "vcpu" | "timer" | "journal")
                    || self.devices.iter().any(|d| d.id == s.id)
                {
                    return Err(self.bad(
                        index,
                        kind,
                        format!("section {} is not a device, or repeats one", s.id),
                    ));
                }
                self.devices.push(s);
            }
            Record::VmState { ordinal, tree } => {
                if self.own.is_some() {
                    return Err(self.bad(index, kind, "a second vm-state record".into()));
                }
                let tree =
                    StateTree::decode(&tree).map_err(|e| self.bad(index, kind, e.to_string()))?;
                self.own = Some((ordinal, tree));
            }
            Record::End(e) => return self.end(index, e),
            other => {
                return Err(self.bad(
                    index,
                    other.kind(),
                    "not allowed after the state records began".into(),
                ));
            }
        }
        Ok(Phase::Joining)
    }

    /// `End`: every page sent, the state complete, the digests equal.
    fn end(&mut self, index: u64, e: End) -> Result<Phase, ReceiveStateError> {
        let kind = RecordKind::End;
        if e.records != index {
            return Err(self.bad(
                index,
                kind,
                format!("says {} records came before it, {index} did", e.records),
            ));
        }
        let (Some(vcpu), Some((ordinal, own))) = (self.vcpu.take(), self.own.take()) else {
            return Err(self.bad(
                index,
                kind,
                "the vcpu-state or vm-state record is missing".into(),
            ));
        };
        if ordinal != e.ordinal {
            return Err(self.bad(
                index,
                kind,
                format!(
                    "join exit {}, the vm-state record says {ordinal}",
                    e.ordinal
                ),
            ));
        }
        if let Some(d) = &self.disk {
            if !self.disk_announced {
                return Err(self.bad(
                    index,
                    kind,
                    format!(
                        "this VM's disk mode is local ({}), the sender sent no disk (its disk mode is shared)",
                        d.path
                    ),
                ));
            }
            if self.disk_covered < d.sectors {
                return Err(self.bad(
                    index,
                    kind,
                    format!(
                        "the disk was not sent whole: sectors {}..{} of {} never came in the full copy",
                        self.disk_covered, d.sectors, d.path
                    ),
                ));
            }
        }
        let missing: Vec<usize> = (0..self.pages)
            .filter(|&i| self.covered[i / 64] & (1 << (i % 64)) == 0)
            .collect();
        if let Some(&first) = missing.first() {
            return Err(ReceiveStateError::Incomplete {
                missing: missing.len(),
                pages: self.pages,
                first,
            });
        }
        let mem_digest = self
            .vm
            .rebase_digest()
            .map_err(|c| ReceiveStateError::Restore(c.into()))?;
        if mem_digest != e.digest.mem_digest {
            return Err(ReceiveStateError::MemoryDigest {
                ordinal,
                sender: e.digest.mem_digest,
                mine: mem_digest,
            });
        }
        let mut tree = own;
        tree.insert(vcpu);
        for d in self.devices.drain(..) {
            tree.insert(d);
        }
        let state = VmState {
            identity: self.identity.clone(),
            ordinal,
            tree,
        };
        self.vm
            .restore_state(&state)
            .map_err(ReceiveStateError::Restore)?;
        let mine = self
            .vm
            .join_digest()
            .map_err(|c| ReceiveStateError::Restore(c.into()))?;
        if mine != e.digest {
            return Err(ReceiveStateError::Digest {
                ordinal,
                sender: e.digest,
                mine,
            });
        }
        self.report.ordinal = ordinal;
        self.report.next_seq = e.next_seq;
        self.report.digest = mine;
        Ok(Phase::Done)
    }
}

/// Receives one transfer attempt from `input` into `vm` (built for the
/// same guest and memory size, not running). On success the VM continues
/// from the exit after the join point: replay the sender's log from there,
/// or run it.
pub fn receive<R: Read>(vm: &mut Vm, input: R) -> Result<ReceiveReport, ReceiveStateError> {
    let identity = vm.identity().clone();
    let pages = vm.memory().pages();
    let disk = vm.local_disk();
    let mut r = RecordReader::new(input);
    let mut rx = Receiver {
        vm,
        identity,
        pages,
        covered: vec![0; pages.div_ceil(64)],
        vcpu: None,
        devices: Vec::new(),
        own: None,
        disk,
        disk_announced: false,
        disk_covered: 0,
        report: ReceiveReport {
            guest: String::new(),
            attempt: 0,
            ordinal: 0,
            next_seq: 0,
            digest: EMPTY,
            records: 0,
            bytes: 0,
            pages: 0,
            zero_pages: 0,
            last_round: 0,
            disk_sectors: 0,
        },
    };
    let mut phase = Phase::AwaitBegin;
    while phase != Phase::Done {
        let index = r.records();
        let rec = r.read().map_err(ReceiveStateError::Read)?;
        phase = match phase {
            Phase::AwaitBegin => rx.await_begin(index, rec)?,
            Phase::Precopy { round } => rx.precopy(round, index, rec)?,
            Phase::Joining => rx.joining(index, rec)?,
            Phase::Done => unreachable!("loop ends at Done"),
        };
    }
    rx.report.records = r.records();
    rx.report.bytes = r.bytes();
    Ok(rx.report)
}

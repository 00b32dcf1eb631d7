//! Checkpoints: the state digest, written in record mode and verified
//! against the log in replay.

use ftvm_wire::Kind;

use crate::digest::{combine, cpu_digest};
use crate::error::VmError;
use crate::journal::Divergence;
use crate::payload::CheckpointRecord;

use super::Vm;

impl Vm {
    /// Digest of guest state now.
    pub(super) fn state_digest(&mut self, is_final: bool) -> Result<CheckpointRecord, VmError> {
        // One tracker in front of KVM's log and the VMM's bitmap (`dirty.rs`).
        let dirty = self.persist.tracker.take(crate::dirty::Consumer::DIGEST)?;
        self.digest.update(&self.mem, &dirty.bits);
        let regs = self.machine.vcpu.regs()?;
        let sregs = self.machine.vcpu.sregs()?;
        let mem_digest = self.digest.value();
        let cpu = cpu_digest(&regs, &sregs);
        Ok(CheckpointRecord {
            digest: combine(mem_digest, cpu),
            mem_digest,
            cpu_digest: cpu,
            rip: regs.rip,
            is_final,
        })
    }

    pub(super) fn write_checkpoint(&mut self, is_final: bool) -> Result<CheckpointRecord, VmError> {
        let ordinal = self.ordinal;
        let c = self.state_digest(is_final)?;
        self.journal
            .append(Kind::Checkpoint, ordinal, &c.to_bytes())
            .map_err(|source| VmError::Log { ordinal, source })?;
        self.checkpoints += 1;
        Ok(c)
    }

    pub(super) fn verify_checkpoint(&mut self) -> Result<CheckpointRecord, VmError> {
        let ordinal = self.ordinal;
        let log = |source| VmError::Log { ordinal, source };
        let e = self
            .journal
            .expect(Kind::Checkpoint, None, ordinal, || "a checkpoint".into())
            .map_err(log)?;
        let primary = CheckpointRecord::from_bytes(e.payload).ok_or_else(|| {
            log(Divergence::Entry {
                ordinal,
                expected: "a checkpoint record".into(),
                found: crate::journal::describe(&e),
            }
            .into())
        })?;
        self.journal.consume();
        let mine = self.state_digest(primary.is_final)?;
        if mine != primary {
            return Err(log(Divergence::Checkpoint {
                ordinal,
                primary,
                replay: mine,
            }
            .into()));
        }
        self.checkpoints += 1;
        Ok(mine)
    }
}

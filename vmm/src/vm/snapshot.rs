//! The VM's own components (`timer`, `journal`) and the assembly of every
//! component's section into a [`VmState`] and back (`persist/mod.rs`).

use std::any::Any;
use std::time::{Duration, Instant};

use super::{Timer, Vm};
use crate::device::Device;
use crate::devices::block::Block;
use crate::devices::block::persist::{BlockArgs, BlockState};
use crate::devices::clock::Clock;
use crate::devices::clock::persist::ClockState;
use crate::devices::net::Nic;
use crate::devices::net::persist::{NicArgs, NicState};
use crate::digest::MemDigest;
use crate::dirty::Consumer;
use crate::journal::JournalStats;
use crate::memory::GuestMemory;
use crate::payload::CheckpointRecord;
use crate::persist::{
    Component, FieldError, Identity, Persist, PersistError, RestoreStateError, Section, StateTree,
    VmSnapshot, VmState,
};
use crate::vcpu::{Vcpu, VcpuState};

/// The saved timer. Fields of `timer` (version 1): `period_us` (u64, 0 =
/// off), `due_in_ns` (u64, time left to the next tick at the save),
/// `pending` (bool, a tick waits for the guest's interrupt window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerState {
    /// Period in µs (0: no timer).
    pub period_us: u64,
    /// Nanoseconds to the next tick.
    pub due_in_ns: u64,
    /// A tick is pending.
    pub pending: bool,
}

impl Component for TimerState {
    const ID: &'static str = "timer";
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        s.put_u64("period_us", self.period_us);
        s.put_u64("due_in_ns", self.due_in_ns);
        s.put_bool("pending", self.pending);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        Ok(TimerState {
            period_us: s.u64("period_us")?,
            due_in_ns: s.u64("due_in_ns")?,
            pending: s.bool("pending")?,
        })
    }
}

impl Persist<'_> for Timer {
    type State = TimerState;
    /// Now: the next tick falls due `due_in_ns` from this instant.
    type ConstructorArgs = Instant;
    type Error = PersistError;

    fn save(&self) -> Result<TimerState, PersistError> {
        let now = Instant::now();
        Ok(TimerState {
            period_us: self
                .period
                .map_or(0, |p| u64::try_from(p.as_micros()).unwrap_or(u64::MAX)),
            due_in_ns: self.next_due.map_or(0, |d| {
                u64::try_from(d.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX)
            }),
            pending: self.pending,
        })
    }

    fn restore(now: Instant, s: &TimerState) -> Result<Timer, PersistError> {
        if s.period_us > u64::from(u32::MAX) {
            return Err(PersistError::restore(
                "timer",
                "period_us",
                format!("{} exceeds the TIMER port's {}", s.period_us, u32::MAX),
            ));
        }
        let period = (s.period_us > 0).then(|| Duration::from_micros(s.period_us));
        Ok(Timer {
            period,
            next_due: period.map(|_| now + Duration::from_nanos(s.due_in_ns)),
            pending: s.pending,
        })
    }
}

/// Where the VM is in its log. Fields of `journal` (version 1): `ordinal`,
/// `next_seq`, `checkpoints`, `interrupts`, `entries`, `payload_bytes`,
/// `outputs`, `checkpoint_every`, `mem_digest` (all u64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalPosition {
    /// Exit ordinal of the boundary.
    pub ordinal: u64,
    /// Record: the seq the next entry gets (where a log continued from this
    /// boundary starts); 0 in other modes.
    pub next_seq: u64,
    /// Checkpoints written or verified so far.
    pub checkpoints: u64,
    /// Interrupts injected so far.
    pub interrupts: u64,
    /// Log entries appended or consumed so far.
    pub entries: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// Outputs so far.
    pub outputs: u64,
    /// The saving VM's checkpoint interval (informational).
    pub checkpoint_every: u64,
    /// The memory digest at the boundary: restore checks restored memory
    /// against it.
    pub mem_digest: u64,
}

impl Component for JournalPosition {
    const ID: &'static str = "journal";
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        s.put_u64("ordinal", self.ordinal);
        s.put_u64("next_seq", self.next_seq);
        s.put_u64("checkpoints", self.checkpoints);
        s.put_u64("interrupts", self.interrupts);
        s.put_u64("entries", self.entries);
        s.put_u64("payload_bytes", self.payload_bytes);
        s.put_u64("outputs", self.outputs);
        s.put_u64("checkpoint_every", self.checkpoint_every);
        s.put_u64("mem_digest", self.mem_digest);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        Ok(JournalPosition {
            ordinal: s.u64("ordinal")?,
            next_seq: s.u64("next_seq")?,
            checkpoints: s.u64("checkpoints")?,
            interrupts: s.u64("interrupts")?,
            entries: s.u64("entries")?,
            payload_bytes: s.u64("payload_bytes")?,
            outputs: s.u64("outputs")?,
            checkpoint_every: s.u64("checkpoint_every")?,
            mem_digest: s.u64("mem_digest")?,
        })
    }
}

impl Persist<'_> for JournalPosition {
    type State = JournalPosition;
    type ConstructorArgs = ();
    type Error = PersistError;

    fn save(&self) -> Result<JournalPosition, PersistError> {
        Ok(*self)
    }

    fn restore((): (), s: &JournalPosition) -> Result<JournalPosition, PersistError> {
        Ok(*s)
    }
}

/// The tree key of each device: its name, `name#k` for the k-th repeat.
fn device_ids(devices: &[Box<dyn Device>]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(devices.len());
    for d in devices {
        let name = d.name();
        let seen = ids
            .iter()
            .filter(|i| i.split('#').next() == Some(name))
            .count();
        ids.push(if seen == 0 {
            name.to_string()
        } else {
            format!("{name}#{seen}")
        });
    }
    ids
}

fn keyed(mut s: Section, id: &str) -> Section {
    s.id = id.to_string();
    s
}

/// The device's section, if it is a device with state.
fn save_device(dev: &dyn Device, id: &str) -> Option<Result<Section, PersistError>> {
    let any: &dyn Any = dev;
    let saved = if let Some(d) = any.downcast_ref::<Clock>() {
        d.save().map(|s| s.to_section())
    } else if let Some(d) = any.downcast_ref::<Nic>() {
        d.save().map(|s| s.to_section())
    } else if let Some(d) = any.downcast_ref::<Block>() {
        d.save().map(|s| s.to_section())
    } else {
        return None;
    };
    Some(saved.map(|s| keyed(s, id)))
}

/// Restores `dev` from `s`; `false` if it is not a device with state.
fn restore_device(
    dev: &mut Box<dyn Device>,
    s: &Section,
    mem: &GuestMemory,
) -> Result<bool, PersistError> {
    let any: &mut dyn Any = &mut **dev;
    // Errors name the component by its kind, the tree key may be `name#k`.
    if let Some(d) = any.downcast_mut::<Clock>() {
        *d = Clock::restore(Instant::now(), &ClockState::from_section(s)?)?;
    } else if let Some(d) = any.downcast_mut::<Nic>() {
        let state = NicState::from_section(s)?;
        *d = Nic::restore(NicArgs { host: d, mem }, &state)?;
    } else if let Some(d) = any.downcast_mut::<Block>() {
        let state = BlockState::from_section(s)?;
        *d = Block::restore(BlockArgs { host: d, mem }, &state)?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

impl Vm {
    /// The local disk copy of the VM's block device (`vmm.disk_mode =
    /// local`); `None` with a shared disk or none.
    pub fn local_disk(&self) -> Option<crate::devices::block::LocalDisk> {
        self.devices.iter().find_map(|d| {
            let any: &dyn Any = &**d;
            any.downcast_ref::<Block>().and_then(Block::local_disk)
        })
    }

    /// Which guest, image and memory size this VM runs.
    pub fn identity(&self) -> &Identity {
        &self.persist.identity
    }

    /// Exit ordinal of the last exit.
    pub fn ordinal(&self) -> u64 {
        self.ordinal
    }

    /// Every component but memory (the caller completed pending I/O:
    /// [`crate::ExitBoundary::save`]).
    pub(crate) fn save_state(&mut self) -> Result<VmState, PersistError> {
        let mut tree = StateTree::default();
        tree.insert(<&Vcpu>::save(&&self.machine.vcpu)?.to_section());
        tree.insert(self.timer.save()?.to_section());
        // The digest of memory as it is now (the dirty pages rehashed).
        let dirty = self
            .persist
            .tracker
            .take(Consumer::DIGEST)
            .map_err(|e| PersistError::save("journal", "mem_digest", crate::error_chain(&e)))?;
        self.digest.update(&self.mem, &dirty.bits);
        let stats = self.journal.stats;
        let position = JournalPosition {
            ordinal: self.ordinal,
            next_seq: self.journal.next_seq(),
            checkpoints: self.checkpoints,
            interrupts: self.interrupts,
            entries: stats.entries,
            payload_bytes: stats.payload_bytes,
            outputs: stats.outputs,
            checkpoint_every: self.checkpoint_every,
            mem_digest: self.digest.value(),
        };
        tree.insert(position.save()?.to_section());
        for (dev, id) in self.devices.iter().zip(device_ids(&self.devices)) {
            if let Some(s) = save_device(dev.as_ref(), &id) {
                tree.insert(s?);
            }
        }
        Ok(VmState {
            identity: self.persist.identity.clone(),
            ordinal: self.ordinal,
            tree,
        })
    }

    /// After guest memory was replaced (restore, transfer): hash it anew and
    /// clear both dirty logs. Returns the memory digest.
    pub(crate) fn rebase_digest(&mut self) -> Result<u64, PersistError> {
        self.persist
            .tracker
            .take(Consumer::DIGEST)
            .map_err(|e| PersistError::restore("memory", "dirty_log", crate::error_chain(&e)))?;
        self.digest = MemDigest::new(&self.mem);
        Ok(self.digest.value())
    }

    /// Restores every component from `state` into this VM, whose guest
    /// memory already holds the state's memory (`persist/mod.rs`, step 3).
    /// The next [`Vm::run`] continues from the exit after `state.ordinal`.
    pub fn restore_state(&mut self, state: &VmState) -> Result<(), RestoreStateError> {
        state.identity.check(&self.persist.identity)?;
        let section = |id: &str| {
            state
                .tree
                .get(id)
                .ok_or_else(|| RestoreStateError::Missing {
                    component: id.to_string(),
                })
        };
        let vcpu = VcpuState::from_section(section("vcpu")?)?;
        let timer = TimerState::from_section(section("timer")?)?;
        let position = JournalPosition::from_section(section("journal")?)?;
        let ids = device_ids(&self.devices);
        for id in state.tree.sections.keys() {
            let known =
                matches!(id.as_str(), "vcpu" | "timer" | "journal") || ids.iter().any(|i| i == id);
            if !known {
                return Err(RestoreStateError::Unknown {
                    component: id.clone(),
                });
            }
        }
        let mem_digest = self.rebase_digest()?;
        if mem_digest != position.mem_digest {
            return Err(PersistError::restore(
                "journal",
                "mem_digest",
                format!(
                    "state has {:016x}, this VM's memory hashes to {mem_digest:016x}",
                    position.mem_digest
                ),
            )
            .into());
        }
        for (dev, id) in self.devices.iter_mut().zip(&ids) {
            if let Some(s) = state.tree.get(id) {
                restore_device(dev, s, &self.mem)?;
            }
        }
        <&Vcpu>::restore(&self.machine.vcpu, &vcpu)?;
        self.timer = Timer::restore(Instant::now(), &timer)?;
        let p = JournalPosition::restore((), &position)?;
        self.ordinal = p.ordinal;
        self.journal.ordinal = p.ordinal;
        self.checkpoints = p.checkpoints;
        self.interrupts = p.interrupts;
        self.journal.stats = JournalStats {
            entries: p.entries,
            payload_bytes: p.payload_bytes,
            outputs: p.outputs,
        };
        Ok(())
    }
}

impl Vm {
    /// The state digest of this VM now (after a restore: the join digest).
    pub(crate) fn join_digest(&mut self) -> Result<CheckpointRecord, PersistError> {
        self.state_digest(false)
            .map_err(|e| PersistError::restore("vm", "digest", crate::error_chain(&e)))
    }

    /// Restores a whole [`VmSnapshot`]: memory, every component, then checks
    /// that this VM's state digest is the saved one. Returns it.
    pub fn restore_snapshot(
        &mut self,
        snap: &VmSnapshot,
    ) -> Result<CheckpointRecord, RestoreStateError> {
        snap.state.identity.check(&self.persist.identity)?;
        <&GuestMemory>::restore(&self.mem, &snap.memory)?;
        self.restore_state(&snap.state)?;
        let restored = self.join_digest()?;
        if restored != snap.digest {
            return Err(RestoreStateError::Digest {
                ordinal: snap.state.ordinal,
                saved: snap.digest,
                restored,
            });
        }
        Ok(restored)
    }
}

/// The identity of a VM built from `config`.
pub(super) fn identity_of(guest: &str, image: &[u8], mem_bytes: u64) -> Identity {
    Identity {
        guest: guest.to_string(),
        image_digest: crate::payload::fnv1a64(image),
        mem_bytes,
    }
}

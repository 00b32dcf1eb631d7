//! Save and restore of every VM component: one [`Persist`] trait
//! (Firecracker's habit: `State`, `ConstructorArgs`, `Error`), composed into
//! a [`StateTree`] keyed by component id (Cloud Hypervisor's `Snapshot`).
//!
//! Contract: a VM saved at an exit boundary and restored into a new VM built
//! from the same guest image and memory size continues exactly as the
//! original would: same instructions, same state digest at every later exit
//! (`tests/persist.rs`). Restore checks what it is given and names the
//! component and the field that is wrong (`restore net: field tx_prod:
//! ...`, `state version 3, this build reads 1`, `state is for guest kv, this
//! VM runs echo`). Format: `docs/protocol.md`, "State transfer".
//!
//! # Components
//!
//! | id | what | implemented in |
//! |---|---|---|
//! | `vcpu` | regs, sregs, FPU, XSAVE, XCRs, MSRs, vCPU events (pending interrupt, NMI, shadow), debug regs | `vcpu/persist.rs` |
//! | memory | nonzero pages (or the transfer stream's page records) | here ([`MemoryState`]) |
//! | `timer` | period, time to the next tick, tick pending | `vm/snapshot.rs` |
//! | `journal` | exit ordinal, next seq, checkpoint and interrupt counters, log counters, digest | `vm/snapshot.rs` |
//! | `clock` | time since start, last value applied | `devices/clock/persist.rs` |
//! | `net` | (host side: none) restore checks the rings in guest memory | `devices/net/persist.rs` |
//! | `block` | learned capacity, held writes; restore checks the ring | `devices/block/persist.rs` |
//!
//! Console, random, system and timer ports hold no state. A device the
//! state has but the VM lacks is an error; a device the VM has but the state
//! lacks keeps its constructed state (a replaying backup always has the NIC
//! and block device, the primary may not).
//!
//! # The main flow
//!
//! 1. At an exit boundary ([`crate::ExitBoundary::save`]) the VM completes
//!    the pending port I/O, then saves each component into a [`Section`].
//! 2. [`VmState`] carries the tree with the VM's [`Identity`] and the exit
//!    ordinal; guest memory travels beside it ([`MemoryState`], or the
//!    transfer stream's page records, `crate::transfer`).
//! 3. [`crate::Vm::restore_state`] checks the identity and the version,
//!    then restores component by component.

pub mod section;

pub use section::{DecodeSectionError, FieldError, Section, StateTree};

use crate::layout::PAGE_SIZE;
use crate::memory::GuestMemory;
use crate::payload::CheckpointRecord;

/// Version of the state format (stream records and component layouts) this
/// build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// A component's saved state: plain data that encodes to one [`Section`].
pub trait Component: Sized {
    /// Component id: the key in the [`StateTree`] (and in messages).
    const ID: &'static str;
    /// Layout version of the fields.
    const VERSION: u32;
    /// Writes the fields.
    fn encode(&self, s: &mut Section);
    /// Reads the fields; errors name the field.
    fn decode(s: &Section) -> Result<Self, FieldError>;

    /// The section of this state.
    fn to_section(&self) -> Section {
        let mut s = Section::new(Self::ID, Self::VERSION);
        self.encode(&mut s);
        s
    }

    /// The state in `s`, after checking its id and version.
    fn from_section(s: &Section) -> Result<Self, PersistError> {
        if s.version != Self::VERSION {
            return Err(PersistError::SectionVersion {
                component: Self::ID.to_string(),
                found: s.version,
                reads: Self::VERSION,
            });
        }
        Self::decode(s).map_err(|e| PersistError::field(Self::ID, e))
    }
}

/// Save and restore of one component (Firecracker's `Persist`).
///
/// `restore` builds the component from its state and the
/// `ConstructorArgs`: host resources the state does not carry (a socket, a
/// disk file, guest memory for checks). Components that exist before any
/// state arrives (the KVM vCPU, guest memory) implement it on a shared
/// reference: the constructor argument is the blank object and `restore`
/// loads the state into it.
pub trait Persist<'a>: Sized {
    /// The saved state.
    type State: Component;
    /// What `restore` needs besides the state.
    type ConstructorArgs;
    /// Why save or restore failed (names the component and the field).
    type Error;
    /// The state now.
    fn save(&self) -> Result<Self::State, Self::Error>;
    /// The component built from `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// Saving or restoring one component failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    /// Reading the component's state failed (a KVM call, a guest field).
    #[error("save {component}: field {field}: {detail}")]
    Save {
        /// Component id.
        component: String,
        /// The field.
        field: String,
        /// What failed.
        detail: String,
    },
    /// A field of the state is missing, malformed, inconsistent with guest
    /// memory, or refused by KVM.
    #[error("restore {component}: field {field}: {detail}")]
    Field {
        /// Component id.
        component: String,
        /// The field.
        field: String,
        /// What was wrong, with the values.
        detail: String,
    },
    /// The component's layout version is not the one this build reads.
    #[error("restore {component}: section version {found}, this build reads {reads}")]
    SectionVersion {
        /// Component id.
        component: String,
        /// Version in the state.
        found: u32,
        /// Version this build reads.
        reads: u32,
    },
}

impl PersistError {
    /// A restore error for `component` from a [`FieldError`].
    pub fn field(component: &str, e: FieldError) -> PersistError {
        PersistError::Field {
            component: component.to_string(),
            field: e.field,
            detail: e.detail,
        }
    }

    /// A save error.
    pub fn save(component: &str, field: &str, detail: impl std::fmt::Display) -> PersistError {
        PersistError::Save {
            component: component.to_string(),
            field: field.to_string(),
            detail: detail.to_string(),
        }
    }

    /// A restore error naming `component` and `field`.
    pub fn restore(component: &str, field: &str, detail: impl std::fmt::Display) -> PersistError {
        PersistError::Field {
            component: component.to_string(),
            field: field.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// Which VM a state belongs to: restore refuses another guest or size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Guest name.
    pub guest: String,
    /// FNV-1a 64 of the guest image.
    pub image_digest: u64,
    /// Guest memory in bytes.
    pub mem_bytes: u64,
}

impl Identity {
    /// Checks that a state for `self` can be restored into a VM that is `vm`.
    pub fn check(&self, vm: &Identity) -> Result<(), RestoreStateError> {
        if self.guest != vm.guest || self.image_digest != vm.image_digest {
            return Err(RestoreStateError::Guest {
                state: self.guest.clone(),
                state_image: self.image_digest,
                vm: vm.guest.clone(),
                vm_image: vm.image_digest,
            });
        }
        if self.mem_bytes != vm.mem_bytes {
            return Err(RestoreStateError::MemorySize {
                state: self.mem_bytes,
                vm: vm.mem_bytes,
            });
        }
        Ok(())
    }
}

/// Restoring a VM's state failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreStateError {
    /// The state was written by another format version.
    #[error("state version {found}, this build reads {reads}")]
    Version {
        /// Version in the state.
        found: u32,
        /// Version this build reads.
        reads: u32,
    },
    /// The state is for another guest (name or image).
    #[error(
        "state is for guest {state} (image {state_image:016x}), this VM runs {vm} (image {vm_image:016x})"
    )]
    Guest {
        /// Guest of the state.
        state: String,
        /// Image digest of the state.
        state_image: u64,
        /// Guest of this VM.
        vm: String,
        /// Image digest of this VM.
        vm_image: u64,
    },
    /// The state is for another memory size.
    #[error("state is for {state} bytes of guest memory, this VM has {vm}")]
    MemorySize {
        /// Bytes in the state.
        state: u64,
        /// Bytes of this VM.
        vm: u64,
    },
    /// A component the VM needs is not in the state.
    #[error("restore {component}: missing from the state")]
    Missing {
        /// Component id.
        component: String,
    },
    /// The state has a component this VM does not have.
    #[error("restore {component}: the state has it, this VM has no such component")]
    Unknown {
        /// Component id.
        component: String,
    },
    /// The restored VM's state digest is not the saved one.
    #[error(
        "state digest at exit {ordinal}: the restored VM has {restored}, the saved state {saved}"
    )]
    Digest {
        /// Exit ordinal of the boundary.
        ordinal: u64,
        /// The digest saved with the state.
        saved: CheckpointRecord,
        /// The digest of the restored VM.
        restored: CheckpointRecord,
    },
    /// A component failed.
    #[error(transparent)]
    Component(#[from] PersistError),
}

/// A VM's state at one exit boundary, without guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmState {
    /// Whose state it is.
    pub identity: Identity,
    /// The exit ordinal of the boundary (the last exit before it).
    pub ordinal: u64,
    /// One section per component.
    pub tree: StateTree,
}

/// A whole VM at one exit boundary: its state, its memory, and the state
/// digest (memory ⊕ vCPU) that a restored VM must reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSnapshot {
    /// Every component but memory.
    pub state: VmState,
    /// Guest memory.
    pub memory: MemoryState,
    /// The state digest at the boundary.
    pub digest: CheckpointRecord,
}

/// Guest memory as saved: its size and every page that is not all zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryState {
    /// Size in bytes.
    pub bytes: u64,
    /// `(page index, 4096 bytes)`, ascending.
    pub pages: Vec<(u32, Box<[u8]>)>,
}

/// Whether a page is all zero.
pub fn is_zero_page(page: &[u8]) -> bool {
    // Word-wise: the compiler vectorises this loop.
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])) == 0)
}

impl Component for MemoryState {
    const ID: &'static str = "memory";
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        s.put_u64("bytes", self.bytes);
        let mut index = Vec::with_capacity(self.pages.len() * 4);
        let mut data = Vec::with_capacity(self.pages.len() * PAGE_SIZE);
        for (i, p) in &self.pages {
            index.extend_from_slice(&i.to_le_bytes());
            data.extend_from_slice(p);
        }
        s.put_bytes("index", &index);
        s.put_bytes("data", &data);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        let bytes = s.u64("bytes")?;
        let index = s.bytes("index")?;
        let data = s.bytes("data")?;
        if index.len() % 4 != 0 || data.len() != index.len() / 4 * PAGE_SIZE {
            return Err(FieldError::new(
                "data",
                format!(
                    "{} bytes for {} page indices (index is {} bytes)",
                    data.len(),
                    index.len() / 4,
                    index.len()
                ),
            ));
        }
        let pages_in = bytes / PAGE_SIZE as u64;
        let mut pages = Vec::with_capacity(index.len() / 4);
        for (n, (i, p)) in index
            .chunks_exact(4)
            .zip(data.chunks_exact(PAGE_SIZE))
            .enumerate()
        {
            let i = u32::from_le_bytes([i[0], i[1], i[2], i[3]]);
            if u64::from(i) >= pages_in {
                return Err(FieldError::new(
                    "index",
                    format!("entry {n}: page {i} is beyond guest memory of {pages_in} pages"),
                ));
            }
            pages.push((i, p.into()));
        }
        Ok(MemoryState { bytes, pages })
    }
}

impl<'a> Persist<'a> for &'a GuestMemory {
    type State = MemoryState;
    /// The (blank) memory to load.
    type ConstructorArgs = &'a GuestMemory;
    type Error = PersistError;

    fn save(&self) -> Result<MemoryState, PersistError> {
        let pages = (0..self.pages())
            .filter(|&i| !is_zero_page(self.page(i)))
            .map(|i| (i as u32, self.page(i).into()))
            .collect();
        Ok(MemoryState {
            bytes: self.size(),
            pages,
        })
    }

    fn restore(mem: &'a GuestMemory, state: &MemoryState) -> Result<&'a GuestMemory, PersistError> {
        if state.bytes != mem.size() {
            return Err(PersistError::restore(
                "memory",
                "bytes",
                format!(
                    "state has {} bytes, this VM has {}",
                    state.bytes,
                    mem.size()
                ),
            ));
        }
        let err = |e| PersistError::restore("memory", "index", e);
        let mut next = 0usize;
        for (i, page) in &state.pages {
            let i = *i as usize;
            // Pages between the listed ones are zero.
            if i > next {
                mem.discard_pages(next, i - next).map_err(err)?;
            }
            mem.write((i * PAGE_SIZE) as u64, page).map_err(err)?;
            next = next.max(i + 1);
        }
        if mem.pages() > next {
            mem.discard_pages(next, mem.pages() - next).map_err(err)?;
        }
        Ok(mem)
    }
}

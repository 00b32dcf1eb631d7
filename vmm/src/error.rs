//! [`BuildVmError`] and [`VmError`]: what can go wrong building or running a VM, with
//! the values (port, exit ordinal, registers) that locate it.

use crate::boot::ImageError;
use crate::device::DeviceError;
use crate::devices::block::BlockSetupError;
use crate::devices::net::NicSetupError;
use crate::journal::{Divergence, LogError, Mode};
use crate::memory::{GuestMemoryError, MapGuestMemoryError};
use crate::vcpu::{KvmError, RegsSnapshot};

/// The values a configuration key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// `min..=max`.
    Range {
        /// Smallest.
        min: u64,
        /// Largest.
        max: u64,
    },
    /// One of these.
    OneOf(&'static [u64]),
    /// At least this.
    AtLeast(u64),
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Range { min, max } => write!(f, "must be in {min}..={max}"),
            Allowed::OneOf(v) => {
                let v: Vec<String> = v.iter().map(u64::to_string).collect();
                write!(f, "must be {}", v.join(" or "))
            }
            Allowed::AtLeast(n) => write!(f, "must be at least {n}"),
        }
    }
}

/// Why the guest stopped abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrashReason {
    /// Triple fault.
    Shutdown,
    /// KVM could not emulate or run the guest.
    KvmInternal {
        /// KVM's suberror.
        suberror: u32,
    },
    /// VM entry failed.
    FailEntry {
        /// Hardware reason.
        reason: u64,
    },
    /// `hlt` with interrupts off and no timer: nothing can wake it.
    HltWithInterruptsOff,
    /// A memory access outside guest memory (there are no MMIO devices).
    Mmio {
        /// "read" or "write".
        dir: &'static str,
        /// Bytes.
        size: usize,
        /// Guest-physical address.
        gpa: u64,
    },
    /// An exit the VMM does not handle (KVM's name of it).
    UnexpectedExit(String),
}

impl std::fmt::Display for CrashReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CrashReason::Shutdown => write!(f, "shutdown (triple fault)"),
            CrashReason::KvmInternal { suberror } => {
                write!(f, "KVM internal error, suberror {suberror}")
            }
            CrashReason::FailEntry { reason } => {
                write!(f, "VM entry failed, hardware reason {reason:#x}")
            }
            CrashReason::HltWithInterruptsOff => write!(f, "hlt with interrupts disabled"),
            CrashReason::Mmio { dir, size, gpa } => write!(
                f,
                "{dir} of {size} bytes at gpa {gpa:#x} outside guest memory (no MMIO devices)"
            ),
            CrashReason::UnexpectedExit(e) => write!(f, "unexpected exit {e}"),
        }
    }
}

/// Building a VM failed (`Vm::new`, `VmConfig::new`; also a device set that
/// does not fit the port map when going live).
#[derive(Debug, thiserror::Error)]
pub enum BuildVmError {
    /// A configuration value is out of range.
    #[error("vmm.{key} = {value} is invalid: {allowed}")]
    Config {
        /// Settings key.
        key: &'static str,
        /// The value.
        value: u64,
        /// What it accepts.
        allowed: Allowed,
    },
    /// No embedded guest has this name.
    #[error("unknown guest {name:?} (known: {known})")]
    UnknownGuest {
        /// Name asked for.
        name: String,
        /// Names available.
        known: String,
    },
    /// The image does not fit its region.
    #[error("guest image of {len} bytes does not fit the image region of {max} bytes")]
    ImageTooLarge {
        /// Image size.
        len: usize,
        /// Room.
        max: u64,
    },
    /// The image lacks the runtime's header or names bad handler addresses.
    #[error("guest image {guest:?}")]
    BadImage {
        /// Guest name.
        guest: String,
        /// What was wrong.
        #[source]
        source: ImageError,
    },
    /// Writing the boot tables or the image into guest memory failed.
    #[error("{what}")]
    Boot {
        /// What was being written.
        what: &'static str,
        /// Why.
        #[source]
        source: GuestMemoryError,
    },
    /// Mapping guest memory failed.
    #[error(transparent)]
    Memory(#[from] MapGuestMemoryError),
    /// A KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Two devices claim the same port.
    #[error("port {port:#x} is claimed by both {first} and {second}")]
    PortConflict {
        /// Port.
        port: u16,
        /// Earlier device.
        first: &'static str,
        /// Later device.
        second: &'static str,
    },
    /// The service NIC could not be set up.
    #[error("net device")]
    Nic(#[source] NicSetupError),
    /// The disk could not be opened.
    #[error("block device")]
    Disk(#[source] BlockSetupError),
    /// `--disk-mode local` without this side's own disk file.
    #[error("block device: disk mode local needs this side's own copy of the disk (--disk FILE)")]
    LocalDiskMissing,
    /// More devices than the port map can name.
    #[error("{count} devices (at most {max})")]
    TooManyDevices {
        /// Devices given.
        count: usize,
        /// The most there may be.
        max: usize,
    },
    /// The eventfd for exit-boundary requests could not be made.
    #[error("eventfd for exit-boundary requests")]
    BoundaryEventFd(#[source] std::io::Error),
}

/// Running a VM failed (or building it: [`VmError::Build`]).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Building the VM (or changing its devices) failed.
    #[error(transparent)]
    Build(#[from] BuildVmError),
    /// A KVM call failed while running.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// An operation that needs another run mode.
    #[error("{op} needs {needs}, this one is {mode:?}")]
    WrongMode {
        /// The operation.
        op: &'static str,
        /// The mode(s) it needs.
        needs: &'static str,
        /// The VM's mode.
        mode: Mode,
    },
    /// A device failed at an exit (includes replay divergence).
    #[error("{device} device, port {port:#x}, exit {ordinal}")]
    Device {
        /// Device.
        device: &'static str,
        /// Port.
        port: u16,
        /// Exit ordinal.
        ordinal: u64,
        /// Why.
        #[source]
        source: DeviceError,
    },
    /// The log failed outside a device (checkpoint, interrupt, stop).
    #[error("exit {ordinal}")]
    Log {
        /// Exit ordinal.
        ordinal: u64,
        /// Why.
        #[source]
        source: LogError,
    },
    /// The guest used a port no device owns.
    #[error("guest {dir} of {size} bytes on unclaimed port {port:#x} at exit {ordinal} ({regs})")]
    UnclaimedPort {
        /// Port.
        port: u16,
        /// "in" or "out".
        dir: &'static str,
        /// Size.
        size: usize,
        /// Exit ordinal.
        ordinal: u64,
        /// Registers.
        regs: RegsSnapshot,
    },
    /// The guest stopped abnormally (triple fault, internal error, MMIO...).
    #[error("guest crashed after exit {ordinal}: {reason} ({regs})")]
    GuestCrashed {
        /// The exit reason.
        reason: Box<CrashReason>,
        /// Exit ordinal of the last guest exit.
        ordinal: u64,
        /// Registers.
        regs: RegsSnapshot,
    },
    /// The guest took an exception its runtime reported.
    #[error(
        "guest fault {name} (vector {vector}) error code {error_code:#x} at rip {rip:#x} (cs {cs:#x} rsp {rsp:#x} rflags {rflags:#x} cr2 {cr2:#x}) at exit {ordinal}"
    )]
    GuestFault {
        /// Vector.
        vector: u32,
        /// Mnemonic (#UD, #GP, #PF...).
        name: &'static str,
        /// Error code (0 where the CPU pushes none).
        error_code: u64,
        /// Faulting rip.
        rip: u64,
        /// Faulting cs.
        cs: u64,
        /// Faulting rsp.
        rsp: u64,
        /// Faulting rflags.
        rflags: u64,
        /// cr2 (page-fault address).
        cr2: u64,
        /// Exit ordinal.
        ordinal: u64,
    },
}

impl VmError {
    /// The divergence inside this error, if it is one.
    pub fn divergence(&self) -> Option<&Divergence> {
        let log = match self {
            VmError::Device {
                source: DeviceError::Log(l),
                ..
            } => l,
            VmError::Log { source, .. } => source,
            _ => return None,
        };
        match log {
            LogError::Divergence(d) => Some(d),
            _ => None,
        }
    }
}

pub(crate) fn exception_name(v: u32) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => "exception",
    }
}

impl VmError {
    /// True when the VM stopped because replay diverged from the log
    /// (at an exit's device or at its checkpoint).
    pub fn is_divergence(&self) -> bool {
        use crate::device::DeviceError;
        use crate::journal::LogError;
        matches!(
            self,
            VmError::Log {
                source: LogError::Divergence(_),
                ..
            } | VmError::Device {
                source: DeviceError::Log(LogError::Divergence(_)),
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Typed values, the same words as before they were strings.
    #[test]
    fn config_and_crash_errors_name_their_values() {
        let e = BuildVmError::Config {
            key: "mem_mib",
            value: 32,
            allowed: Allowed::Range { min: 48, max: 3072 },
        };
        assert_eq!(
            e.to_string(),
            "vmm.mem_mib = 32 is invalid: must be in 48..=3072"
        );
        assert_eq!(Allowed::OneOf(&[0, 3]).to_string(), "must be 0 or 3");
        assert_eq!(Allowed::AtLeast(1).to_string(), "must be at least 1");
        let mmio = CrashReason::Mmio {
            dir: "write",
            size: 4,
            gpa: 0xfee0_0000,
        };
        assert_eq!(
            mmio.to_string(),
            "write of 4 bytes at gpa 0xfee00000 outside guest memory (no MMIO devices)"
        );
        let wrong = VmError::WrongMode {
            op: "go_live",
            needs: "a replaying VM",
            mode: Mode::Record,
        };
        assert_eq!(
            wrong.to_string(),
            "go_live needs a replaying VM, this one is Record"
        );
    }
}

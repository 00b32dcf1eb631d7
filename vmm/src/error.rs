//! [`VmError`]: everything that can go wrong building or running a VM, with
//! the values (port, exit ordinal, registers) that locate it.

use crate::device::DeviceError;
use crate::journal::{Divergence, LogError};
use crate::memory::MapGuestMemoryError;
use crate::vcpu::{KvmError, RegsSnapshot};

/// Building or running a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A configuration value is out of range.
    #[error("vmm.{key} = {value} is invalid: {detail}")]
    Config {
        /// Settings key.
        key: &'static str,
        /// The value.
        value: String,
        /// Allowed values.
        detail: String,
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
    #[error("guest image {guest:?}: {detail}")]
    BadImage {
        /// Guest name.
        guest: String,
        /// What was wrong.
        detail: String,
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
    /// A device could not be set up.
    #[error("{device} device: {detail}")]
    DeviceSetup {
        /// Device.
        device: &'static str,
        /// What failed.
        detail: String,
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
        reason: String,
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

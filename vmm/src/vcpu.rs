//! The KVM objects of a VM (thin layer over kvm-ioctls): VM fd with one
//! dirty-logged memory slot (its log is read through `dirty.rs` only), one
//! vCPU, owned exit values, interrupt injection without an in-kernel
//! irqchip, register snapshots for crash reports, and the vCPU's save and
//! restore (`vcpu/persist.rs`). Policy lives in `vm/`.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, kvm_regs, kvm_sregs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::boot;
use crate::memory::GuestMemory;

/// A KVM call failed.
#[derive(Debug, thiserror::Error)]
#[error("KVM {op} failed")]
pub struct KvmError {
    /// The operation.
    pub op: &'static str,
    /// errno.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError { op, source }
}

/// A VM exit, copied out of `kvm_run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `out`: port and the bytes written.
    IoOut {
        /// Port.
        port: u16,
        /// Data (first `size` bytes valid).
        data: [u8; 4],
        /// Access size.
        size: usize,
    },
    /// `in`: port and size, already answered inside [`Vcpu::run`].
    IoIn {
        /// Port.
        port: u16,
        /// Access size.
        size: usize,
    },
    /// `hlt`.
    Hlt,
    /// MMIO read (no MMIO devices: outside guest memory).
    MmioRead {
        /// Address.
        addr: u64,
        /// Size.
        size: usize,
    },
    /// MMIO write.
    MmioWrite {
        /// Address.
        addr: u64,
        /// Size.
        size: usize,
    },
    /// KVM_RUN returned because of a signal (not a guest exit).
    Interrupted,
    /// Triple fault / shutdown.
    Shutdown,
    /// KVM could not emulate or run the guest (suberror).
    InternalError(u32),
    /// VM entry failed (hardware reason).
    FailEntry(u64),
    /// Any other exit reason.
    Other(String),
}

impl Exit {
    /// True for exits the guest caused by an instruction (they get an ordinal).
    pub fn is_guest_initiated(&self) -> bool {
        matches!(
            self,
            Exit::IoOut { .. }
                | Exit::IoIn { .. }
                | Exit::Hlt
                | Exit::MmioRead { .. }
                | Exit::MmioWrite { .. }
        )
    }
}

/// Registers at a crash, for the error report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegsSnapshot {
    /// rip.
    pub rip: u64,
    /// rsp.
    pub rsp: u64,
    /// rflags.
    pub rflags: u64,
    /// rax.
    pub rax: u64,
    /// cr0.
    pub cr0: u64,
    /// cr2 (last page-fault address).
    pub cr2: u64,
    /// cr3.
    pub cr3: u64,
    /// cr4.
    pub cr4: u64,
    /// efer.
    pub efer: u64,
    /// cs selector.
    pub cs: u16,
    /// ss selector.
    pub ss: u16,
}

impl std::fmt::Display for RegsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} cs {:#x} ss {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.cs,
            self.ss,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer
        )
    }
}

/// `_IOW(KVMIO, 0x86, struct kvm_interrupt)`: not wrapped by kvm-ioctls.
const KVM_INTERRUPT: libc::c_ulong = 0x4004_ae86;

mod persist;
pub use persist::VcpuState;
pub(crate) use persist::probe_host;

/// The KVM VM and its single vCPU.
#[derive(Debug)]
pub struct Machine {
    /// The VM fd (dirty log; shared with the dirty tracker).
    pub vm: Arc<VmFd>,
    /// The vCPU.
    pub vcpu: Vcpu,
}

/// The vCPU.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
}

/// Opens `/dev/kvm`: `Ok` if KVM can be used here.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    Kvm::new().map_err(kvm("open /dev/kvm"))
}

impl Machine {
    /// Creates the VM, registers `mem` as slot 0 with dirty logging, creates
    /// the vCPU with filtered CPUID and the long-mode registers for `cpl`.
    pub fn new(mem: &GuestMemory, cpl: u8) -> Result<Machine, KvmError> {
        let kvm_fd = open_kvm()?;
        let vm = kvm_fd.create_vm().map_err(kvm("create VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: mem.size(),
            userspace_addr: mem.host_addr(),
        };
        // SAFETY: `region` describes the mapping owned by `mem`, which is
        // kept alive for as long as this VM fd exists: `Vm` drops the machine
        // before the memory (field order), and the only other owner of the
        // fd, the dirty tracker (`dirty.rs`), holds the mapping too and drops
        // its fd first.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("set memory region"))?;
        let fd = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
        let mut cpuid = kvm_fd
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("get supported CPUID"))?;
        boot::filter_cpuid(&mut cpuid);

        fd.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;

        let sregs = fd.get_sregs().map_err(kvm("get sregs"))?;
        fd.set_sregs(&boot::initial_sregs(sregs, cpl))
            .map_err(kvm("set sregs"))?;
        fd.set_regs(&boot::initial_regs(cpl))
            .map_err(kvm("set regs"))?;
        Ok(Machine {
            vm: Arc::new(vm),
            vcpu: Vcpu { fd },
        })
    }
}

impl Vcpu {
    /// Enters the guest until the next exit. An `in` is answered inside
    /// its exit, as kvm-ioctls intends: the data buffer it lends from
    /// `kvm_run` must be filled before the next entry, so `answer_in(port,
    /// data)` fills it there and the exit comes back as [`Exit::IoIn`],
    /// answered (or with the answer's error).
    pub fn run<E: From<KvmError>>(
        &mut self,
        answer_in: impl FnOnce(u16, &mut [u8]) -> Result<(), E>,
    ) -> Result<Exit, E> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                let mut d = [0u8; 4];
                let size = data.len().min(4);
                d[..size].copy_from_slice(&data[..size]);
                Exit::IoOut {
                    port,
                    data: d,
                    size,
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = data.len();
                answer_in(port, data)?;
                Exit::IoIn { port, size }
            }
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::MmioRead(addr, data)) => Exit::MmioRead {
                addr,
                size: data.len(),
            },
            Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite {
                addr,
                size: data.len(),
            },
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError) => {
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so the
                // `internal` member of the kvm_run union is the active one.
                let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                Exit::InternalError(sub)
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Exit::FailEntry(reason),
            Ok(other) => Exit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => {
                return Err(KvmError {
                    op: "run vCPU",
                    source: e,
                }
                .into());
            }
        };
        Ok(exit)
    }

    /// Whether an interrupt can be injected now: (KVM ready, guest IF).
    pub fn interrupt_window(&mut self) -> (bool, bool) {
        let run = self.fd.get_kvm_run();
        (run.ready_for_interrupt_injection != 0, run.if_flag != 0)
    }

    /// Queues external interrupt `vector` for the next entry (KVM_INTERRUPT).
    pub fn inject(&self, vector: u32) -> Result<(), KvmError> {
        let irq = kvm_bindings::kvm_interrupt { irq: vector };
        // SAFETY: KVM_INTERRUPT reads one `struct kvm_interrupt` from the
        // pointer, which is valid for the call; the fd is this vCPU's.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_INTERRUPT, &irq) };
        if r < 0 {
            return Err(KvmError {
                op: "KVM_INTERRUPT",
                source: kvm_ioctls::Error::last(),
            });
        }
        Ok(())
    }

    /// General registers.
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.fd.get_regs().map_err(kvm("get regs"))
    }

    /// Special registers.
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.fd.get_sregs().map_err(kvm("get sregs"))
    }

    /// Registers for a crash report (zeros where KVM refuses).
    pub fn snapshot(&self) -> RegsSnapshot {
        let r = self.fd.get_regs().unwrap_or_default();
        let s = self.fd.get_sregs().unwrap_or_default();
        RegsSnapshot {
            rip: r.rip,
            rsp: r.rsp,
            rflags: r.rflags,
            rax: r.rax,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            cs: s.cs.selector,
            ss: s.ss.selector,
        }
    }
}

//! The vCPU's [`Persist`]: everything KVM keeps for a vCPU without an
//! in-kernel irqchip (no LAPIC, no nested state on PVM hosts).
//!
//! Fields of the `vcpu` section (version 1): `regs`, `sregs`, `xsave`,
//! `xcrs`, `events`, `debugregs` are the Linux x86-64 UAPI structures
//! (`struct kvm_regs` ... of `linux/kvm.h`) as bytes; `fpu` is
//! `struct kvm_fpu` written field by field at its UAPI offsets; `msrs` is a
//! list of `{u32 index, u32 reserved, u64 data}`.
//!
//! Precondition of `save`: no port I/O is half done. KVM finishes an `in`
//! or `out` (writes RAX, advances RIP) on the *next* `KVM_RUN`, so the state
//! read right after an exit is not the state the guest resumes from.
//! [`Vcpu::complete_pending_io`] runs `KVM_RUN` with `immediate_exit` set:
//! KVM completes the instruction and returns `EINTR` before the guest runs
//! (KVM API doc, `KVM_RUN`: "userspace should ensure that the operation is
//! completed before performing a live migration").

use std::sync::OnceLock;

use kvm_bindings::{
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR, Msrs, kvm_debugregs, kvm_fpu,
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::Cap;
use zerocopy::{FromBytes, IntoBytes};

use super::{KvmError, Vcpu};
use crate::persist::{Component, FieldError, Persist, PersistError, Section};

const ID: &str = "vcpu";

/// MSRs saved when the host supports them: the system-call and
/// `swapgs` MSRs, PAT, TSC and TSC_AUX, MISC_ENABLE (EFER, FS/GS base and
/// the APIC base are in `sregs`).
const MSRS: [u32; 12] = [
    0x0000_0010, // IA32_TSC
    0x0000_0174, // IA32_SYSENTER_CS
    0x0000_0175, // IA32_SYSENTER_ESP
    0x0000_0176, // IA32_SYSENTER_EIP
    0x0000_01a0, // IA32_MISC_ENABLE
    0x0000_0277, // IA32_PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// The MSRs of [`MSRS`] that this host's KVM lists (read once).
fn saved_msrs() -> &'static [u32] {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    LIST.get_or_init(|| {
        let listed = super::open_kvm()
            .ok()
            .and_then(|k| k.get_msr_index_list().ok())
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        MSRS.iter()
            .copied()
            .filter(|m| listed.contains(m))
            .collect()
    })
}

/// Reads once what save and restore need from the host (the MSR list, the
/// XSAVE size), so that the first save does not pay for it in a pause.
pub(crate) fn probe_host() {
    saved_msrs();
    xsave2_size();
}

/// The saved vCPU.
#[derive(Clone, Debug, PartialEq)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// x87/SSE state (also inside `xsave`; restored first).
    pub fpu: kvm_fpu,
    /// The XSAVE area: a `struct kvm_xsave` (4096 bytes: no dynamic
    /// features such as AMX).
    pub xsave: Vec<u8>,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// `(index, value)` of the MSRs of `MSRS` (module source) the host lists.
    pub msrs: Vec<(u32, u64)>,
    /// Pending exception, injected interrupt, NMI, interrupt shadow.
    pub events: kvm_vcpu_events,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
}

fn pod<T: IntoBytes + zerocopy::Immutable>(s: &mut Section, name: &str, v: &T) {
    s.put_bytes(name, v.as_bytes());
}

fn unpod<T: FromBytes>(s: &Section, name: &str) -> Result<T, FieldError> {
    let b = s.bytes(name)?;
    T::read_from_bytes(b).map_err(|_| {
        FieldError::new(
            name,
            format!("{} bytes, expected {}", b.len(), size_of::<T>()),
        )
    })
}

/// `struct kvm_fpu` at its UAPI offsets (416 bytes).
fn fpu_bytes(f: &kvm_fpu) -> Vec<u8> {
    let mut b = Vec::with_capacity(416);
    for r in &f.fpr {
        b.extend_from_slice(r);
    }
    b.extend_from_slice(&f.fcw.to_le_bytes());
    b.extend_from_slice(&f.fsw.to_le_bytes());
    b.push(f.ftwx);
    b.push(f.pad1);
    b.extend_from_slice(&f.last_opcode.to_le_bytes());
    b.extend_from_slice(&f.last_ip.to_le_bytes());
    b.extend_from_slice(&f.last_dp.to_le_bytes());
    for x in &f.xmm {
        b.extend_from_slice(x);
    }
    b.extend_from_slice(&f.mxcsr.to_le_bytes());
    b.extend_from_slice(&f.pad2.to_le_bytes());
    b
}

fn fpu_from(b: &[u8]) -> Result<kvm_fpu, FieldError> {
    if b.len() != 416 {
        return Err(FieldError::new(
            "fpu",
            format!("{} bytes, expected 416", b.len()),
        ));
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let mut f = kvm_fpu::default();
    for (i, r) in f.fpr.iter_mut().enumerate() {
        r.copy_from_slice(&b[i * 16..i * 16 + 16]);
    }
    f.fcw = u16_at(128);
    f.fsw = u16_at(130);
    f.ftwx = b[132];
    f.pad1 = b[133];
    f.last_opcode = u16_at(134);
    f.last_ip = u64_at(136);
    f.last_dp = u64_at(144);
    for (i, x) in f.xmm.iter_mut().enumerate() {
        x.copy_from_slice(&b[152 + i * 16..168 + i * 16]);
    }
    f.mxcsr = u32::from_le_bytes([b[408], b[409], b[410], b[411]]);
    f.pad2 = u32::from_le_bytes([b[412], b[413], b[414], b[415]]);
    Ok(f)
}

impl Component for VcpuState {
    const ID: &'static str = ID;
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        pod(s, "regs", &self.regs);
        pod(s, "sregs", &self.sregs);
        s.put_bytes("fpu", &fpu_bytes(&self.fpu));
        s.put_bytes("xsave", &self.xsave);
        pod(s, "xcrs", &self.xcrs);
        let mut m = Vec::with_capacity(self.msrs.len() * 16);
        for (i, v) in &self.msrs {
            m.extend_from_slice(&i.to_le_bytes());
            m.extend_from_slice(&[0; 4]);
            m.extend_from_slice(&v.to_le_bytes());
        }
        s.put_bytes("msrs", &m);
        pod(s, "events", &self.events);
        pod(s, "debugregs", &self.debugregs);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        let m = s.bytes("msrs")?;
        if m.len() % 16 != 0 {
            return Err(FieldError::new(
                "msrs",
                format!("{} bytes, not a multiple of 16", m.len()),
            ));
        }
        let msrs = m
            .chunks_exact(16)
            .map(|e| {
                (
                    u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                    u64::from_le_bytes(e[8..16].try_into().unwrap_or([0; 8])),
                )
            })
            .collect();
        Ok(VcpuState {
            regs: unpod(s, "regs")?,
            sregs: unpod(s, "sregs")?,
            fpu: fpu_from(s.bytes("fpu")?)?,
            xsave: unpod::<kvm_xsave>(s, "xsave")?.as_bytes().to_vec(),
            xcrs: unpod(s, "xcrs")?,
            msrs,
            events: unpod(s, "events")?,
            debugregs: unpod(s, "debugregs")?,
        })
    }
}

impl Vcpu {
    /// Completes the port I/O of the last exit without running the guest
    /// (module doc). Call at an exit boundary, before saving.
    pub(crate) fn complete_pending_io(&mut self) -> Result<(), KvmError> {
        self.fd.set_kvm_immediate_exit(1);
        let r = self.fd.run().map(|_| ());
        self.fd.set_kvm_immediate_exit(0);
        match r {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            // An exit without entering the guest is not expected; treat any
            // return as done (the guest did not run: immediate_exit).
            Ok(()) => Ok(()),
            Err(source) => Err(KvmError {
                op: "run vCPU with immediate_exit",
                source,
            }),
        }
    }

    /// XSAVE needs more than `struct kvm_xsave` (dynamic features): refuse.
    fn check_xsave_size(&self, vm_xsave2: i32, restoring: bool) -> Result<(), PersistError> {
        if vm_xsave2 > size_of::<kvm_xsave>() as i32 {
            let msg = format!(
                "KVM needs {vm_xsave2} bytes of XSAVE state, this VMM handles {}",
                size_of::<kvm_xsave>()
            );
            return Err(if restoring {
                PersistError::restore(ID, "xsave", msg)
            } else {
                PersistError::save(ID, "xsave", msg)
            });
        }
        Ok(())
    }
}

fn kvm_save(field: &str) -> impl FnOnce(kvm_ioctls::Error) -> PersistError + '_ {
    move |e| PersistError::save(ID, field, e)
}

fn kvm_restore(field: &str) -> impl FnOnce(kvm_ioctls::Error) -> PersistError + '_ {
    move |e| PersistError::restore(ID, field, format!("KVM refused it: {e}"))
}

/// The XSAVE2 size KVM reports (0 when the capability is absent).
fn xsave2_size() -> i32 {
    static SIZE: OnceLock<i32> = OnceLock::new();
    *SIZE.get_or_init(|| {
        super::open_kvm()
            .map(|k| k.check_extension_int(Cap::Xsave2))
            .unwrap_or(0)
    })
}

impl<'a> Persist<'a> for &'a Vcpu {
    type State = VcpuState;
    /// The vCPU to load (created by `Machine::new`).
    type ConstructorArgs = &'a Vcpu;
    type Error = PersistError;

    fn save(&self) -> Result<VcpuState, PersistError> {
        let fd = &self.fd;
        self.check_xsave_size(xsave2_size(), false)?;
        let list = saved_msrs();
        let entries: Vec<kvm_msr_entry> = list
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| PersistError::save(ID, "msrs", e))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm_save("msrs"))?;
        if n != list.len() {
            return Err(PersistError::save(
                ID,
                "msrs",
                format!(
                    "KVM read {n} of {} MSRs, failing at {:#x}",
                    list.len(),
                    list[n.min(list.len() - 1)]
                ),
            ));
        }
        Ok(VcpuState {
            regs: fd.get_regs().map_err(kvm_save("regs"))?,
            sregs: fd.get_sregs().map_err(kvm_save("sregs"))?,
            fpu: fd.get_fpu().map_err(kvm_save("fpu"))?,
            xsave: fd
                .get_xsave()
                .map_err(kvm_save("xsave"))?
                .as_bytes()
                .to_vec(),
            xcrs: fd.get_xcrs().map_err(kvm_save("xcrs"))?,
            msrs: msrs.as_slice().iter().map(|e| (e.index, e.data)).collect(),
            events: fd.get_vcpu_events().map_err(kvm_save("events"))?,
            debugregs: fd.get_debug_regs().map_err(kvm_save("debugregs"))?,
        })
    }

    fn restore(vcpu: &'a Vcpu, s: &VcpuState) -> Result<&'a Vcpu, PersistError> {
        let fd = &vcpu.fd;
        vcpu.check_xsave_size(xsave2_size(), true)?;
        // Mode first (sregs), then what depends on it.
        fd.set_sregs(&s.sregs).map_err(kvm_restore("sregs"))?;
        fd.set_regs(&s.regs).map_err(kvm_restore("regs"))?;
        fd.set_fpu(&s.fpu).map_err(kvm_restore("fpu"))?;
        fd.set_xcrs(&s.xcrs).map_err(kvm_restore("xcrs"))?;
        let xsave = kvm_xsave::read_from_bytes(&s.xsave).map_err(|_| {
            PersistError::restore(
                ID,
                "xsave",
                format!(
                    "{} bytes, expected {}",
                    s.xsave.len(),
                    size_of::<kvm_xsave>()
                ),
            )
        })?;
        // SAFETY: KVM_SET_XSAVE reads `guest_fpu.uabi_size` bytes from the
        // pointer. That exceeds `size_of::<kvm_xsave>()` (4096) only when the
        // guest has dynamic XSAVE features (AMX, granted by arch_prctl
        // ARCH_REQ_XCOMP_GUEST_PERM, which this VMM never requests), and
        // `check_xsave_size` above refuses hosts whose KVM reports a larger
        // XSAVE2 size. `xsave` is a whole, initialised `kvm_xsave`.
        unsafe { fd.set_xsave(&xsave) }.map_err(kvm_restore("xsave"))?;
        let entries: Vec<kvm_msr_entry> = s
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs =
            Msrs::from_entries(&entries).map_err(|e| PersistError::restore(ID, "msrs", e))?;
        let n = fd.set_msrs(&msrs).map_err(kvm_restore("msrs"))?;
        if n != entries.len() {
            return Err(PersistError::restore(
                ID,
                "msrs",
                format!(
                    "KVM set {n} of {} MSRs, refusing {:#x}",
                    entries.len(),
                    entries[n].index
                ),
            ));
        }
        let mut events = s.events;
        // Transfer the NMI-pending bit and the SIPI vector too (GET does not
        // set these "valid" flags; SET ignores those fields without them).
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        fd.set_vcpu_events(&events).map_err(kvm_restore("events"))?;
        fd.set_debug_regs(&s.debugregs)
            .map_err(kvm_restore("debugregs"))?;
        Ok(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fpu_round_trips_at_uapi_offsets() {
        let mut f = kvm_fpu {
            fcw: 0x37f,
            fsw: 0x1234,
            ftwx: 0xaa,
            last_opcode: 0x55,
            last_ip: 0x1122_3344_5566_7788,
            last_dp: 9,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        f.fpr[7][15] = 3;
        f.xmm[15][0] = 4;
        let b = fpu_bytes(&f);
        assert_eq!(b.len(), size_of::<kvm_fpu>());
        assert_eq!(fpu_from(&b).unwrap(), f);
        assert_eq!(
            fpu_from(&b[1..]).unwrap_err().to_string(),
            "field fpu: 415 bytes, expected 416"
        );
    }
}

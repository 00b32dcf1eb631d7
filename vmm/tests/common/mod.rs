//! Shared helpers of the VMM's KVM tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

pub use ftvm_vmm::kvm_or_skip;
use ftvm_vmm::{ConsoleTarget, RunMode, RunOutcome, Vm, VmConfig, VmError};

/// A config for `guest` with `arg`, console captured into the returned buffer.
pub fn config(guest: &str, arg: u64) -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let settings = ftvm_tuning::VmmSettings::default();
    let mut c = VmConfig::new(guest, &settings).expect("embedded guest");
    c.guest_arg = arg;
    let buf = Arc::new(Mutex::new(Vec::new()));
    c.console = ConsoleTarget::Capture(buf.clone());
    (c, buf)
}

/// Runs a VM to completion.
pub fn run(c: VmConfig, mode: RunMode) -> Result<RunOutcome, VmError> {
    Vm::new(c, mode)?.run()
}

/// The captured console text.
pub fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

pub mod state;

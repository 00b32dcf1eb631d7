//! Shared helpers of the VMM's KVM tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use ftvm_vmm::{ConsoleTarget, RunMode, RunOutcome, Vm, VmConfig, VmError};

/// True if KVM is usable; otherwise prints the SKIP line (or panics when
/// FTVM_REQUIRE contains "kvm").
pub fn kvm_or_skip(test: &str) -> bool {
    match ftvm_vmm::kvm_available() {
        Ok(()) => true,
        Err(why) => {
            let required = std::env::var("FTVM_REQUIRE").is_ok_and(|v| v.contains("kvm"));
            assert!(
                !required,
                "{test}: KVM required (FTVM_REQUIRE) but not accessible: {why}"
            );
            println!("SKIP {test}: /dev/kvm not accessible ({why})");
            false
        }
    }
}

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

//! Device models. The core devices (console, clock, random, system ports)
//! are always present; the NIC and the block device (vmm-net) are built from
//! the VM configuration in [`extra_devices`].

pub mod block;
pub mod clock;
pub mod console;
pub mod net;
pub mod random;
pub mod system;

use crate::device::Device;
use crate::journal::Mode;
use crate::vm::VmConfig;

/// The devices every VM has.
pub(crate) fn core_devices(config: &VmConfig) -> Vec<Box<dyn Device>> {
    vec![
        Box::new(console::Console::new(config.console.clone())),
        Box::new(system::System),
        Box::new(system::TimerWait),
        Box::new(clock::Clock::new()),
        Box::new(random::Random),
    ]
}

/// The NIC and block device (vmm-net's `net.rs`, `block.rs`). Record and
/// live: built from `VmConfig::service` and `VmConfig::disk` when given.
/// Replay: always present; the NIC detached (no socket: received packets
/// come from the log, outputs are checked), the block device detached too
/// unless a disk is given — shared: it holds the file, so that writes
/// kept by a standby can be re-issued at go-live (reads still come from the
/// log); local (`VmConfig::disk_mode`): the backup's own copy, read and
/// written during replay. A backup that will go live brings its own standby NIC in
/// `VmConfig::devices`.
pub(crate) fn extra_devices(
    config: &VmConfig,
    mode: Mode,
) -> Result<Vec<Box<dyn Device>>, crate::error::BuildVmError> {
    let mut v: Vec<Box<dyn Device>> = Vec::new();
    let disk_mode = config.disk_mode;
    if disk_mode == block::DiskMode::Local && config.disk.is_none() {
        return Err(crate::error::BuildVmError::LocalDiskMissing);
    }
    if mode == Mode::Replay {
        v.push(Box::new(net::Nic::detached()));
        match &config.disk {
            Some(path) => v.push(Box::new(open_disk(path, disk_mode)?)),
            None => v.push(Box::new(block::Block::detached())),
        }
        return Ok(v);
    }
    if let Some(addr) = config.service {
        let nic = net::Nic::new(addr).map_err(crate::error::BuildVmError::Nic)?;
        v.push(Box::new(nic));
    }
    if let Some(path) = &config.disk {
        v.push(Box::new(open_disk(path, disk_mode)?));
    }
    Ok(v)
}

fn open_disk(
    path: &std::path::Path,
    mode: block::DiskMode,
) -> Result<block::Block, crate::error::BuildVmError> {
    block::Block::open_mode(path, mode).map_err(crate::error::BuildVmError::Disk)
}

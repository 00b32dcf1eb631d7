//! Building a VM: checks of the configuration, memory, tables, image, KVM
//! objects, devices and the port map.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::boot;
use crate::device::{Device, ExitRequests};
use crate::digest::MemDigest;
use crate::error::{Allowed, BuildVmError};
use crate::journal::{Journal, Mode};
use crate::layout::{IMAGE_ADDR, IMAGE_END, MAX_MEM_MIB, MIN_MEM_MIB};
use crate::memory::GuestMemory;
use crate::vcpu::Machine;

use super::config::{RunMode, VmConfig};
use super::{Timer, Vm, boundary, snapshot};

impl Vm {
    /// Builds the VM: memory, tables, image, KVM objects, devices.
    pub fn new(mut config: VmConfig, mode: RunMode) -> Result<Vm, BuildVmError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&config.mem_mib) {
            return Err(BuildVmError::Config {
                key: "mem_mib",
                value: u64::from(config.mem_mib),
                allowed: Allowed::Range {
                    min: u64::from(MIN_MEM_MIB),
                    max: u64::from(MAX_MEM_MIB),
                },
            });
        }
        if config.guest_cpl != 0 && config.guest_cpl != 3 {
            return Err(BuildVmError::Config {
                key: "guest_cpl",
                value: u64::from(config.guest_cpl),
                allowed: Allowed::OneOf(&[0, 3]),
            });
        }
        if config.checkpoint_every_exits == 0 {
            return Err(BuildVmError::Config {
                key: "checkpoint_every_exits",
                value: 0,
                allowed: Allowed::AtLeast(1),
            });
        }
        let room = IMAGE_END - IMAGE_ADDR;
        if config.image.len() as u64 > room || config.image.is_empty() {
            return Err(BuildVmError::ImageTooLarge {
                len: config.image.len(),
                max: room,
            });
        }
        let mem = GuestMemory::new(config.mem_mib as usize * 1024 * 1024)?;
        let boot = |what| move |source| BuildVmError::Boot { what, source };
        boot::write_tables(&mem, config.guest_cpl, config.guest_arg)
            .map_err(boot("writing the boot tables"))?;
        (mem.write(IMAGE_ADDR, &config.image)).map_err(boot("loading the guest image"))?;
        boot::write_idt(&mem, &config.image).map_err(|source| BuildVmError::BadImage {
            guest: config.guest.clone(),
            source,
        })?;
        let machine = Machine::new(&mem, config.guest_cpl)?;

        let run_mode = match mode {
            RunMode::Live => Mode::Live,
            RunMode::Record(_) => Mode::Record,
            RunMode::Replay(_) => Mode::Replay,
        };
        let mut devices = crate::devices::core_devices(&config);
        // Devices given explicitly in the config win over the NIC/block
        // device the VMM would add on the same ports.
        let explicit = |p: u16| config.devices.iter().any(|d| d.ports().contains(&p));
        let mut replay_only = Vec::new();
        for d in crate::devices::extra_devices(&config, run_mode)? {
            if !d.ports().any(explicit) {
                if run_mode == Mode::Replay {
                    replay_only.push(d.ports());
                }
                devices.push(d);
            }
        }
        devices.append(&mut config.devices);
        let port_map = port_map(&devices)?;
        let mut journal = match mode {
            RunMode::Live => Journal::live(config.gate),
            RunMode::Record(sink) => Journal::record(sink, config.gate),
            RunMode::Replay(source) => Journal::replay(source, config.gate),
        };
        if let Some(plan) = config.failover {
            journal.set_failover(plan);
        }
        journal.set_stop(Arc::clone(&config.stop));
        // Baseline: hash all memory as loaded; clear both dirty bitmaps.
        let tracker = crate::dirty::DirtyTracker::new(Arc::clone(&machine.vm), &mem);
        tracker.take(crate::dirty::Consumer::DIGEST)?;
        let digest = MemDigest::new(&mem);
        let identity = snapshot::identity_of(&config.guest, &config.image, mem.size());
        let persist = boundary::PersistParts::new(identity, tracker)?;
        Ok(Vm {
            machine,
            devices,
            port_map,
            journal,
            digest,
            timer: Timer::default(),
            requests: ExitRequests::default(),
            ordinal: 0,
            checkpoint_every: config.checkpoint_every_exits,
            checkpoints: 0,
            interrupts: 0,
            stop: config.stop,
            interrupted_while_stopping: false,
            replay_only,
            max_exits: config.max_exits,
            wait_spin: Duration::from_micros(config.wait_spin_us),
            started: Instant::now(),
            persist,
            mem,
        })
    }
}

/// Which device owns each port; two devices on one port is an error.
pub(super) fn port_map(devices: &[Box<dyn Device>]) -> Result<Vec<Option<u8>>, BuildVmError> {
    if devices.len() > usize::from(u8::MAX) {
        return Err(BuildVmError::TooManyDevices {
            count: devices.len(),
            max: usize::from(u8::MAX),
        });
    }
    let mut map: Vec<Option<u8>> = vec![None; 65536];
    for (i, d) in devices.iter().enumerate() {
        for p in d.ports() {
            if let Some(j) = map[p as usize] {
                return Err(BuildVmError::PortConflict {
                    port: p,
                    first: devices[j as usize].name(),
                    second: d.name(),
                });
            }
            map[p as usize] = Some(i as u8);
        }
    }
    Ok(map)
}

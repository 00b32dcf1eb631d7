//! The block device's [`Persist`]: the capacity the guest learned through
//! INFO (request checks depend on it, so replay needs it) and the writes
//! held by the output gate (handed out, not yet in the file).
//!
//! Fields of the `block` section (version 1): `capacity_known` (bool),
//! `capacity_sectors` (u64, 0 when unknown), `held_sectors` (u64 each),
//! `held_data` (512 bytes per held sector, same order). The request ring is
//! in guest memory; restore checks it (`req_prod` / `req_cons`).
//!
//! Restoring into a device with a disk file writes the held sectors to the
//! file (their OUTPUT entries were logged before the boundary; with a shared
//! disk the source releases the same bytes). A detached (replaying) device
//! keeps none: its reads come from the log.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::abi::{CTRL, REQ_CONS, REQ_PROD, SECTOR, SLOTS};
use super::{Block, lock_held};
use crate::memory::GuestMemory;
use crate::persist::{Component, FieldError, Persist, PersistError, Section};

const ID: &str = "block";

/// The saved block device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockState {
    /// Capacity in sectors, once the guest asked (INFO).
    pub sectors: Option<u64>,
    /// Held writes: `(sector, 512 bytes)`, ascending.
    pub held: Vec<(u64, Box<[u8]>)>,
}

impl Component for BlockState {
    const ID: &'static str = ID;
    const VERSION: u32 = 1;

    fn encode(&self, s: &mut Section) {
        s.put_bool("capacity_known", self.sectors.is_some());
        s.put_u64("capacity_sectors", self.sectors.unwrap_or(0));
        let mut idx = Vec::with_capacity(self.held.len() * 8);
        let mut data = Vec::with_capacity(self.held.len() * SECTOR as usize);
        for (sector, d) in &self.held {
            idx.extend_from_slice(&sector.to_le_bytes());
            data.extend_from_slice(d);
        }
        s.put_bytes("held_sectors", &idx);
        s.put_bytes("held_data", &data);
    }

    fn decode(s: &Section) -> Result<Self, FieldError> {
        let known = s.bool("capacity_known")?;
        let capacity = s.u64("capacity_sectors")?;
        let idx = s.bytes("held_sectors")?;
        let data = s.bytes("held_data")?;
        if idx.len() % 8 != 0 {
            return Err(FieldError::new(
                "held_sectors",
                format!("{} bytes, not a multiple of 8", idx.len()),
            ));
        }
        let n = idx.len() / 8;
        if data.len() != n * SECTOR as usize {
            return Err(FieldError::new(
                "held_data",
                format!("{} bytes for {n} held sectors", data.len()),
            ));
        }
        let held = idx
            .chunks_exact(8)
            .zip(data.chunks_exact(SECTOR as usize))
            .map(|(i, d)| (u64::from_le_bytes(i.try_into().unwrap_or([0; 8])), d.into()))
            .collect();
        Ok(BlockState {
            sectors: known.then_some(capacity),
            held,
        })
    }
}

/// What a restored block device is built on.
#[derive(Debug)]
pub struct BlockArgs<'a> {
    /// The block device of the receiving VM (its file, or none, and counters).
    pub host: &'a Block,
    /// The receiving VM's guest memory, already restored.
    pub mem: &'a GuestMemory,
}

impl<'a> Persist<'a> for Block {
    type State = BlockState;
    type ConstructorArgs = BlockArgs<'a>;
    type Error = PersistError;

    fn save(&self) -> Result<BlockState, PersistError> {
        let held = self
            .held
            .as_ref()
            .map(|h| {
                lock_held(h)
                    .sectors
                    .iter()
                    .map(|(s, (_, d))| (*s, d.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(BlockState {
            sectors: self.sectors,
            held,
        })
    }

    fn restore(args: BlockArgs<'a>, s: &BlockState) -> Result<Block, PersistError> {
        let mem = args.mem;
        let field = |off: u64, name: &str| {
            mem.read_u32(CTRL + off)
                .map_err(|e| PersistError::restore(ID, name, e))
        };
        let prod = field(REQ_PROD, "req_prod")?;
        let cons = field(REQ_CONS, "req_cons")?;
        let pending = prod.wrapping_sub(cons);
        if pending > SLOTS {
            return Err(PersistError::restore(
                ID,
                "req_prod",
                format!("{prod} is {pending} requests ahead of req_cons {cons}, ring has {SLOTS}"),
            ));
        }
        let host = args.host;
        if let Some(file) = &host.file {
            for (sector, d) in &s.held {
                file.write_all_at(d, sector * SECTOR).map_err(|e| {
                    PersistError::restore(
                        ID,
                        "held_data",
                        format!("writing held sector {sector} to the disk file: {e}"),
                    )
                })?;
            }
        }
        Ok(Block {
            mode: host.mode,
            path: host.path.clone(),
            file: host.file.clone(),
            held: host.held.as_ref().map(|_| Arc::default()),
            host_sectors: host.host_sectors,
            written: Arc::clone(&host.written),
            sectors: s.sectors,
            stats: Arc::clone(&host.stats),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_held_writes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, vec![0u8; 8 * 512]).unwrap();
        let dev = Block::open(&path).unwrap();
        lock_held(dev.held.as_ref().unwrap()).hold(3, &[7u8; 1024]);
        let mut saved = dev.save().unwrap();
        saved.sectors = Some(8);
        assert_eq!(saved.held.len(), 2);
        let back = BlockState::from_section(&saved.to_section()).unwrap();
        assert_eq!(back, saved);

        let mem = GuestMemory::new(64 << 20).unwrap();
        let target = Block::open(&path).unwrap();
        let r = Block::restore(
            BlockArgs {
                host: &target,
                mem: &mem,
            },
            &back,
        )
        .unwrap();
        assert_eq!(r.sectors, Some(8));
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(&disk[3 * 512..5 * 512], &[7u8; 1024][..]);

        mem.write_u32(CTRL + REQ_PROD, 65).unwrap();
        let e = Block::restore(
            BlockArgs {
                host: &Block::detached(),
                mem: &mem,
            },
            &back,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "restore block: field req_prod: 65 is 65 requests ahead of req_cons 0, ring has 64"
        );
    }
}

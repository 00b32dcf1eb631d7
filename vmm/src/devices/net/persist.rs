//! The NIC's [`Persist`]. The NIC keeps no guest state of its own: the ring
//! indices and slots live in guest memory and travel with it. The `net`
//! section (version 1) has no fields; restore checks that the rings in the
//! (already restored) guest memory are ones this NIC can continue from,
//! naming the field that is not (`restore net: field tx_prod: ...`), and
//! builds a NIC on the host side it is given (socket or detached).

use std::sync::Arc;

use super::Nic;
use super::abi::{CTRL, RX_CONS, RX_PROD, RX_SLOTS, TX_CONS, TX_PROD, TX_SLOTS};
use crate::memory::GuestMemory;
use crate::persist::{Component, FieldError, Persist, PersistError, Section};

const ID: &str = "net";

/// The saved NIC (no fields: module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicState;

impl Component for NicState {
    const ID: &'static str = ID;
    const VERSION: u32 = 1;

    fn encode(&self, _: &mut Section) {}

    fn decode(_: &Section) -> Result<Self, FieldError> {
        Ok(NicState)
    }
}

/// What a restored NIC is built on.
#[derive(Debug)]
pub struct NicArgs<'a> {
    /// The NIC of the receiving VM (its socket, or none, and its counters).
    pub host: &'a Nic,
    /// The receiving VM's guest memory, already restored.
    pub mem: &'a GuestMemory,
}

fn ring_field(mem: &GuestMemory, off: u64, name: &str) -> Result<u32, PersistError> {
    mem.read_u32(CTRL + off)
        .map_err(|e| PersistError::restore(ID, name, e))
}

/// The ring invariants the device relies on (`net.rs`, "Layout").
pub(crate) fn check_rings(mem: &GuestMemory) -> Result<(), PersistError> {
    let rx_prod = ring_field(mem, RX_PROD, "rx_prod")?;
    let rx_cons = ring_field(mem, RX_CONS, "rx_cons")?;
    let tx_prod = ring_field(mem, TX_PROD, "tx_prod")?;
    let tx_cons = ring_field(mem, TX_CONS, "tx_cons")?;
    let used = rx_prod.wrapping_sub(rx_cons);
    if used > RX_SLOTS {
        return Err(PersistError::restore(
            ID,
            "rx_prod",
            format!("{rx_prod} is {used} slots ahead of rx_cons {rx_cons}, ring has {RX_SLOTS}"),
        ));
    }
    let pending = tx_prod.wrapping_sub(tx_cons);
    if pending > TX_SLOTS {
        return Err(PersistError::restore(
            ID,
            "tx_prod",
            format!("{tx_prod} is {pending} slots ahead of tx_cons {tx_cons}, ring has {TX_SLOTS}"),
        ));
    }
    Ok(())
}

impl<'a> Persist<'a> for Nic {
    type State = NicState;
    type ConstructorArgs = NicArgs<'a>;
    type Error = PersistError;

    fn save(&self) -> Result<NicState, PersistError> {
        Ok(NicState)
    }

    fn restore(args: NicArgs<'a>, _: &NicState) -> Result<Nic, PersistError> {
        check_rings(args.mem)?;
        Ok(Nic {
            socket: Arc::clone(&args.host.socket),
            standby: args.host.standby,
            stats: Arc::clone(&args.host.stats),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_that_cannot_continue_are_named() {
        let mem = GuestMemory::new(64 << 20).unwrap();
        let host = Nic::detached();
        let args = || NicArgs {
            host: &host,
            mem: &mem,
        };
        Nic::restore(args(), &NicState).unwrap();
        mem.write_u32(CTRL + TX_PROD, 300).unwrap();
        let e = Nic::restore(args(), &NicState).unwrap_err().to_string();
        assert_eq!(
            e,
            "restore net: field tx_prod: 300 is 300 slots ahead of tx_cons 0, ring has 256"
        );
        mem.write_u32(CTRL + TX_PROD, 0).unwrap();
        mem.write_u32(CTRL + RX_CONS, 5).unwrap();
        let e = Nic::restore(args(), &NicState).unwrap_err().to_string();
        assert!(e.starts_with("restore net: field rx_prod: 0 is "), "{e}");
    }
}

//! The kv reference guest: `ftvm_kvproto::Store` answering datagrams from
//! the NIC (`docs/kv.md`).
//!
//! 1. Allocate the store's tables on the heap (8192 keys, 1024 clients).
//! 2. Take every datagram of the rx ring, serve it, queue the reply to the
//!    datagram's peer.
//! 3. One doorbell for the whole batch: the VMM sends the replies and fills
//!    the rx ring again in the same exit; if it brought nothing, WAIT.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

use ftvm_guest_net::{MAX_PACKET, Nic};
use ftvm_kvproto::{ClientSlot, KeySlot, MAX_DATAGRAM, Store};
use ftvm_rt::BootInfo;

ftvm_rt::entry!(main);

/// Key slots of the store.
const KEYS: usize = 8192;
/// Client slots of the store.
const CLIENTS: usize = 1024;

fn main(_boot: &'static BootInfo) -> u32 {
    let mut store = Store::new(vec![KeySlot::EMPTY; KEYS], vec![ClientSlot::EMPTY; CLIENTS]);
    let mut nic = Nic::new();
    let mut rx = [0u8; MAX_PACKET];
    let mut reply = [0u8; MAX_DATAGRAM];
    ftvm_rt::println!("kv: serving ({KEYS} keys, {CLIENTS} clients)");
    loop {
        let mut served = 0u32;
        while nic.rx_pending() > 0 {
            if nic.tx_free() == 0 {
                nic.doorbell();
            }
            let Some((n, peer)) = nic.recv(&mut rx) else {
                break;
            };
            if n > MAX_DATAGRAM {
                continue;
            }
            if let Some(len) = store.serve(&rx[..n], &mut reply) {
                // tx_free() > 0 was ensured above.
                let _ = nic.send(&peer, &reply[..len]);
                served += 1;
            }
        }
        if served > 0 || nic.tx_pending() > 0 {
            nic.doorbell();
        } else {
            nic.wait(ftvm_rt::abi::WAIT_FOREVER);
        }
    }
}

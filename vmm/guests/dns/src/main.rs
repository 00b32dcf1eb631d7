//! The dns guest: an authoritative DNS server for one zone, with dynamic
//! updates, answering UDP datagrams from the NIC (`docs/dns.md`). All of the
//! DNS is `ftvm_dnsproto::Server`, the code the host tests.
//!
//! 1. Allocate the zone's tables on the heap (8192 record slots, a window
//!    of 256 updates in the duplicate table) and load the built-in zone;
//!    the boot argument's low 32 bits ask for that many synthetic hosts
//!    `h0`, `h1`, ... (A records, for load tests).
//! 2. Take every datagram of the rx ring, serve it, queue the reply to the
//!    datagram's peer (the peer is also the duplicate table's source key).
//! 3. One doorbell for the whole batch: the VMM sends the replies and fills
//!    the rx ring again in the same exit; if it brought nothing, WAIT.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

use ftvm_dnsproto::{BUILTIN_ZONE, DupSlot, MAX_REPLY, RecordSlot, Server};
use ftvm_guest_net::{MAX_PACKET, Nic};
use ftvm_rt::BootInfo;

ftvm_rt::entry!(main);

/// Record slots of the zone.
const RECORDS: usize = 8192;
/// UPDATEs remembered by the duplicate table (its window).
const DUPS: usize = 256;
/// Exit code when the zone cannot be set up.
const SETUP_FAILED: u32 = 2;

fn main(boot: &'static BootInfo) -> u32 {
    let mut server = Server::new(
        vec![RecordSlot::EMPTY; RECORDS],
        vec![0u32; RECORDS],
        vec![DupSlot::EMPTY; DUPS],
    );
    if let Err(e) = server.load_master(BUILTIN_ZONE) {
        ftvm_rt::println!("dns: the built-in zone does not load: {e}");
        return SETUP_FAILED;
    }
    let hosts = (boot.arg & 0xffff_ffff) as u32;
    if let Err(e) = server.add_hosts(hosts) {
        ftvm_rt::println!("dns: {hosts} synthetic hosts do not fit: {e}");
        return SETUP_FAILED;
    }
    let zone = server.zone();
    ftvm_rt::println!(
        "dns: serving {} ({} records of {}, serial {}, digest {:016x}, update window {})",
        zone.origin(),
        zone.len(),
        zone.capacity(),
        zone.serial().unwrap_or(0),
        server.digest(),
        server.dups().window()
    );
    let mut nic = Nic::new();
    let mut rx = [0u8; MAX_PACKET];
    let mut reply = [0u8; MAX_REPLY];
    loop {
        let mut served = 0u32;
        while nic.rx_pending() > 0 {
            if nic.tx_free() == 0 {
                nic.doorbell();
            }
            let Some((n, peer)) = nic.recv(&mut rx) else {
                break;
            };
            if let Some(len) = server.serve(&rx[..n], &peer.0, &mut reply) {
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

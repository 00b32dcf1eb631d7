//! ftvm-guest-net: the guest drivers of the ftvm NIC and block device
//! (`docs/devices.md`); the NIC is documented here, the disk in [`block`].
//!
//! The rings live at fixed guest-physical addresses in the device region;
//! the constants mirror `vmm/src/devices/net.rs` (`abi`). The VMM reads and
//! writes them only while the guest is stopped at an exit (the doorbell or
//! WAIT), so the guest needs no atomics, only volatile accesses that the
//! compiler cannot cache across the `out` of an exit.
//!
//! 1. [`Nic::recv`] copies the next received datagram and its peer out of
//!    the rx ring and advances `rx_cons` (the slot is free for the VMM).
//! 2. [`Nic::send`] copies a datagram and its peer into the next tx slot and
//!    advances `tx_prod`.
//! 3. [`Nic::doorbell`] (one exit) makes the VMM send every pending tx slot
//!    and fill every free rx slot; [`Nic::wait`] sleeps in the WAIT port
//!    until datagrams arrive (the VMM fills the rx ring during that exit).
#![no_std]

pub mod block;

use core::ptr;

// The layout and the port: one definition with the VMM's device.
pub use ftvm_rt::abi::nic::{
    CTRL, MAX_PACKET, PEER_LEN, PORT_DOORBELL, RX_RING, RX_SLOTS, SLOT_DATA, SLOT_PEER, SLOT_SIZE,
    TX_RING, TX_SLOTS,
};
use ftvm_rt::abi::nic::{RX_CONS, RX_PROD, TX_CONS, TX_PROD};

/// A peer address as the VMM encodes it (opaque to the guest: a reply
/// carries the request's peer back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub [u8; PEER_LEN]);

fn read_u32(gpa: u64) -> u32 {
    // SAFETY: `gpa` is one of the 4-aligned control words in the device
    // region, identity-mapped guest memory reserved for the NIC
    // (docs/guest-abi.md §2); volatile because the VMM writes it at exits.
    unsafe { ptr::read_volatile(gpa as *const u32) }
}

fn write_u32(gpa: u64, v: u32) {
    // SAFETY: as for `read_u32`.
    unsafe { ptr::write_volatile(gpa as *mut u32, v) }
}

fn copy_from(gpa: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: callers pass ranges inside one ring slot (len checked
        // against MAX_PACKET / the slot header), in the NIC's region.
        *b = unsafe { ptr::read_volatile((gpa + i as u64) as *const u8) };
    }
}

fn copy_to(gpa: u64, data: &[u8]) {
    // SAFETY: callers pass ranges inside one tx slot the guest owns
    // (tx_cons..tx_prod excluded), in the NIC's region. The VMM reads it
    // only at the next exit, after this copy; `out` is a compiler barrier.
    unsafe { ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, data.len()) }
}

/// `send` found the tx ring full: ring the doorbell and retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxFull;

/// The driver; owns `rx_cons` and `tx_prod`.
#[derive(Debug)]
pub struct Nic {
    rx_cons: u32,
    tx_prod: u32,
}

impl Nic {
    /// Takes over the rings in their current state (all zero at boot).
    pub fn new() -> Nic {
        Nic {
            rx_cons: read_u32(CTRL + RX_CONS),
            tx_prod: read_u32(CTRL + TX_PROD),
        }
    }

    /// Datagrams waiting in the rx ring.
    pub fn rx_pending(&self) -> u32 {
        read_u32(CTRL + RX_PROD).wrapping_sub(self.rx_cons)
    }

    /// Free tx slots.
    pub fn tx_free(&self) -> u32 {
        TX_SLOTS - self.tx_prod.wrapping_sub(read_u32(CTRL + TX_CONS))
    }

    /// Transmit slots filled since the last doorbell.
    pub fn tx_pending(&self) -> u32 {
        self.tx_prod.wrapping_sub(read_u32(CTRL + TX_CONS))
    }

    /// Copies the next received datagram into `buf` (truncated to its
    /// length) and frees its slot. Returns the datagram's length and peer.
    pub fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, Peer)> {
        if self.rx_pending() == 0 {
            return None;
        }
        let slot = RX_RING + u64::from(self.rx_cons % RX_SLOTS) * SLOT_SIZE;
        let len = (read_u32(slot) as usize).min(MAX_PACKET);
        let mut peer = [0u8; PEER_LEN];
        copy_from(slot + SLOT_PEER, &mut peer);
        let n = len.min(buf.len());
        copy_from(slot + SLOT_DATA, &mut buf[..n]);
        self.rx_cons = self.rx_cons.wrapping_add(1);
        write_u32(CTRL + RX_CONS, self.rx_cons);
        Some((n, Peer(peer)))
    }

    /// Queues `data` for `peer` (at most [`MAX_PACKET`] bytes, longer is cut).
    pub fn send(&mut self, peer: &Peer, data: &[u8]) -> Result<(), TxFull> {
        if self.tx_free() == 0 {
            return Err(TxFull);
        }
        let data = &data[..data.len().min(MAX_PACKET)];
        let slot = TX_RING + u64::from(self.tx_prod % TX_SLOTS) * SLOT_SIZE;
        write_u32(slot, data.len() as u32);
        write_u32(slot + 4, 0);
        copy_to(slot + SLOT_PEER, &peer.0);
        copy_to(slot + SLOT_DATA, data);
        self.tx_prod = self.tx_prod.wrapping_add(1);
        write_u32(CTRL + TX_PROD, self.tx_prod);
        Ok(())
    }

    /// One exit: the VMM sends every queued datagram and fills free rx slots.
    pub fn doorbell(&mut self) {
        ftvm_rt::io::outl(PORT_DOORBELL, 1);
    }

    /// Sleeps until datagrams arrive or `timeout_us` passes (one WAIT exit).
    pub fn wait(&mut self, timeout_us: u32) {
        ftvm_rt::wait(timeout_us);
    }
}

impl Default for Nic {
    fn default() -> Nic {
        Nic::new()
    }
}

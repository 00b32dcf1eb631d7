//! The echo guest: returns every datagram to its sender (`docs/devices.md`).
//!
//! 1. With boot argument bit 0 set, first runs a block-device self-test:
//!    INFO, read the boot counter in sector 0, write it back incremented
//!    with eight 4 KiB pattern blocks in one batch, read them back in one
//!    batch, compare, and check that a request past the end is refused.
//! 2. Take every datagram of the rx ring and queue it back to its peer.
//! 3. One doorbell per batch (sends the batch and refills the rx ring); if
//!    nothing is pending, WAIT.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use ftvm_guest_net::block::{self, Disk, Request, status};
use ftvm_guest_net::{MAX_PACKET, Nic};
use ftvm_rt::BootInfo;

ftvm_rt::entry!(main);

fn main(boot: &'static BootInfo) -> u32 {
    if boot.arg & 1 != 0 {
        disk_self_test();
    }
    let mut nic = Nic::new();
    let mut buf = [0u8; MAX_PACKET];
    ftvm_rt::println!("echo: serving");
    loop {
        let mut echoed = 0u32;
        while nic.rx_pending() > 0 {
            if nic.tx_free() == 0 {
                nic.doorbell();
            }
            let Some((n, peer)) = nic.recv(&mut buf) else {
                break;
            };
            let _ = nic.send(&peer, &buf[..n]);
            echoed += 1;
        }
        if echoed > 0 || nic.tx_pending() > 0 {
            nic.doorbell();
        } else {
            nic.wait(ftvm_rt::abi::WAIT_FOREVER);
        }
    }
}

/// Pattern byte `j` of block `i` for boot `boot`.
fn pattern(i: usize, j: usize, boot: u64) -> u8 {
    (i * 31 + j * 7 + boot as usize) as u8
}

fn disk_self_test() {
    const BLOCK: usize = 4096;
    let info = block::info();
    ftvm_rt::println!(
        "disk: {} sectors of {} bytes",
        info.sectors,
        info.sector_size
    );
    if info.sectors < 1 + 8 * (BLOCK / block::SECTOR) as u64 {
        ftvm_rt::println!("disk: too small for the self-test");
        return;
    }
    let mut disk = Disk::new();
    let mut head = vec![0u8; block::SECTOR];
    let mut r = [Request::Read {
        sector: 0,
        buf: &mut head,
        status: 0,
    }];
    disk.run(&mut r).expect("one request fits");
    let Request::Read { status: st, .. } = r[0] else {
        unreachable!()
    };
    let boot = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) + 1;
    head[..8].copy_from_slice(&boot.to_le_bytes());
    let blocks: Vec<Vec<u8>> = (0..8)
        .map(|i| (0..BLOCK).map(|j| pattern(i, j, boot)).collect())
        .collect();
    let mut writes: Vec<Request<'_>> = vec![Request::Write {
        sector: 0,
        buf: &head,
        status: 0,
    }];
    for (i, b) in blocks.iter().enumerate() {
        writes.push(Request::Write {
            sector: 1 + (i * BLOCK / block::SECTOR) as u64,
            buf: b,
            status: 0,
        });
    }
    disk.run(&mut writes).expect("nine requests fit");
    let wrote_ok = writes.iter().all(|w| {
        matches!(
            w,
            Request::Write {
                status: status::OK,
                ..
            }
        )
    });
    let mut back: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; BLOCK]).collect();
    let mut reads: Vec<Request<'_>> = back
        .iter_mut()
        .enumerate()
        .map(|(i, b)| Request::Read {
            sector: 1 + (i * BLOCK / block::SECTOR) as u64,
            buf: b,
            status: 0,
        })
        .collect();
    let mut past_end = vec![0u8; block::SECTOR];
    reads.push(Request::Read {
        sector: info.sectors,
        buf: &mut past_end,
        status: 0,
    });
    disk.run(&mut reads).expect("nine requests fit");
    let statuses: Vec<u32> = reads
        .iter()
        .map(|r| match r {
            Request::Read { status, .. } | Request::Write { status, .. } => *status,
        })
        .collect();
    drop(reads);
    let read_ok = statuses[..8].iter().all(|&s| s == status::OK) && back == blocks;
    let refused = statuses[8] == status::OUT_OF_RANGE;
    if st == status::OK && wrote_ok && read_ok && refused {
        ftvm_rt::println!("disk: self-test ok, boot {boot}");
    } else {
        ftvm_rt::println!(
            "disk: self-test FAILED: head {st} writes {wrote_ok} reads {read_ok} past-end {}",
            statuses[8]
        );
    }
}

//! `ticker`: takes the timer interrupt repeatedly. Arms a 1 ms timer, and
//! until `arg` ticks (default 20) have arrived: computes a little, waits in
//! the WAIT port, reads clock and random, and prints a line per tick.
#![no_std]
#![no_main]

use ftvm_rt::{BootInfo, abi::WAIT_FOREVER, clock, println, random, timer};

ftvm_rt::entry!(main);

fn main(boot: &'static BootInfo) -> u32 {
    let want = if boot.arg == 0 { 20 } else { boot.arg };
    println!("ticker: waiting for {want} ticks of 1 ms");
    timer::start(1000);
    let mut seen = 0u64;
    let mut mix = 0u64;
    let mut waits = 0u64;
    while seen < want {
        // Some computation so that ticks land at varying points.
        for i in 0..(seen * 97 % 500) {
            mix = (mix ^ i).rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        ftvm_rt::wait(WAIT_FOREVER);
        waits += 1;
        let now = timer::ticks();
        if now != seen {
            seen = now;
            let t = clock::now_ns();
            let r = random::u64();
            mix ^= r ^ t;
            println!("tick {seen} clock {t} random {r:016x}");
        }
    }
    timer::stop();
    println!("ticker: {seen} ticks in {waits} waits, mix {mix:016x}");
    0
}

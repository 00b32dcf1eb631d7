//! Measures the CPU an idle polling loop costs under a profile's idle
//! settings: the figure `docs/tuning.md` quotes for `balanced`.
//!
//! The loop polls a flag that never becomes set and calls the channel's real
//! idle strategy (`ftvm_ring::idle::Idler`, built from the settings the way
//! `ftvm_channel::threaded::idler_for` builds it) after every empty poll.
//! CPU time comes from `/proc/thread-self/schedstat` (Linux, ns).
//!
//! `cargo run -p ftvm-tuning --example idle_cost -- [PROFILE] [SECONDS] [--set k=v ...]`

use anyhow::{Context, Result};
use ftvm_ring::idle::{IdleKind, Idler};
use ftvm_tuning::{Idle, Settings};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn thread_cpu_ns() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").context("read schedstat")?;
    let first = text.split_whitespace().next().context("empty schedstat")?;
    first
        .parse()
        .with_context(|| format!("schedstat field {first:?}"))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.first().map_or("balanced", String::as_str);
    let seconds: u64 = args
        .get(1)
        .map_or(Ok(3), |s| s.parse())
        .context("SECONDS")?;
    let sets: Vec<String> = args
        .iter()
        .skip(2)
        .filter(|a| *a != "--set")
        .cloned()
        .collect();
    let settings = Settings::load(Some(profile), &sets)?;
    let c = &settings.channel;
    let kind = match c.idle {
        Idle::Spin => IdleKind::Spin,
        Idle::SpinYield => IdleKind::SpinYield,
        Idle::Park => IdleKind::Park,
    };
    let mut idler = Idler::new(kind, c.spin_before_yield, Duration::from_micros(c.park_us));
    // Stands for "work arrived"; never set, so every poll is an idle poll.
    let work = AtomicBool::new(false);
    let start = Instant::now();
    let cpu_start = thread_cpu_ns()?;
    let mut polls = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        // Relaxed: nothing is published through this flag; it only models a poll.
        let found = usize::from(work.load(Ordering::Relaxed));
        idler.idle(found);
        polls += 1;
    }
    let wall_ns = start.elapsed().as_nanos() as f64;
    let cpu_ns = (thread_cpu_ns()? - cpu_start) as f64;
    println!(
        "profile {profile}{}: idle {}, spin_before_yield {}, park_us {}: {:.2}% of a core \
         ({polls} polls, {:.1} µs CPU per poll)",
        if sets.is_empty() {
            String::new()
        } else {
            format!(" {sets:?}")
        },
        c.idle.name(),
        c.spin_before_yield,
        c.park_us,
        100.0 * cpu_ns / wall_ns,
        cpu_ns / polls.max(1) as f64 / 1e3
    );
    Ok(())
}

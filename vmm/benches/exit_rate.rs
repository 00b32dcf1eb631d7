//! Exit-rate benchmark: a trivial NOP exit loop at ring 3 and ring 0, live
//! and recorded, and a clock-read loop (one logged input per exit) live vs
//! recorded, plus the cost of a checkpoint at every exit.
//!
//! `cargo bench -p ftvm-vmm --bench exit_rate [-- EXITS]` (default 20000).

use std::time::Duration;

use ftvm_vmm::{ConsoleTarget, MemoryLog, RunMode, Vm, VmConfig};

struct Case {
    name: &'static str,
    mode: u64,
    cpl: u8,
    record: bool,
    every: u64,
}

fn run(c: &Case, n: u64) -> (u64, Duration, u64) {
    let settings = ftvm_tuning::VmmSettings::default();
    let mut cfg = VmConfig::new("hello", &settings).expect("hello guest");
    cfg.guest_arg = (n << 8) | c.mode;
    cfg.guest_cpl = c.cpl;
    cfg.checkpoint_every_exits = c.every;
    cfg.console = ConsoleTarget::Discard;
    let mode = if c.record {
        RunMode::Record(Box::new(MemoryLog::new()))
    } else {
        RunMode::Live
    };
    let o = Vm::new(cfg, mode)
        .map_err(ftvm_vmm::VmError::from)
        .and_then(|mut vm| vm.run())
        .expect("run");
    (o.exits, o.elapsed, o.stats.entries)
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    if let Err(why) = ftvm_vmm::kvm_available() {
        println!("SKIP exit_rate: /dev/kvm not accessible ({why})");
        return;
    }
    let cases = [
        Case {
            name: "nop ring 3 live",
            mode: 4,
            cpl: 3,
            record: false,
            every: 10_000,
        },
        Case {
            name: "nop ring 0 live",
            mode: 4,
            cpl: 0,
            record: false,
            every: 10_000,
        },
        Case {
            name: "nop ring 3 record",
            mode: 4,
            cpl: 3,
            record: true,
            every: 10_000,
        },
        Case {
            name: "nop ring 0 record",
            mode: 4,
            cpl: 0,
            record: true,
            every: 10_000,
        },
        Case {
            name: "clock ring 3 live",
            mode: 6,
            cpl: 3,
            record: false,
            every: 10_000,
        },
        Case {
            name: "clock ring 3 record",
            mode: 6,
            cpl: 3,
            record: true,
            every: 10_000,
        },
        Case {
            name: "clock ring 0 live",
            mode: 6,
            cpl: 0,
            record: false,
            every: 10_000,
        },
        Case {
            name: "clock ring 0 record",
            mode: 6,
            cpl: 0,
            record: true,
            every: 10_000,
        },
        Case {
            name: "nop ring 3 record, checkpoint every exit",
            mode: 4,
            cpl: 3,
            record: true,
            every: 1,
        },
    ];
    let compute = [
        Case {
            name: "compute ring 3",
            mode: 7,
            cpl: 3,
            record: false,
            every: 10_000,
        },
        Case {
            name: "compute ring 0",
            mode: 7,
            cpl: 0,
            record: false,
            every: 10_000,
        },
    ];
    println!(
        "{:<42} {:>8} {:>10} {:>12} {:>10}",
        "case", "exits", "entries", "exits/s", "us/exit"
    );
    for c in &cases {
        // Warm-up run (page-ins, shadow page tables), then the measured run.
        run(c, n / 10 + 1);
        let (exits, t, entries) = run(c, n);
        let s = t.as_secs_f64();
        println!(
            "{:<42} {:>8} {:>10} {:>12.0} {:>10.2}",
            c.name,
            exits,
            entries,
            exits as f64 / s,
            s * 1e6 / exits as f64
        );
    }
    println!("{:<42} {:>12} {:>14}", "case", "iterations", "ns/iteration");
    for c in &compute {
        let iters = n * 10;
        let (_, t, _) = run(c, iters);
        println!(
            "{:<42} {:>12} {:>14.2}",
            c.name,
            iters,
            t.as_nanos() as f64 / iters as f64
        );
    }
}

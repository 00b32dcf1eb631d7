//! Counts heap allocations per entry at the vmm↔channel seam, with a
//! counting global allocator: a primary's inputs claimed, written in place
//! and committed into the channel's log ring (`ChannelSink`), and a
//! backup's replay of them lent from its receive queue or replay ring
//! (`ChannelSource`), both through the real record/replay engine
//! (`ExitHarness`) over a real channel on loopback.
//!
//! Inputs must not allocate at all. Outputs and the ends of exits (where an
//! inline channel runs) are counted apart: they may grow a queue to a new
//! high-water mark now and then (an output is held until the backup's ACK),
//! never once per entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use ftvm_arbiter::Retry;
use ftvm_ft::{BackupOptions, PairIdentity, PrimaryOptions, accept_backup, connect_primary};
use ftvm_testkit::alloc::{Counting, allocs_in, last_size};
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::{DeviceError, ExitHarness, ImmediateGate};
use ftvm_wire::Kind;

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Exits before counting starts (buffers reach their size), then counted.
const WARM: u64 = 2_000;
const N: u64 = 10_000;
/// Payload of the packet-like inputs.
const LEN: usize = 300;
/// Every this many exits the exit is an output instead of an input.
const OUTPUT_EVERY: u64 = 16;
const MEM: usize = 1 << 20;
const IMAGE: &[u8] = b"the allocation test's stand-in image";

/// Exit `i`'s input: a packet of `LEN` bytes of `i`, or a clock value.
fn produce(i: u64, buf: &mut [u8]) -> Result<Option<usize>, DeviceError> {
    if i.is_multiple_of(2) {
        buf[..LEN].fill(i as u8);
        Ok(Some(LEN))
    } else {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        Ok(Some(8))
    }
}

/// What both sides do with exit `i`'s input: check it and write it to
/// guest memory.
fn apply(h_mem: &ftvm_vmm::GuestMemory, i: u64, data: &[u8]) -> Result<(), DeviceError> {
    let want = if i.is_multiple_of(2) { LEN } else { 8 };
    assert_eq!(data.len(), want, "exit {i}");
    assert_eq!(data[0], i as u8, "exit {i}");
    h_mem.write(0x1000, data)?;
    Ok(())
}

/// One exit on either side; returns (allocations in the input or output
/// call, allocations at the end of the exit).
fn exit(h: &mut ExitHarness, i: u64) -> (u64, u64) {
    let (r, at_exit) = allocs_in(|| {
        let mut ctx = h.exit();
        if i.is_multiple_of(OUTPUT_EVERY) {
            ctx.output(Kind::NetTx, 0x41, &i.to_le_bytes(), || {})
        } else {
            let m = ctx.mem();
            let kind = if i.is_multiple_of(2) {
                Kind::PacketRx
            } else {
                Kind::Clock
            };
            ctx.poll_input(kind, 0x40, LEN, |b| produce(i, b), |d| apply(m, i, d))
                .map(|got| assert!(got.is_some(), "exit {i}: no input"))
        }
    });
    r.unwrap_or_else(|e| panic!("exit {i}: {}", ftvm_vmm::error_chain(&e)));
    let (r, finish) = allocs_in(|| h.finish_exit());
    r.unwrap_or_else(|e| panic!("end of exit {i}: {}", ftvm_vmm::error_chain(&e)));
    (at_exit, finish)
}

#[derive(Debug, Default)]
struct Counts {
    inputs: u64,
    outputs: u64,
    exit_ends: u64,
    last_size: usize,
}

fn run_exits(h: &mut ExitHarness) -> Counts {
    let mut c = Counts::default();
    for i in 1..=WARM + N {
        let (at_exit, finish) = exit(h, i);
        if i > WARM {
            if i.is_multiple_of(OUTPUT_EVERY) {
                c.outputs += at_exit;
            } else {
                c.inputs += at_exit;
            }
            c.exit_ends += finish;
            if at_exit + finish > 0 {
                c.last_size = last_size();
            }
        }
    }
    c
}

fn settings(kind: TransportKind, threaded: bool) -> Settings {
    let mut s = Settings::default();
    s.channel.transport = kind;
    s.channel.threaded = threaded;
    s.channel.peer_timeout_ms = 5000;
    s
}

fn seam_does_not_allocate_per_entry(name: &str, s: &Settings) {
    let name_tag = name.replace(' ', "-");
    static PAIR: AtomicU64 = AtomicU64::new(0);
    let at = match s.channel.transport {
        TransportKind::Shm => format!("alloc-{}-{name_tag}", std::process::id()),
        _ => "127.0.0.1:0".to_string(),
    };
    let mut listener = ftvm_channel::transport::listen(&s.channel, &at).expect("listen");
    let bound = listener.local_addr();
    let sb = s.clone();
    let backup = thread::spawn(move || {
        let opts = BackupOptions {
            guest: "none".into(),
            ..BackupOptions::default()
        };
        let end = accept_backup(
            &sb,
            listener.as_mut(),
            IMAGE,
            &opts,
            Duration::from_secs(10),
        )
        .expect("backup handshake");
        let stats = end.stats.clone();
        let mut h =
            ExitHarness::replay(MEM, Box::new(end.source), Box::new(ImmediateGate)).unwrap();
        let c = run_exits(&mut h);
        assert_eq!(h.stats().entries, WARM + N);
        // The source's counters follow the consumed entries (inline and threaded).
        assert_eq!(stats.replayed.get(), WARM + N);
        assert_eq!(stats.backlog.get(), 0);
        c
    });
    let dir = tempfile::tempdir().unwrap();
    let arbiter: Arc<dyn ftvm_arbiter::Arbiter> =
        ftvm_arbiter::open(&format!("file:{}", dir.path().display()))
            .map(Arc::from)
            .expect("file arbiter");
    let vm = format!(
        "alloc-{}-{}",
        std::process::id(),
        PAIR.fetch_add(1, Ordering::Relaxed)
    );
    let candidate = ftvm_ft::candidate("primary", "127.0.0.1:1");
    let generation = ftvm_ft::claim_generation(arbiter.as_ref(), &vm, &candidate).unwrap();
    let opts = PrimaryOptions {
        pair: PairIdentity {
            vm,
            generation,
            candidate,
            arbiter,
            retry: Retry::default(),
        },
        guest: "none".into(),
        guest_arg: 0,
        give_up: Arc::new(|| false),
    };
    let end = connect_primary(s, &bound, IMAGE, opts).expect("primary handshake");
    let mut h = ExitHarness::record(MEM, Box::new(end.sink), Box::new(end.gate)).unwrap();
    let primary = run_exits(&mut h);
    h.finish().expect("the driver finishes (last ACK, goodbye)");
    drop(h);
    let backup = backup.join().expect("backup thread");
    println!("{name}: over {N} exits, primary {primary:?}, backup {backup:?}");
    assert_eq!(
        primary.inputs, 0,
        "{name}: the primary's append path allocated"
    );
    assert_eq!(
        backup.inputs, 0,
        "{name}: the backup's replay path allocated"
    );
    // The end of an exit may grow a buffer to a new high-water mark (the
    // backup's receive queue, the gate's queue): a handful over N exits,
    // never one per entry.
    for (side, c) in [("primary", &primary), ("backup", &backup)] {
        assert!(
            c.exit_ends + c.outputs <= N / 100,
            "{name}: the {side} allocated {} times at exit ends and {} in outputs over {N} exits",
            c.exit_ends,
            c.outputs
        );
    }
}

#[test]
fn the_seam_does_not_allocate_per_entry_tcp_inline() {
    seam_does_not_allocate_per_entry("tcp inline", &settings(TransportKind::Tcp, false));
}

#[test]
fn the_seam_does_not_allocate_per_entry_shm_threaded() {
    seam_does_not_allocate_per_entry("shm threaded", &settings(TransportKind::Shm, true));
}

//! Record a guest, replay its log, compare: the acceptance tests of the
//! record/replay engine (real KVM; SKIP lines when /dev/kvm is absent).

mod common;

use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Instant;

use common::*;
use ftvm_vmm::{
    Device, DeviceError, Divergence, ExitCtx, LogFileReader, LogFileWriter, RunMode, StopReason,
    VmError,
};
use ftvm_wire::logfile::LogReader;
use ftvm_wire::{Header, Kind, encode, frame_len};

fn record(guest: &str, arg: u64, cpl: u8, every: u64) -> (ftvm_vmm::RunOutcome, Vec<u8>, String) {
    let (mut c, out) = config(guest, arg);
    c.guest_cpl = cpl;
    c.checkpoint_every_exits = every;
    let log = SharedLog::default();
    let r = run(c, RunMode::Record(Box::new(log.clone()))).expect("record run");
    let bytes = log.bytes();
    (r, bytes, text(&out))
}

fn replay(guest: &str, arg: u64, cpl: u8, log: &[u8]) -> Result<ftvm_vmm::RunOutcome, VmError> {
    let (mut c, _out) = config(guest, arg);
    c.guest_cpl = cpl;
    let src = LogFileReader::from_bytes(Path::new("test.log"), log).expect("log parses");
    run(c, RunMode::Replay(Box::new(src)))
}

use ftvm_vmm::log::SharedLog;

fn entries(log: &[u8]) -> Vec<(Header, Vec<u8>)> {
    LogReader::new(log)
        .unwrap()
        .map(|r| {
            let (_, f) = r.unwrap();
            (f.header, f.payload.to_vec())
        })
        .collect()
}

fn rebuild(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
    let mut v = ftvm_wire::logfile::file_header().to_vec();
    for (h, p) in entries {
        let mut b = vec![0u8; frame_len(p.len())];
        encode(
            &mut b,
            &Header::new(h.kind, h.seq, h.exit_ordinal, p.len()),
            p,
        )
        .unwrap();
        v.extend_from_slice(&b);
    }
    v
}

#[test]
fn ticker_records_and_replays_to_the_same_digest() {
    if !kvm_or_skip("ticker_records_and_replays_to_the_same_digest") {
        return;
    }
    let (rec, log, out) = record("ticker", 10, 3, 50);
    assert_eq!(rec.reason, StopReason::GuestExit(0), "{out}");
    assert!(out.contains("ticker: 10 ticks"), "{out}");
    assert!(rec.interrupts >= 10, "{rec:?}");
    let kinds: Vec<Kind> = entries(&log).iter().map(|(h, _)| h.kind).collect();
    assert!(kinds.contains(&Kind::Interrupt) && kinds.contains(&Kind::Clock));
    assert!(kinds.contains(&Kind::Random) && kinds.contains(&Kind::Console));
    let rep = replay("ticker", 10, 3, &log).expect("replay");
    assert_eq!(rep.reason, StopReason::GuestExit(0));
    assert_eq!(rep.exits, rec.exits);
    assert_eq!(rep.state, rec.state);
    assert_eq!(rep.interrupts, rec.interrupts);
    assert_eq!(rep.checkpoints, rec.checkpoints);
}

#[test]
fn hello_replays_at_both_rings() {
    if !kvm_or_skip("hello_replays_at_both_rings") {
        return;
    }
    for cpl in [3u8, 0] {
        let (rec, log, out) = record("hello", 0, cpl, 1);
        assert!(out.contains(&format!("at ring {cpl}")), "{out}");
        assert!(out.contains("fib(50) 12586269025"), "{out}");
        assert!(out.contains("heap sum 332833500"), "{out}");
        if cpl == 0 {
            // The filtered CPUID is what ring 0 sees (CPUID is emulated there);
            // at ring 3 PVM runs CPUID natively (docs/vmm.md).
            assert!(out.contains("hypervisor 0 x2apic 0"), "{out}");
        }
        let rep = replay("hello", 0, cpl, &log).expect("replay");
        assert_eq!(rep.state, rec.state, "cpl {cpl}");
        assert_eq!(rep.checkpoints, rec.exits, "a checkpoint at every exit");
    }
}

#[test]
fn a_changed_value_is_caught_at_its_exit() {
    if !kvm_or_skip("a_changed_value_is_caught_at_its_exit") {
        return;
    }
    let (_, log, _) = record("hello", 0, 3, 1);
    let mut es = entries(&log);
    let i = es
        .iter()
        .position(|(h, _)| h.kind == Kind::Random)
        .expect("a random entry");
    let ordinal = es[i].0.exit_ordinal;
    *es[i].1.last_mut().unwrap() ^= 0x55;
    let err = replay("hello", 0, 3, &rebuild(&es)).unwrap_err();
    match err.divergence() {
        Some(Divergence::Checkpoint {
            ordinal: o,
            primary,
            replay,
        }) => {
            assert_eq!(*o, ordinal, "{err}");
            assert_ne!(primary.mem_digest, replay.mem_digest);
        }
        other => panic!("expected a checkpoint divergence, got {other:?}: {err}"),
    }

    // A changed kind is caught at the entry itself.
    let mut es = entries(&log);
    let i = es
        .iter()
        .position(|(h, _)| h.kind == Kind::Clock)
        .expect("a clock entry");
    let ordinal = es[i].0.exit_ordinal;
    es[i].0.kind = Kind::Random;
    let err = replay("hello", 0, 3, &rebuild(&es)).unwrap_err();
    match err.divergence() {
        Some(Divergence::Entry {
            ordinal: o,
            expected,
            found,
        }) => {
            assert_eq!(*o, ordinal);
            assert!(expected.contains("clock input on port 0x20"), "{expected}");
            assert!(found.starts_with("random"), "{found}");
        }
        other => panic!("expected an entry divergence, got {other:?}: {err}"),
    }
}

/// A test device that reads host time WITHOUT going through `ctx.input`.
struct LeakyClock(Instant);

impl Device for LeakyClock {
    fn name(&self) -> &'static str {
        "leaky-clock"
    }
    fn ports(&self) -> RangeInclusive<u16> {
        0x60..=0x60
    }
    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        let gpa = u64::from(ftvm_vmm::device::out_u32(port, data)?);
        ctx.mem()
            .write_u64(gpa, self.0.elapsed().as_nanos() as u64)?;
        Ok(())
    }
}

#[test]
fn an_unlogged_host_value_is_caught_at_the_next_checkpoint() {
    if !kvm_or_skip("an_unlogged_host_value_is_caught_at_the_next_checkpoint") {
        return;
    }
    let (mut c, _) = config("hello", 3);
    c.checkpoint_every_exits = 4;
    c.devices.push(Box::new(LeakyClock(Instant::now())));
    let log = SharedLog::default();
    run(c, RunMode::Record(Box::new(log.clone()))).expect("record");
    let (mut c, _) = config("hello", 3);
    c.devices.push(Box::new(LeakyClock(Instant::now())));
    let src = LogFileReader::from_bytes(Path::new("t"), &log.bytes()).unwrap();
    let err = run(c, RunMode::Replay(Box::new(src))).unwrap_err();
    match err.divergence() {
        // Exits: 1 = port 0x60 (unlogged write), 2 = NOP, 3 = 0x60, 4 = NOP + checkpoint.
        Some(Divergence::Checkpoint { ordinal, .. }) => assert_eq!(*ordinal, 4, "{err}"),
        other => panic!("expected a checkpoint divergence, got {other:?}: {err}"),
    }
}

#[test]
fn truncated_and_corrupt_logs_name_the_offset() {
    if !kvm_or_skip("truncated_and_corrupt_logs_name_the_offset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.log");
    let (c, _) = config("hello", 0);
    let sink = LogFileWriter::create(&path).unwrap();
    let rec = run(c, RunMode::Record(Box::new(sink))).unwrap();
    let full = std::fs::read(&path).unwrap();
    assert!(full.len() > 200);

    // Truncated in the middle of a frame: replay runs the good prefix, then
    // fails with the offset of the cut frame.
    let cut = full.len() - 20;
    std::fs::write(&path, &full[..cut]).unwrap();
    let (c, _) = config("hello", 0);
    let src = LogFileReader::open(&path).unwrap();
    let err = ftvm_vmm::error_chain(&run(c, RunMode::Replay(Box::new(src))).unwrap_err());
    assert!(err.contains("offset") && err.contains("hello.log"), "{err}");

    // One flipped byte in a frame body: CRC mismatch, with the offset.
    let mut bad = full.clone();
    bad[16 + 44] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let (c, _) = config("hello", 0);
    let src = LogFileReader::open(&path).unwrap();
    let err = ftvm_vmm::error_chain(&run(c, RunMode::Replay(Box::new(src))).unwrap_err());
    assert!(err.contains("offset 16"), "{err}");

    // Not a log at all.
    std::fs::write(&path, b"garbage").unwrap();
    let err = ftvm_vmm::error_chain(&LogFileReader::open(&path).unwrap_err());
    assert!(
        err.contains("hello.log") && err.contains("shorter than its 16-byte header"),
        "{err}"
    );

    // The intact file still replays.
    std::fs::write(&path, &full).unwrap();
    let (c, _) = config("hello", 0);
    let rep = run(
        c,
        RunMode::Replay(Box::new(LogFileReader::open(&path).unwrap())),
    )
    .unwrap();
    assert_eq!(rep.state, rec.state);
}

#[test]
fn crashing_guests_are_reported_with_reason_and_rip() {
    if !kvm_or_skip("crashing_guests_are_reported_with_reason_and_rip") {
        return;
    }
    let image = ftvm_vmm::guest_image("hello").unwrap();
    let (c, _) = config("hello", 1);
    match run(c, RunMode::Live).unwrap_err() {
        VmError::GuestFault {
            vector, name, rip, ..
        } => {
            assert_eq!((vector, name), (6, "#UD"));
            let off = (rip - 0x1_0000) as usize;
            assert_eq!(
                &image[off..off + 2],
                &[0x0f, 0x0b],
                "rip {rip:#x} is the ud2"
            );
        }
        other => panic!("expected #UD, got {other}"),
    }
    // A panic prints through the console and stops with exit code 101.
    let (c, out) = config("hello", 10);
    let r = run(c, RunMode::Live).unwrap();
    assert_eq!(r.reason, StopReason::GuestExit(101));
    let text = text(&out);
    assert!(text.starts_with("guest panic: "), "{text}");
    assert!(text.contains("deliberate panic in mode 10"), "{text}");

    let (c, _) = config("hello", 2);
    let err = run(c, RunMode::Live).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("0xdead0000"), "{msg}");
    assert!(
        matches!(
            err,
            VmError::GuestCrashed { .. } | VmError::GuestFault { .. }
        ),
        "{msg}"
    );
}

#[test]
fn a_stop_request_ends_at_an_exit_with_a_final_checkpoint() {
    if !kvm_or_skip("a_stop_request_ends_at_an_exit_with_a_final_checkpoint") {
        return;
    }
    use std::sync::atomic::Ordering;
    // The ticker waiting for a million ticks never stops by itself.
    let (c, out) = config("ticker", 1_000_000);
    let stop = c.stop.clone();
    let log = SharedLog::default();
    let sink = log.clone();
    let t = std::thread::spawn(move || run(c, RunMode::Record(Box::new(sink))));
    // Stop once the guest has printed its fifth tick (bounded wait).
    let deadline = Instant::now() + std::time::Duration::from_secs(15);
    while !text(&out).contains("tick 5 ") && Instant::now() < deadline && !t.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Release: pairs with the VM loop's Acquire load of the flag.
    stop.store(true, Ordering::Release);
    let rec = t.join().unwrap().expect("record run");
    assert_eq!(rec.reason, StopReason::Requested);
    assert!(rec.interrupts >= 5, "{rec:?}");
    let es = entries(&log.bytes());
    let (last, payload) = es.last().unwrap();
    assert_eq!(
        (last.kind, last.exit_ordinal),
        (Kind::Checkpoint, rec.exits)
    );
    assert!(
        ftvm_vmm::CheckpointRecord::from_bytes(payload)
            .unwrap()
            .is_final
    );

    let rep = replay("ticker", 1_000_000, 3, &log.bytes()).expect("replay");
    assert_eq!(rep.reason, StopReason::PrimaryStopped);
    assert_eq!((rep.exits, rep.state), (rec.exits, rec.state));
}

#[test]
fn a_backup_goes_live_where_the_log_ends() {
    if !kvm_or_skip("a_backup_goes_live_where_the_log_ends") {
        return;
    }
    let (rec, log, _) = record("ticker", 10, 3, 1_000);
    // The primary "dies" halfway: keep the entries of the first half of its exits.
    let cut = rec.exits / 2;
    let kept: Vec<_> = entries(&log)
        .into_iter()
        .filter(|(h, _)| h.exit_ordinal <= cut)
        .collect();
    let last = kept.last().unwrap().0.exit_ordinal;
    let (c, out) = config("ticker", 10);
    let src = LogFileReader::from_bytes(Path::new("half"), &rebuild(&kept)).unwrap();
    let mut vm = ftvm_vmm::Vm::new(c, RunMode::Replay(Box::new(src))).unwrap();
    let r = vm.run().unwrap();
    assert_eq!((r.reason, r.exits), (StopReason::LogEnded, last));
    assert_eq!(text(&out), "", "replay releases no output");

    vm.go_live(None, Vec::new()).unwrap();
    assert_eq!(vm.mode(), ftvm_vmm::Mode::Live);
    let r = vm.run().unwrap();
    assert_eq!(r.reason, StopReason::GuestExit(0));
    assert!(r.exits > last);
    let text = text(&out);
    assert!(text.contains("ticker: 10 ticks"), "{text}");
    assert!(
        !text.contains("waiting for"),
        "the start was replayed, not re-run: {text}"
    );
}

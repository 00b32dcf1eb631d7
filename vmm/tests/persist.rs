//! Snapshot and restore at an exit boundary (`persist`, `vm/boundary.rs`):
//! a VM saved while it runs and restored into a new VM continues exactly as
//! the original does — the new VM replays the original's log from the
//! boundary on and reaches the same final state digest.

mod common;

use std::path::Path;
use std::time::Duration;

use common::state::*;
use common::*;
use ftvm_vmm::persist::{Component, RestoreStateError, Section, VmSnapshot};
use ftvm_vmm::transfer::{receive, write_snapshot};
use ftvm_vmm::{AtExitError, LogFileReader, RunMode, StopReason, Vm, error_chain};

#[test]
fn ticker_snapshot_restores_and_replays_to_the_same_digest() {
    if !kvm_or_skip("ticker_snapshot_restores_and_replays_to_the_same_digest") {
        return;
    }
    // Timer ticks, interrupts, clock and random inputs: the original runs
    // live, and from the snapshot's exit on records the log the restored
    // VM replays.
    let (c, out) = config("ticker", 30);
    let vm = Vm::new(c, RunMode::Live).unwrap();
    let control = vm.control();
    let log = SharedLog::default();
    let sink = log.clone();
    let snap = at_ordinal(&control, 40, move |b| {
        let s = b.snapshot().expect("snapshot");
        b.record_into(Box::new(sink)).expect("record");
        s
    });
    let original = std::thread::spawn(move || {
        let mut vm = vm;
        vm.run()
    })
    .join()
    .unwrap()
    .expect("original run");
    let snap: VmSnapshot = snap.recv_timeout(Duration::from_secs(5)).unwrap();
    println!("{}", text(&out));
    assert_eq!(original.reason, StopReason::GuestExit(0));
    assert!(snap.state.ordinal >= 40);

    let (c, _) = config("ticker", 30);
    let src = LogFileReader::from_bytes(Path::new("b.log"), &log.bytes()).unwrap();
    let mut restored = Vm::new(c, RunMode::Replay(Box::new(src))).unwrap();
    let digest = restored.restore_snapshot(&snap).expect("restore");
    assert_eq!(digest, snap.digest);
    assert_eq!(restored.ordinal(), snap.state.ordinal);
    let replayed = restored.run().expect("replay");
    assert_eq!(replayed.reason, StopReason::GuestExit(0));
    assert_eq!(replayed.exits, original.exits);
    assert_eq!(replayed.state, original.state);
    assert_eq!(replayed.interrupts, original.interrupts);
    assert_eq!(replayed.checkpoints, original.checkpoints);
}

#[test]
fn kv_snapshot_under_load_restores_and_replays_to_the_same_digest() {
    if !kvm_or_skip("kv_snapshot_under_load_restores_and_replays_to_the_same_digest") {
        return;
    }
    let rec = KvRecording::start(64);
    let load = load(rec.addr, 30_000, 5);
    // Mid-load: well past boot, while requests arrive.
    let at = wait_for_exit(&rec.control, 1_500);
    let snap = rec
        .control
        .call_at_next_exit(|b| b.snapshot())
        .wait(Duration::from_secs(10))
        .unwrap()
        .expect("snapshot");
    let report = load.join().unwrap();
    let log = rec.log.clone();
    let original = rec.stop();
    println!(
        "snapshot at exit {} (asked after {at}): {} nonzero pages, {} components; load {} ops; original {} exits",
        snap.state.ordinal,
        snap.memory.pages.len(),
        snap.state.tree.sections.len(),
        report.ops,
        original.exits
    );
    assert!(
        original.exits > snap.state.ordinal + 1_000,
        "load after the snapshot"
    );
    let vcpu = ftvm_vmm::vcpu::VcpuState::from_section(snap.state.tree.get("vcpu").unwrap())
        .expect("vcpu section decodes");
    println!("saved MSRs: {:x?}", vcpu.msrs);
    assert!(vcpu.msrs.iter().any(|(i, _)| *i == 0x10), "TSC saved");
    for id in ["vcpu", "timer", "journal", "clock", "net"] {
        assert!(snap.state.tree.get(id).is_some(), "{id} saved");
    }

    // Restore directly, and through the transfer stream, into two new VMs;
    // both replay the original's log after the snapshot's exit.
    let stream = write_snapshot(&snap, Vec::new()).unwrap();
    for via_stream in [false, true] {
        let (mut vm, tx) = replayer("kv");
        if via_stream {
            let r = receive(&mut vm, stream.as_slice()).expect("receive");
            assert_eq!(r.digest, snap.digest);
            assert_eq!(r.ordinal, snap.state.ordinal);
        } else {
            assert_eq!(vm.restore_snapshot(&snap).expect("restore"), snap.digest);
        }
        for e in entries_after(&log, snap.state.ordinal) {
            tx.send(e).unwrap();
        }
        drop(tx);
        let replayed = vm.run().expect("replay from the snapshot");
        assert_eq!(replayed.reason, StopReason::PrimaryStopped);
        assert_eq!(replayed.exits, original.exits);
        assert_eq!(
            replayed.state, original.state,
            "final digest (stream {via_stream})"
        );
        assert_eq!(replayed.checkpoints, original.checkpoints);
    }
}

#[test]
fn restore_names_the_component_and_the_field() {
    if !kvm_or_skip("restore_names_the_component_and_the_field") {
        return;
    }
    let rec = KvRecording::start(64);
    let snap = rec
        .control
        .call_at_next_exit(|b| b.snapshot())
        .wait(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    rec.stop();
    let (mut vm, _tx) = replayer("kv");
    let refused = |vm: &mut Vm, s: &VmSnapshot| error_chain(&vm.restore_snapshot(s).unwrap_err());

    let mut bad = snap.clone();
    bad.state.tree.sections.remove("timer");
    assert_eq!(
        refused(&mut vm, &bad),
        "restore timer: missing from the state"
    );

    let mut bad = snap.clone();
    bad.state.tree.insert(Section::new("disk", 1));
    assert_eq!(
        refused(&mut vm, &bad),
        "restore disk: the state has it, this VM has no such component"
    );

    let mut bad = snap.clone();
    let mut t = Section::new("timer", 1);
    t.put_u32("period_us", 5);
    bad.state.tree.insert(t);
    assert_eq!(
        refused(&mut vm, &bad),
        "restore timer: field period_us: 4 bytes, expected 8"
    );

    let mut bad = snap.clone();
    bad.state.tree.sections.get_mut("clock").unwrap().version = 2;
    assert_eq!(
        refused(&mut vm, &bad),
        "restore clock: section version 2, this build reads 1"
    );

    let mut bad = snap.clone();
    bad.state.identity.guest = "echo".into();
    assert!(matches!(
        vm.restore_snapshot(&bad).unwrap_err(),
        RestoreStateError::Guest { .. }
    ));

    let mut bad = snap.clone();
    bad.memory.pages[0].1[0] ^= 1;
    assert!(
        refused(&mut vm, &bad).starts_with("restore journal: field mem_digest: state has "),
        "{}",
        refused(&mut vm, &bad)
    );

    // The same VM then takes the good snapshot.
    assert_eq!(vm.restore_snapshot(&snap).unwrap(), snap.digest);
}

#[test]
fn a_request_to_a_vm_that_is_dropped_reports_it() {
    if !kvm_or_skip("a_request_to_a_vm_that_is_dropped_reports_it") {
        return;
    }
    let (c, _) = config("hello", 0);
    let vm = Vm::new(c, RunMode::Live).unwrap();
    let pending = vm.control().call_at_next_exit(|b| b.ordinal());
    assert_eq!(
        pending.wait(Duration::from_millis(10)).unwrap_err(),
        AtExitError::Timeout {
            waited: Duration::from_millis(10)
        }
    );
    drop(vm);
    assert_eq!(
        pending.wait(Duration::from_secs(1)).unwrap_err(),
        AtExitError::VmGone
    );
}

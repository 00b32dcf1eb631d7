//! Snapshot and restore at an exit boundary (`persist`, `vm/boundary.rs`):
//! a VM saved while it runs and restored into a new VM continues exactly as
//! the original does — the new VM replays the original's log from the
//! boundary on and reaches the same final state digest.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use ftvm_vmm::persist::VmSnapshot;
use ftvm_vmm::{ExitBoundary, LogFileReader, RunMode, StopReason, Vm, VmControl};

/// Runs `f` at the first exit boundary with ordinal >= `ordinal`.
fn at_ordinal<T: Send + 'static>(
    control: &VmControl,
    ordinal: u64,
    f: impl FnOnce(&mut ExitBoundary<'_>) -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    fn again<T: Send + 'static>(
        c: VmControl,
        ordinal: u64,
        f: Box<dyn FnOnce(&mut ExitBoundary<'_>) -> T + Send>,
        tx: mpsc::SyncSender<T>,
    ) {
        let c2 = c.clone();
        c.at_next_exit(move |b| {
            if b.ordinal() >= ordinal {
                let _ = tx.send(f(b));
            } else {
                again(c2, ordinal, f, tx);
            }
        });
    }
    again(control.clone(), ordinal, Box::new(f), tx);
    rx
}

#[derive(Clone, Default)]
struct SharedLog(std::sync::Arc<std::sync::Mutex<ftvm_vmm::MemoryLog>>);

impl SharedLog {
    fn bytes(&self) -> Vec<u8> {
        let g = self.0.lock().unwrap();
        if g.bytes.is_empty() {
            ftvm_vmm::MemoryLog::new().bytes
        } else {
            g.bytes.clone()
        }
    }
}

impl ftvm_vmm::LogSink for SharedLog {
    fn append(&mut self, h: &ftvm_wire::Header, p: &[u8]) -> Result<(), ftvm_vmm::LogSinkError> {
        let mut g = self.0.lock().unwrap();
        if g.bytes.is_empty() {
            *g = ftvm_vmm::MemoryLog::new();
        }
        g.append(h, p)
    }
    fn flush(&mut self) -> Result<(), ftvm_vmm::LogSinkError> {
        Ok(())
    }
}

#[test]
fn ticker_snapshot_restores_and_replays_to_the_same_digest() {
    if !kvm_or_skip("ticker_snapshot_restores_and_replays_to_the_same_digest") {
        return;
    }
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

    let (c, out2) = config("ticker", 30);
    let src = LogFileReader::from_bytes(std::path::Path::new("b.log"), &log.bytes()).unwrap();
    let mut restored = Vm::new(c, RunMode::Replay(Box::new(src))).unwrap();
    let digest = restored.restore_snapshot(&snap).expect("restore");
    assert_eq!(digest, snap.digest);
    let replayed = restored.run().expect("replay");
    println!("restored console:\n{}", text(&out2));
    assert_eq!(replayed.reason, StopReason::GuestExit(0));
    assert_eq!(replayed.exits, original.exits);
    assert_eq!(replayed.state, original.state);
    assert_eq!(replayed.interrupts, original.interrupts);
}

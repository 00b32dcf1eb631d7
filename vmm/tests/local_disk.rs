//! Local-disk mode (`vmm.disk_mode = local`): each side owns a copy of the
//! disk. The echo guest's block self-test (argument 1) recorded against one
//! copy and replayed against a second copy of the same original: both
//! copies end byte-identical, with the same state digest; a replay whose
//! copy differs is refused by name.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use ftvm_vmm::devices::block::DiskMode;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{
    LogFileReader, LogFileWriter, RunMode, RunOutcome, StopReason, Vm, VmConfig, VmError,
};

mod common;
use common::{kvm_or_skip, text};

/// The original disk: 1 MiB, boot counter 41 in sector 0, a pattern elsewhere.
fn original() -> Vec<u8> {
    let mut image: Vec<u8> = (0..1u32 << 20).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    image[..8].copy_from_slice(&41u64.to_le_bytes());
    image
}

fn copy(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn local(c: &mut VmConfig, disk: &Path) {
    c.guest_arg = 1;
    c.disk = Some(disk.to_path_buf());
    c.disk_mode = DiskMode::Local;
}

/// Records the echo guest's self-test into `log` with `tweak` applied; stops
/// once it serves.
fn record(log: &Path, tweak: impl FnOnce(&mut VmConfig)) -> (RunOutcome, String) {
    let (mut c, console) = common::config("echo", 1);
    tweak(&mut c);
    let nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
    c.devices.push(Box::new(nic));
    let stop = c.stop.clone();
    let sink = LogFileWriter::create(log).unwrap();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let vm = Vm::new(c, RunMode::Record(Box::new(sink)));
        let _ = tx.send(());
        vm.map_err(VmError::from)
            .and_then(|mut vm| vm.run())
            .map_err(|e| e.to_string())
    });
    rx.recv().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text(&console).contains("echo: serving") {
        assert!(
            std::time::Instant::now() < deadline && !thread.is_finished(),
            "the guest never served: {}",
            text(&console)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Release: pairs with the VM loop's Acquire load of the stop flag.
    stop.store(true, Ordering::Release);
    let out = thread.join().unwrap().unwrap();
    (out, text(&console))
}

fn replay(log: &Path, tweak: impl FnOnce(&mut VmConfig)) -> Result<RunOutcome, String> {
    let (mut c, console) = common::config("echo", 1);
    tweak(&mut c);
    let source = LogFileReader::open(log).unwrap();
    let r = Vm::new(c, RunMode::Replay(Box::new(source)))
        .map_err(VmError::from)
        .and_then(|mut vm| vm.run());
    println!("replay console:\n{}", text(&console));
    r.map_err(|e| ftvm_vmm::error_chain(&e))
}

#[test]
fn a_local_disk_replays_onto_its_own_copy_byte_identical_and_a_differing_copy_is_refused() {
    if !kvm_or_skip(
        "a_local_disk_replays_onto_its_own_copy_byte_identical_and_a_differing_copy_is_refused",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orig = original();
    let primary = copy(dir.path(), "primary.img", &orig);
    let backup = copy(dir.path(), "backup.img", &orig);
    let log = dir.path().join("local.log");
    let (recorded, console) = record(&log, |c| local(c, &primary));
    assert!(console.contains("disk: self-test ok, boot 42"), "{console}");
    let after = std::fs::read(&primary).unwrap();
    assert_eq!(
        &after[..8],
        &42u64.to_le_bytes(),
        "the primary wrote its copy"
    );
    assert_ne!(after, orig);

    // Replay onto the second copy: it performs the same writes.
    let replayed = replay(&log, |c| local(c, &backup)).unwrap();
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.state, recorded.state, "state digests");
    assert!(
        std::fs::read(&backup).unwrap() == after,
        "the replayed copy is byte-identical to the primary's"
    );

    // The log carries no write data and only digests of reads: a shared-
    // disk recording of the same run carries 9 reads of up to 4 KiB.
    let shared_disk = copy(dir.path(), "shared.img", &orig);
    let shared_log = dir.path().join("shared.log");
    record(&shared_log, |c| {
        c.guest_arg = 1;
        c.disk = Some(shared_disk.clone());
    });
    let (l, s) = (
        std::fs::metadata(&log).unwrap().len(),
        std::fs::metadata(&shared_log).unwrap().len(),
    );
    println!("log bytes: local {l}, shared {s}");
    assert!(l + 32 * 1024 < s, "local log {l} bytes, shared {s}");

    // A copy whose boot counter differs: the first read is caught.
    let mut other = orig.clone();
    other[..8].copy_from_slice(&40u64.to_le_bytes());
    let differs = copy(dir.path(), "differs.img", &other);
    let e = replay(&log, |c| local(c, &differs)).unwrap_err();
    assert!(
        e.contains("at sector 0") && e.contains("the disk copies differ"),
        "{e}"
    );
    // A copy of another size: refused at INFO, naming both sizes.
    let short = copy(dir.path(), "short.img", &orig[..orig.len() / 2]);
    let e = replay(&log, |c| local(c, &short)).unwrap_err();
    assert!(
        e.contains("short.img") && e.contains("1024 sectors") && e.contains("2048"),
        "{e}"
    );
    // A shared-disk replay of a local log, and the reverse: refused by name.
    let e = replay(&log, |c| c.guest_arg = 1).unwrap_err();
    assert!(e.contains("disk mode is shared"), "{e}");
    let e = replay(&shared_log, |c| local(c, &copy(dir.path(), "x.img", &orig))).unwrap_err();
    assert!(e.contains("disk mode is shared, this side's local"), "{e}");
    // Local mode without a disk file is a setup error.
    let e = replay(&log, |c| c.disk_mode = DiskMode::Local).unwrap_err();
    assert!(e.contains("--disk FILE"), "{e}");
}

/// A reader that stops once `limit` bytes went through, says so on
/// `stalled`, and goes on when `go` is signalled.
struct Gate<R> {
    inner: R,
    passed: u64,
    limit: u64,
    stalled: Option<mpsc::Sender<()>>,
    go: mpsc::Receiver<()>,
}

impl<R: std::io::Read> std::io::Read for Gate<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.passed >= self.limit
            && let Some(tx) = self.stalled.take()
        {
            let _ = tx.send(());
            let _ = self.go.recv();
        }
        let room = if self.stalled.is_some() {
            buf.len().min((self.limit - self.passed) as usize)
        } else {
            buf.len()
        };
        let n = self.inner.read(&mut buf[..room])?;
        self.passed += n as u64;
        Ok(n)
    }
}

/// State transfer in local mode: the sender's disk is copied whole while
/// it runs; the guest's self-test writes land *after* the full copy of the
/// disk was read (the receiver holds the stream there until the guest has
/// written), so they reach the spare only as re-sent chunks. At the join
/// exit the spare's file equals the sender's; the spare then replays the
/// sender's log from the join on its copy to the same state and file.
#[test]
fn a_live_transfer_copies_the_local_disk_and_re_sends_blocks_written_during_the_copy() {
    use common::state::{ChannelSink, ChannelSource};
    use ftvm_vmm::transfer::{PrecopyConfig, pipe, receive, send_live};
    if !kvm_or_skip(
        "a_live_transfer_copies_the_local_disk_and_re_sends_blocks_written_during_the_copy",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orig = original();
    let sender_disk = copy(dir.path(), "sender.img", &orig);
    // The spare's copy starts as garbage of the right size.
    let spare_disk = copy(dir.path(), "spare.img", &vec![0xee; orig.len()]);

    // The sender: live (an unprotected primary), built but not yet running.
    let (mut c, console) = common::config("echo", 1);
    local(&mut c, &sender_disk);
    c.devices
        .push(Box::new(Nic::new("127.0.0.1:0".parse().unwrap()).unwrap()));
    let stop = c.stop.clone();
    let mut vm = Vm::new(c, RunMode::Live).unwrap();
    let control = vm.control();
    let disk = control.local_disk().expect("a local disk").clone();

    let (mut spare, tx) = {
        let (mut c, _) = common::config("echo", 1);
        local(&mut c, &spare_disk);
        let (tx, rx) = mpsc::channel();
        let vm = Vm::new(c, RunMode::Replay(Box::new(ChannelSource::of(rx)))).unwrap();
        (vm, tx)
    };
    let (w, r) = pipe(4);
    let (stalled_tx, stalled) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    // Exactly past the disk records (begin, disk, two 512 KiB extents): the
    // sender then blocks within its first pages (one per record, the pipe
    // holds 4), so it cannot reach the pause before the guest has run.
    let begin = (32 + 34 + "echo".len()).next_multiple_of(8);
    let disk_records = 48 + 2 * (32 + 16 + orig.len() / 2);
    let gate = Gate {
        inner: r,
        passed: 0,
        limit: (begin + disk_records) as u64,
        stalled: Some(stalled_tx),
        go: go_rx,
    };
    let sender = std::thread::spawn(move || {
        let cfg = PrecopyConfig {
            pages_per_record: 1,
            ..PrecopyConfig::default()
        };
        send_live(&control, w, &cfg, move |b| {
            b.record_into(Box::new(ChannelSink::of(tx)))
                .expect("start logging at the join");
        })
        .map(|(report, _)| report)
    });
    let receiver = std::thread::spawn(move || receive(&mut spare, gate).map(|got| (spare, got)));
    stalled
        .recv_timeout(Duration::from_secs(20))
        .expect("the receiver reached the gate");
    assert!(disk.dirty.tracking(), "writes are tracked during the copy");
    // The sender has read the whole disk: now the guest runs its self-test.
    let running = std::thread::spawn(move || vm.run().map_err(|e| e.to_string()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text(&console).contains("echo: serving") {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never served: {}",
            text(&console)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(text(&console).contains("disk: self-test ok, boot 42"));
    go.send(()).unwrap();
    let (mut spare, got) = receiver.join().unwrap().expect("receive");
    let sent = sender.join().unwrap().expect("send");
    println!(
        "join at exit {}: disk sectors sent {} (at the pause {}), received {}, rounds {}",
        sent.ordinal,
        sent.disk_sectors,
        sent.disk_sectors_at_pause,
        got.disk_sectors,
        sent.rounds.len()
    );
    assert_eq!(got.digest, sent.digest);
    assert!(
        sent.disk_sectors > orig.len() as u64 / 512,
        "the self-test's writes came after the full copy and were re-sent (join at exit {})",
        sent.ordinal
    );
    assert!(!disk.dirty.tracking(), "tracking ends with the transfer");
    // The echo guest writes nothing after its self-test: the sender's file
    // now is its file at the join exit.
    let at_join = std::fs::read(&sender_disk).unwrap();
    assert_eq!(&at_join[..8], &42u64.to_le_bytes());
    assert!(
        std::fs::read(&spare_disk).unwrap() == at_join,
        "the spare's disk equals the sender's at the join exit"
    );
    assert!(
        sent.disk_sectors > orig.len() as u64 / 512,
        "the written chunk was re-sent"
    );
    assert_eq!(got.disk_sectors, sent.disk_sectors);

    // The spare follows the sender's log from the join on its own copy.
    let backup = std::thread::spawn(move || spare.run());
    std::thread::sleep(Duration::from_millis(100));
    // Release: pairs with the VM loop's Acquire load of the stop flag.
    stop.store(true, Ordering::Release);
    let original_out = running.join().unwrap().unwrap();
    let replayed = backup.join().unwrap().expect("the spare's replay");
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.state, original_out.state);
    assert!(std::fs::read(&spare_disk).unwrap() == std::fs::read(&sender_disk).unwrap());
}

/// A local-disk stream refused by name: a block beyond the disk, a disk of
/// another size, a shared-disk receiver, and a local receiver sent no disk.
#[test]
fn bad_local_disk_streams_are_refused_by_name() {
    use ftvm_vmm::persist::STATE_VERSION;
    use ftvm_vmm::transfer::record::Begin;
    use ftvm_vmm::transfer::{Record, RecordWriter, receive};
    if !kvm_or_skip("bad_local_disk_streams_are_refused_by_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orig = original();
    let sectors = orig.len() as u64 / 512;
    let mine = copy(dir.path(), "mine.img", &orig);
    let spare = |disk: Option<&Path>| {
        let (mut c, _) = common::config("echo", 1);
        if let Some(d) = disk {
            local(&mut c, d);
        }
        Vm::new(
            c,
            RunMode::Replay(Box::new(common::state::ChannelSource::of(
                mpsc::channel().1,
            ))),
        )
        .unwrap()
    };
    let stream = |vm: &Vm, recs: &[Record]| {
        let id = vm.identity();
        let mut w = RecordWriter::new(Vec::new());
        w.write(&Record::Begin(Begin {
            state_version: STATE_VERSION,
            page_size: 4096,
            mem_bytes: id.mem_bytes,
            image_digest: id.image_digest,
            attempt: 1,
            guest: id.guest.clone(),
        }))
        .unwrap();
        for r in recs {
            w.write(r).unwrap();
        }
        w.into_inner()
    };
    let blocks = |sector: u64, n: usize| Record::DiskBlocks {
        round: 0,
        sector,
        data: vec![1; n * 512],
    };
    let mut vm = spare(Some(&mine));
    let e = |vm: &mut Vm, recs: &[Record]| {
        let bytes = stream(vm, recs);
        ftvm_vmm::error_chain(&receive(vm, bytes.as_slice()).unwrap_err())
    };
    let got = e(&mut vm, &[Record::Disk { sectors }, blocks(sectors - 1, 2)]);
    assert!(
        got.contains("record 2 (disk-blocks): block at sector 2047 (2 sectors) is beyond the disk of 2048 sectors"),
        "{got}"
    );
    let got = e(&mut vm, &[Record::Disk { sectors: 4096 }]);
    assert!(
        got.contains("disk size mismatch: the sender's disk has 4096 sectors, this VM's disk file")
            && got.contains("mine.img has 2048"),
        "{got}"
    );
    let got = e(&mut vm, &[blocks(0, 1)]);
    assert!(got.contains("disk blocks before the disk record"), "{got}");
    let mut shared = spare(None);
    let got = e(&mut shared, &[Record::Disk { sectors }]);
    assert!(got.contains("this VM's disk mode is shared"), "{got}");
    assert_eq!(
        std::fs::read(&mine).unwrap()[2047 * 512],
        orig[2047 * 512],
        "nothing written beyond"
    );

    // A whole stream of a VM without a local disk (a snapshot of a
    // running echo VM) into a local-disk receiver.
    let (mut c, _) = common::config("echo", 0);
    c.devices
        .push(Box::new(Nic::new("127.0.0.1:0".parse().unwrap()).unwrap()));
    let stop = c.stop.clone();
    let mut running = Vm::new(c, RunMode::Live).unwrap();
    let control = running.control();
    let t = std::thread::spawn(move || running.run().map_err(|e| e.to_string()));
    let snap = control
        .call_at_next_exit(|b| b.snapshot())
        .wait(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    // Release: pairs with the VM loop's Acquire load of the stop flag.
    stop.store(true, Ordering::Release);
    t.join().unwrap().unwrap();
    let bytes = ftvm_vmm::transfer::write_snapshot(&snap, Vec::new()).unwrap();
    let got = ftvm_vmm::error_chain(&receive(&mut vm, bytes.as_slice()).unwrap_err());
    assert!(
        got.contains("this VM's disk mode is local") && got.contains("the sender sent no disk"),
        "{got}"
    );
}

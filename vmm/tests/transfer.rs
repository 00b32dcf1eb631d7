//! Live state transfer between two VMs of one process (`transfer`): the
//! kv guest under client load is pre-copied into a new VM that then replays
//! the original's log from the join point to the same final digest; and
//! every kind of bad input is refused with an error naming it, after which
//! the same receiving VM accepts a good attempt.

mod common;

use std::time::Duration;

use common::state::*;
use common::*;
use ftvm_vmm::error_chain;
use ftvm_vmm::persist::{Section, VmSnapshot};
use ftvm_vmm::transfer::record::{Begin, RecordKind};
use ftvm_vmm::transfer::{
    PrecopyConfig, ReadRecordError, ReceiveStateError, Record, RecordReader, RecordWriter, pipe,
    receive, send_live, write_snapshot,
};
use ftvm_vmm::{StopReason, Vm};

fn live_transfer_under_load(mem_mib: u32) {
    let rec = KvRecording::start(mem_mib);
    let load = load(rec.addr, 40_000, 9);
    wait_for_exit(&rec.control, 1_000);

    let (mut backup, tx) = {
        let (mut c, _) = config("kv", 0);
        c.mem_mib = mem_mib;
        let (tx, rx) = std::sync::mpsc::channel();
        let vm = Vm::new(
            c,
            ftvm_vmm::RunMode::Replay(Box::new(ChannelSource::of(rx))),
        )
        .unwrap();
        (vm, tx)
    };
    let (w, r) = pipe(64);
    let control = rec.control.clone();
    let sender = std::thread::spawn(move || {
        send_live(&control, w, &PrecopyConfig::default(), |_| {}).map(|(report, _)| report)
    });
    let received = receive(&mut backup, r).expect("receive");
    let sent = sender.join().unwrap().expect("send");
    let load = load.join().unwrap();
    let log = rec.log.clone();
    let original = rec.stop();

    let pause = sent.pause.expect("the guest exited after the pause");
    println!(
        "{mem_mib} MiB: join at exit {}, {} rounds, pages per round {:?}, {} bytes, total {:?}, pause {pause:?} (stop-and-copy {:?}); load {} ops {:.0} ops/s; original {} exits",
        sent.ordinal,
        sent.rounds.len(),
        sent.rounds
            .iter()
            .map(|r| r.pages + r.zero_pages)
            .collect::<Vec<_>>(),
        sent.bytes,
        sent.total,
        sent.stop_copy,
        load.ops,
        load.ops_per_sec(),
        original.exits,
    );
    assert_eq!(received.digest, sent.digest, "join digests");
    assert_eq!(received.ordinal, sent.ordinal);
    assert_eq!(received.bytes, sent.bytes);
    assert_eq!(
        sent.rounds[0].pages + sent.rounds[0].zero_pages,
        u64::from(mem_mib) * 256
    );
    assert!(
        original.exits > sent.ordinal + 500,
        "the load continued after the join"
    );

    // The new VM continues exactly as the original did.
    for e in entries_after(&log, sent.ordinal) {
        tx.send(e).unwrap();
    }
    drop(tx);
    let replayed = backup.run().expect("replay from the join point");
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.exits, original.exits);
    assert_eq!(replayed.state, original.state);

    // Pre-copy took the dirty log while the original recorded: its
    // checkpoints still match a replay of the whole log (the tracker hid no
    // page from the digest).
    let (mut full, tx) = replayer_sized(mem_mib);
    for e in entries_after(&log, 0) {
        tx.send(e).unwrap();
    }
    drop(tx);
    let whole = full.run().expect("replay of the whole log");
    assert_eq!(whole.state, original.state);
    assert_eq!(whole.checkpoints, original.checkpoints);
}

fn replayer_sized(mem_mib: u32) -> (Vm, std::sync::mpsc::Sender<ftvm_vmm::LogEntry>) {
    let (mut c, _) = config("kv", 0);
    c.mem_mib = mem_mib;
    let (tx, rx) = std::sync::mpsc::channel();
    let vm = Vm::new(
        c,
        ftvm_vmm::RunMode::Replay(Box::new(ChannelSource::of(rx))),
    )
    .unwrap();
    (vm, tx)
}

#[test]
fn live_precopy_under_kv_load_joins_and_replays_to_the_same_digest() {
    if !kvm_or_skip("live_precopy_under_kv_load_joins_and_replays_to_the_same_digest") {
        return;
    }
    live_transfer_under_load(64);
}

/// The re-protection flow of issue 9 in one process: an unprotected (live)
/// kv primary under load transfers its state to a spare and starts logging
/// to it at exactly the join exit (`on_join`); the spare replays that log
/// while the primary runs, and both end in the same state.
#[test]
fn an_unprotected_primary_starts_logging_at_the_join_and_the_spare_follows() {
    if !kvm_or_skip("an_unprotected_primary_starts_logging_at_the_join_and_the_spare_follows") {
        return;
    }
    let primary = KvRecording::start_live(64);
    let load = load(primary.addr, 20_000, 13);
    wait_for_exit(&primary.control, 800);
    let (mut spare, tx) = replayer("kv");
    let (w, r) = pipe(64);
    let control = primary.control.clone();
    let sender = std::thread::spawn(move || {
        send_live(&control, w, &PrecopyConfig::default(), move |b| {
            b.record_into(Box::new(ChannelSink::of(tx)))
                .expect("start logging at the join");
        })
        .map(|(report, _)| report)
    });
    let got = receive(&mut spare, r).expect("receive");
    let sent = sender.join().unwrap().expect("send");
    assert_eq!(got.digest, sent.digest);
    assert_eq!(
        (got.next_seq, sent.next_seq),
        (1, 1),
        "the new log starts at seq 1"
    );
    // The spare is a backup now: it replays one step behind the primary.
    let backup = std::thread::spawn(move || spare.run());
    load.join().unwrap();
    let original = primary.stop();
    let replayed = backup.join().unwrap().expect("backup replay");
    println!(
        "join at exit {}, pause {:?}; primary {} exits, backup {} exits",
        sent.ordinal, sent.pause, original.exits, replayed.exits
    );
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.exits, original.exits);
    assert_eq!(replayed.state, original.state);
}

/// A snapshot stream of an idle kv VM and a fresh receiving VM.
fn idle_kv_stream() -> (VmSnapshot, Vec<u8>) {
    let rec = KvRecording::start(64);
    let snap = rec
        .control
        .call_at_next_exit(|b| b.snapshot())
        .wait(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    rec.stop();
    let stream = write_snapshot(&snap, Vec::new()).unwrap();
    (snap, stream)
}

fn records(stream: &[u8]) -> Vec<Record> {
    let mut r = RecordReader::new(stream);
    let mut v = Vec::new();
    loop {
        match r.read() {
            Ok(rec) => v.push(rec),
            Err(ReadRecordError::Ended { .. }) => return v,
            Err(e) => panic!("{e}"),
        }
    }
}

fn rewrite(records: &[Record]) -> Vec<u8> {
    let mut w = RecordWriter::new(Vec::new());
    for r in records {
        w.write(r).unwrap();
    }
    w.into_inner()
}

#[test]
fn bad_input_is_refused_by_name_and_the_next_attempt_succeeds() {
    if !kvm_or_skip("bad_input_is_refused_by_name_and_the_next_attempt_succeeds") {
        return;
    }
    let (snap, good) = idle_kv_stream();
    let recs = records(&good);
    let (mut vm, _tx) = replayer("kv");
    let mut attempt = |name: &str, bytes: &[u8], want: &dyn Fn(&ReceiveStateError) -> bool| {
        let e = receive(&mut vm, bytes).expect_err(name);
        let msg = error_chain(&e);
        println!("{name}: {msg}");
        assert!(want(&e), "{name}: {msg}");
        // The same VM takes the next (good) attempt.
        let ok = receive(&mut vm, good.as_slice()).expect("good attempt after a bad one");
        assert_eq!(ok.digest, snap.digest, "{name}");
    };

    // A stream cut at any point: between records, inside a header, inside
    // a payload, just before End.
    let mut ends = vec![0usize];
    let mut at = 0;
    for _ in &recs {
        let len = u32::from_le_bytes(good[at..at + 4].try_into().unwrap()) as usize;
        at += len;
        ends.push(at);
    }
    let cuts = [
        0,
        5,
        ends[1],
        ends[1] + 20,
        ends[2] + 4096,
        ends[ends.len() - 2],
        good.len() - 1,
    ];
    for cut in cuts {
        attempt(&format!("cut at byte {cut}"), &good[..cut], &|e| {
            let m = error_chain(e);
            matches!(e, ReceiveStateError::Read(_))
                && (m.contains("stream ended after") || m.contains("stream was cut inside record"))
        });
    }

    // A page beyond guest memory.
    let pages = 64 * 256u32;
    let mut bad = recs.clone();
    let i = bad
        .iter()
        .position(|r| matches!(r, Record::Pages { .. }))
        .unwrap();
    if let Record::Pages { index, .. } = &mut bad[i] {
        index[0] = pages + 5;
    }
    attempt("page beyond memory", &rewrite(&bad), &|e| {
        error_chain(e).contains(&format!(
            "(pages): page {} is beyond guest memory of {pages} pages",
            pages + 5
        ))
    });

    // Another state version.
    let mut bad = recs.clone();
    if let Record::Begin(b) = &mut bad[0] {
        b.state_version = 3;
    }
    attempt("another version", &rewrite(&bad), &|e| {
        error_chain(e).ends_with("state version 3, this build reads 1")
    });

    // Another guest.
    let mut bad = recs.clone();
    if let Record::Begin(Begin { guest, .. }) = &mut bad[0] {
        *guest = "echo".into();
    }
    attempt("another guest", &rewrite(&bad), &|e| {
        let m = error_chain(e);
        m.contains("state is for guest echo") && m.contains("this VM runs kv")
    });

    // A VM of another guest.
    let (mut echo, _tx) = replayer("echo");
    let e = receive(&mut echo, good.as_slice()).unwrap_err();
    assert!(
        error_chain(&e).contains("state is for guest kv")
            && error_chain(&e).contains("this VM runs echo"),
        "{e}"
    );

    // Another memory size.
    let mut bad = recs.clone();
    if let Record::Begin(b) = &mut bad[0] {
        b.mem_bytes = 128 << 20;
    }
    attempt("another size", &rewrite(&bad), &|e| {
        error_chain(e)
            .contains("state is for 134217728 bytes of guest memory, this VM has 67108864")
    });

    // A digest mismatch at the join: the sender's vCPU digest, and one
    // page changed in flight (CRC recomputed, so only the digest sees it).
    let mut bad = recs.clone();
    if let Some(Record::End(e)) = bad.last_mut() {
        e.digest.cpu_digest ^= 1;
        e.digest.digest ^= 1;
    }
    attempt("cpu digest mismatch", &rewrite(&bad), &|e| {
        matches!(e, ReceiveStateError::Digest { .. })
            && error_chain(e).contains("state digest at exit")
    });
    let mut bad = recs.clone();
    if let Record::Pages { data, .. } = &mut bad[i] {
        data[100] ^= 0x40;
    }
    attempt("memory digest mismatch", &rewrite(&bad), &|e| {
        matches!(e, ReceiveStateError::MemoryDigest { .. })
    });

    // A component field the state lacks, named with its component.
    let mut bad = recs.clone();
    let v = bad
        .iter()
        .position(|r| matches!(r, Record::VcpuState(_)))
        .unwrap();
    if let Record::VcpuState(b) = &mut bad[v] {
        let s = Section::decode(b).unwrap();
        let mut t = Section::new(&s.id, s.version);
        for n in s.names().filter(|n| *n != "sregs") {
            t.put_bytes(n, s.bytes(n).unwrap());
        }
        b.clear();
        t.encode(b);
    }
    attempt("missing field", &rewrite(&bad), &|e| {
        error_chain(e).ends_with("restore vcpu: field sregs: missing")
    });

    // A page never sent.
    let mut bad = recs.clone();
    let z = bad
        .iter()
        .position(|r| matches!(r, Record::ZeroPages { .. }))
        .unwrap();
    if let Record::ZeroPages { runs, .. } = &mut bad[z] {
        let last = runs.last_mut().unwrap();
        last.1 -= 1;
    }
    attempt("page never sent", &rewrite(&bad), &|e| {
        matches!(e, ReceiveStateError::Incomplete { missing: 1, .. })
    });

    // A record out of place: pages after the state records began.
    let mut bad = recs.clone();
    let extra = bad[i].clone();
    let n = bad.len();
    bad.insert(n - 1, extra);
    attempt("pages after state", &rewrite(&bad), &|e| {
        matches!(
            e,
            ReceiveStateError::Record {
                kind: RecordKind::Pages,
                ..
            }
        )
    });

    // Garbage.
    attempt(
        "not a stream",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456",
        &|e| error_chain(e).contains("not a state-transfer record"),
    );
}

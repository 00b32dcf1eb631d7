//! A spare waiting on a real TCP socket (`ftvm_ft::spare`): a cut stream,
//! a stream that is not a transfer and one whose join digest is not its
//! state are refused, each naming what was wrong, and the spare keeps
//! waiting; the next whole attempt (a snapshot of
//! a running kv VM) is received with the sender's join digest.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::transfer::{
    PrecopyConfig, ReadRecordError, Record, RecordReader, RecordWriter, write_snapshot,
};
use ftvm_vmm::{ConsoleTarget, ExitBoundary, RunMode, Vm, VmConfig};

fn kv_config() -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let settings = ftvm_tuning::VmmSettings::default();
    let mut c = VmConfig::new("kv", &settings).expect("embedded guest");
    let console = Arc::new(Mutex::new(Vec::new()));
    c.console = ConsoleTarget::Capture(console.clone());
    let nic = Nic::new("127.0.0.1:0".parse().unwrap()).expect("nic");
    c.devices.push(Box::new(nic));
    (c, console)
}

/// A kv VM running unlogged on its own thread, serving.
struct LiveKv {
    stop: Arc<std::sync::atomic::AtomicBool>,
    control: ftvm_vmm::VmControl,
    live: std::thread::JoinHandle<Result<ftvm_vmm::RunOutcome, String>>,
}

fn start_live_kv() -> LiveKv {
    let (c, console) = kv_config();
    let stop = c.stop.clone();
    let vm = Vm::new(c, RunMode::Live).expect("live VM");
    let control = vm.control();
    let live = std::thread::spawn(move || {
        let mut vm = vm;
        vm.run().map_err(|e| ftvm_vmm::error_chain(&e))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&console.lock().unwrap()).contains("kv: serving") {
        assert!(Instant::now() < deadline, "kv did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    LiveKv {
        stop,
        control,
        live,
    }
}

/// `stream` re-written with the End record's state digest changed (CRCs
/// recomputed: only the digest check sees it).
fn with_other_join_digest(stream: &[u8]) -> Vec<u8> {
    let mut r = RecordReader::new(stream);
    let mut w = RecordWriter::new(Vec::new());
    loop {
        match r.read() {
            Ok(mut rec) => {
                if let Record::End(e) = &mut rec {
                    e.digest.cpu_digest ^= 1;
                    e.digest.digest ^= 1;
                }
                w.write(&rec).unwrap();
            }
            Err(ReadRecordError::Ended { .. }) => return w.into_inner(),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_spare_refuses_bad_streams_by_name_and_takes_the_next_good_one() {
    if !ftvm_vmm::kvm_or_skip("a_spare_refuses_bad_streams_by_name_and_takes_the_next_good_one") {
        return;
    }
    // The live side: a kv VM running unlogged; its state at an exit boundary.
    let LiveKv {
        stop,
        control,
        live,
    } = start_live_kv();
    let snap = control
        .call_at_next_exit(|b| b.snapshot())
        .wait(Duration::from_secs(10))
        .expect("boundary")
        .expect("snapshot");
    let good = write_snapshot(&snap, Vec::new()).expect("stream");
    let mismatch = with_other_join_digest(&good);

    // The spare: a fresh VM for the same guest, waiting on a socket.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, _) = kv_config();
    let spare = std::thread::spawn(move || {
        let mut vm = Vm::new(c, RunMode::Live).expect("spare VM");
        let mut refused = Vec::new();
        let joined = ftvm_ft::spare::wait_for_state(
            &listener,
            &mut vm,
            Duration::from_secs(5),
            &|| false,
            |peer, e| refused.push(format!("{peer}: {}", ftvm_vmm::error_chain(e))),
        );
        (joined.map_err(|e| ftvm_vmm::error_chain(&e)), refused)
    });

    // A stream cut in the middle, then bytes that are no transfer at all.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&good[..good.len() / 2]).unwrap();
    drop(s);
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: spare\r\nUser-Agent: not-a-transfer-stream\r\n\r\n")
        .unwrap();
    drop(s);
    // A whole stream whose join digest is not the state it carries.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&mismatch).unwrap();
    drop(s);
    // The whole stream.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&good).unwrap();

    let (joined, refused) = spare.join().unwrap();
    let joined = joined.expect("the good attempt joins");
    println!("refused: {refused:#?}");
    assert_eq!(joined.refused, 3, "{refused:?}");
    assert_eq!(refused.len(), 3);
    assert!(refused[0].contains("cut"), "{}", refused[0]);
    assert!(
        refused[1].contains("receive state") && !refused[1].contains("cut"),
        "{}",
        refused[1]
    );
    assert!(
        refused[2].contains("state digest at exit"),
        "{}",
        refused[2]
    );
    assert_eq!(joined.report.bytes, good.len() as u64);
    assert_eq!(joined.report.digest, snap.digest, "join digests");
    drop(s);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    live.join()
        .unwrap()
        .expect("the live VM kept running and stopped on request");
}

/// A spare's registration is a key under the VM at a file arbiter (a real
/// directory) while it lives, and gone after.
#[test]
fn a_registered_spare_is_listed_at_the_arbiter_until_dropped() {
    let dir = std::env::temp_dir().join(format!("ftvm-spare-arbiter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let arbiter: Arc<dyn ftvm_arbiter::Arbiter> =
        Arc::from(ftvm_arbiter::open(&format!("file:{}", dir.display())).expect("file arbiter"));
    let reg = ftvm_ft::spare::SpareRegistration::register(arbiter.clone(), "vm-a", "host-b:7100")
        .expect("register");
    assert_eq!(reg.addr(), "host-b:7100");
    assert_eq!(
        arbiter.spares("vm-a").unwrap(),
        vec!["host-b:7100".to_string()]
    );
    assert!(arbiter.spares("vm-b").unwrap().is_empty());
    drop(reg);
    assert!(arbiter.spares("vm-a").unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

fn nothing_at_the_join(_: &mut ExitBoundary<'_>) {}

/// The live side offers its state to three spares in turn: one refuses the
/// connection, one is killed (its socket closed) in the middle of the
/// pre-copy, and the third takes it with the sender's join digest. The
/// live VM runs throughout and after.
#[test]
fn the_live_side_skips_a_dead_and_a_cut_spare_and_joins_the_next() {
    if !ftvm_vmm::kvm_or_skip("the_live_side_skips_a_dead_and_a_cut_spare_and_joins_the_next") {
        return;
    }
    let LiveKv {
        stop,
        control,
        live,
    } = start_live_kv();

    // A port nobody listens on.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    // A spare killed mid-transfer: it reads 64 KiB, then its socket closes.
    let cut = TcpListener::bind("127.0.0.1:0").unwrap();
    let cut_addr = cut.local_addr().unwrap().to_string();
    let cutter = std::thread::spawn(move || {
        let (mut s, _) = cut.accept().unwrap();
        let mut buf = vec![0; 64 << 10];
        s.read_exact(&mut buf).unwrap();
    });
    // A real spare.
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let good_addr = good.local_addr().unwrap().to_string();
    let (c, _) = kv_config();
    let spare = std::thread::spawn(move || {
        let mut vm = Vm::new(c, RunMode::Live).expect("spare VM");
        ftvm_ft::spare::wait_for_state(&good, &mut vm, Duration::from_secs(5), &|| false, |_, _| {})
            .map(|j| j.report)
            .map_err(|e| ftvm_vmm::error_chain(&e))
    });

    let spares = vec![dead_addr.clone(), cut_addr.clone(), good_addr.clone()];
    let offered = ftvm_ft::spare::offer_state(
        &control,
        &spares,
        Duration::from_secs(1),
        Duration::from_secs(5),
        4 << 20,
        &PrecopyConfig::default(),
        |_| nothing_at_the_join,
    )
    .expect("the third spare takes the state");
    cutter.join().unwrap();
    let received = spare.join().unwrap().expect("the spare joined");
    println!("skipped: {:#?}", offered.failed);
    assert_eq!(offered.spare, good_addr);
    assert_eq!(offered.failed.len(), 2, "{:?}", offered.failed);
    assert!(
        offered.failed[0].starts_with(&dead_addr),
        "{}",
        offered.failed[0]
    );
    assert!(
        offered.failed[1].starts_with(&cut_addr),
        "{}",
        offered.failed[1]
    );
    assert!(
        offered.failed[1].contains("send state"),
        "{}",
        offered.failed[1]
    );
    assert_eq!(received.digest, offered.report.digest, "join digests");
    assert_eq!(received.ordinal, offered.report.ordinal);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    live.join()
        .unwrap()
        .expect("the live VM ran on and stopped on request");
}

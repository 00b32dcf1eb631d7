//! End to end: the kv and echo guests behind the NIC, driven by real UDP
//! clients on loopback, recorded to a log file and replayed offline to the
//! identical state digest.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use ftvm_kvproto::load::{LoadConfig, run_load};
use ftvm_vmm::devices::net::{Nic, NicStats};
use ftvm_vmm::{
    ConsoleTarget, LogFileReader, LogFileWriter, RunMode, RunOutcome, StopReason, Vm, VmConfig,
    kvm_or_skip,
};

fn config(guest: &str) -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let mut c = VmConfig::new(guest, &ftvm_tuning::VmmSettings::default()).expect("embedded guest");
    let buf = Arc::new(Mutex::new(Vec::new()));
    c.console = ConsoleTarget::Capture(buf.clone());
    if let Ok(cpl) = std::env::var("FTVM_TEST_CPL") {
        c.guest_cpl = cpl.parse().expect("FTVM_TEST_CPL is 0 or 3");
    }
    (c, buf)
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// A recording VM on its own thread, stopped by [`Recording::stop`].
struct Recording {
    addr: SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    nic: Arc<NicStats>,
    console: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<Result<RunOutcome, String>>,
}

impl Recording {
    fn start(guest: &str, log: &Path) -> Recording {
        Recording::start_with(guest, log, |_| {})
    }

    fn start_with(guest: &str, log: &Path, tweak: impl FnOnce(&mut VmConfig)) -> Recording {
        let (mut c, console) = config(guest);
        tweak(&mut c);
        let nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = nic.local_addr().unwrap();
        let stats = nic.stats();
        c.devices.push(Box::new(nic));
        let stop = c.stop.clone();
        let sink = LogFileWriter::create(log).unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let vm = Vm::new(c, RunMode::Record(Box::new(sink)));
            let _ = tx.send(());
            vm.map_err(ftvm_vmm::VmError::from)
                .and_then(|mut vm| vm.run())
                .map_err(|e| e.to_string())
        });
        rx.recv().unwrap();
        Recording {
            addr,
            stop,
            nic: stats,
            console,
            thread,
        }
    }

    fn stop(self) -> RunOutcome {
        // Release: pairs with the VM loop's Acquire load of the stop flag.
        self.stop.store(true, Ordering::Release);
        let out = self.thread.join().unwrap();
        println!("{}", text(&self.console));
        out.unwrap()
    }
}

fn replay(guest: &str, log: &Path) -> RunOutcome {
    replay_with(guest, log, |_| {})
}

fn replay_with(guest: &str, log: &Path, tweak: impl FnOnce(&mut VmConfig)) -> RunOutcome {
    let (mut c, console) = config(guest);
    tweak(&mut c);
    // Replay registers the NIC and block device itself, detached (no
    // socket, no file): packets and read data come from the log.
    let source = LogFileReader::open(log).unwrap();
    let r = Vm::new(c, RunMode::Replay(Box::new(source)))
        .map_err(ftvm_vmm::VmError::from)
        .and_then(|mut vm| vm.run());
    println!("replay console:\n{}", text(&console));
    r.unwrap()
}

#[test]
fn kv_ten_thousand_ops_record_and_replay_to_the_same_digest() {
    if !kvm_or_skip("kv_ten_thousand_ops_record_and_replay_to_the_same_digest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kv.log");
    let rec = Recording::start("kv", &log);
    let mut cfg = LoadConfig::new(rec.addr);
    cfg.clients = 16;
    cfg.ops = 10_000;
    cfg.keys = 8;
    cfg.seed = 42;
    let load = run_load(&cfg);
    let nic = Arc::clone(&rec.nic);
    let recorded = rec.stop();
    let load = load.unwrap();
    println!(
        "load: {} ops {:.0} ops/s p50 {:.1} µs p99 {:.1} µs retries {}; VM: {} exits, {} rx batches, {} rx packets, {} tx packets, log {} bytes",
        load.ops,
        load.ops_per_sec(),
        load.latency_us(0.5),
        load.latency_us(0.99),
        load.retries,
        recorded.exits,
        nic.rx_batches.get(),
        nic.rx_packets.get(),
        nic.tx_packets.get(),
        std::fs::metadata(&log).unwrap().len(),
    );
    assert_eq!(load.ops, 10_000);
    assert_eq!(load.errors, 0, "{:?}", load.first_errors);
    assert_eq!(recorded.reason, StopReason::Requested);
    // Every request reached the guest and every reply left it.
    assert!(nic.rx_packets.get() >= 10_000);
    assert!(nic.tx_packets.get() >= 10_000);

    let replayed = replay("kv", &log);
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.exits, recorded.exits);
    assert_eq!(replayed.state, recorded.state, "final state digest differs");
    assert!(replayed.checkpoints >= 1);
}

#[test]
fn echo_returns_each_datagram_and_replays() {
    if !kvm_or_skip("echo_returns_each_datagram_and_replays") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo.log");
    let rec = Recording::start("echo", &log);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    // One at a time, then a burst of 64 that the NIC delivers in batches.
    for i in 0..20u32 {
        let msg = format!("ping {i}");
        sock.send_to(msg.as_bytes(), rec.addr).unwrap();
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (msg.as_bytes(), rec.addr));
    }
    for i in 0..64u32 {
        sock.send_to(&vec![i as u8; 1 + i as usize * 20], rec.addr)
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..64 {
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        got.push(buf[..n].to_vec());
    }
    got.sort_by_key(Vec::len);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &vec![i as u8; 1 + i * 20]);
    }
    let recorded = rec.stop();
    let replayed = replay("echo", &log);
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.state, recorded.state);
}

/// Waits until the console shows `line` (or panics after 20 s).
fn wait_for_console(console: &Arc<Mutex<Vec<u8>>>, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !text(console).contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "console never showed {line:?}: {}",
            text(console)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn block_device_reads_come_from_the_log_and_writes_reach_the_file() {
    use ftvm_vmm::devices::block::Block;
    if !kvm_or_skip("block_device_reads_come_from_the_log_and_writes_reach_the_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("disk.log");
    let disk = dir.path().join("disk.img");
    let mut image = vec![0u8; 1 << 20];
    image[..8].copy_from_slice(&41u64.to_le_bytes());
    std::fs::write(&disk, &image).unwrap();
    let block = Block::open(&disk).unwrap();
    let stats = block.stats();
    let rec = Recording::start_with("echo", &log, |c| {
        c.guest_arg = 1;
        c.devices.push(Box::new(block));
    });
    wait_for_console(&rec.console, "echo: serving");
    let console = text(&rec.console);
    let recorded = rec.stop();
    assert!(
        console.contains("disk: 2048 sectors of 512 bytes"),
        "{console}"
    );
    assert!(console.contains("disk: self-test ok, boot 42"), "{console}");
    // Two batches of writes and reads, several requests per doorbell.
    assert_eq!(stats.doorbells.get(), 3);
    assert_eq!(stats.writes.get(), 9);
    assert_eq!(stats.reads.get(), 9);
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(&after[..8], &42u64.to_le_bytes());
    assert_eq!(after[512 + 1], (7 + 42) as u8, "pattern block 0 byte 1");

    // Replay without the file: reads come from the log.
    let replayed = replay_with("echo", &log, |c| c.guest_arg = 1);
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.state, recorded.state);
}

#[test]
fn kv_guest_answers_a_retry_from_its_table_and_refuses_bad_datagrams() {
    use ftvm_kvproto::{MAX_DATAGRAM, Op, Reply, Request, Status};
    if !kvm_or_skip("kv_guest_answers_a_retry_from_its_table_and_refuses_bad_datagrams") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kv-retry.log");
    let rec = Recording::start("kv", &log);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let call = |d: &[u8]| -> Vec<u8> {
        sock.send_to(d, rec.addr).unwrap();
        let mut buf = [0u8; MAX_DATAGRAM];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    };
    let append = |no: u64| {
        let mut d = [0u8; MAX_DATAGRAM];
        let req = Request {
            op: Op::Append,
            client_id: 5,
            request_no: no,
            key: b"k",
            value: b"ab",
            new_value: b"",
        };
        let n = req.encode(&mut d).unwrap();
        d[..n].to_vec()
    };
    let first = call(&append(1));
    assert_eq!(Reply::decode(&first).unwrap().value, b"ab");
    // The same request again: the identical reply, not a second append.
    assert_eq!(call(&append(1)), first);
    let second = call(&append(2));
    assert_eq!(Reply::decode(&second).unwrap().value, b"abab");
    // An older number is stale.
    assert_eq!(
        Reply::decode(&call(&append(1))).unwrap().status,
        Status::Stale
    );
    // A corrupt op byte: BAD_REQUEST addressed to the same ids.
    let mut bad = append(3);
    bad[4] = 77;
    let r = call(&bad);
    let r = Reply::decode(&r).unwrap();
    assert_eq!(
        (r.status, r.client_id, r.request_no),
        (Status::BadRequest, 5, 3)
    );
    let recorded = rec.stop();
    let replayed = replay("kv", &log);
    assert_eq!(replayed.state, recorded.state);
}

//! End to end: the dns guest behind the NIC, driven by datagrams built with
//! hickory-proto and by the real `dig`, `nsupdate` and `dnsperf`, recorded
//! to a log file and replayed offline to the identical state digest.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ftvm_dnsproto::dnsperf::{self, DnsperfConfig, query_file, update_file};
use ftvm_dnsproto::tools;
use ftvm_testkit::{command_on_path, require_or_skip};
use ftvm_vmm::devices::net::{Nic, NicStats};
use ftvm_vmm::{
    ConsoleTarget, LogFileReader, LogFileWriter, RunMode, RunOutcome, StopReason, Vm, VmConfig,
    kvm_or_skip,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

fn config(arg: u64) -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let mut c = VmConfig::new("dns", &ftvm_tuning::VmmSettings::default()).expect("embedded guest");
    c.guest_arg = arg;
    let buf = Arc::new(Mutex::new(Vec::new()));
    c.console = ConsoleTarget::Capture(buf.clone());
    (c, buf)
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// A recording dns VM on its own thread, serving once its console says so.
struct Recording {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    nic: Arc<NicStats>,
    console: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<Result<RunOutcome, String>>,
}

impl Recording {
    fn start(arg: u64, log: &Path) -> Recording {
        let (mut c, console) = config(arg);
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while !text(&console).contains("dns: serving") {
            assert!(
                Instant::now() < deadline && !thread.is_finished(),
                "the dns guest never served: {}",
                text(&console)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

fn replay(arg: u64, log: &Path) -> RunOutcome {
    let (c, console) = config(arg);
    let source = LogFileReader::open(log).unwrap();
    let r = Vm::new(c, RunMode::Replay(Box::new(source)))
        .map_err(ftvm_vmm::VmError::from)
        .and_then(|mut vm| vm.run());
    println!("replay console:\n{}", text(&console));
    r.unwrap()
}

/// Checks that the replay reached the primary's final state.
fn assert_same(recorded: &RunOutcome, log: &Path, arg: u64) {
    assert_eq!(recorded.reason, StopReason::Requested);
    let replayed = replay(arg, log);
    assert_eq!(replayed.reason, StopReason::PrimaryStopped);
    assert_eq!(replayed.exits, recorded.exits);
    assert_eq!(replayed.state, recorded.state, "final state digest differs");
    println!(
        "recorded and replayed: {} exits, state digest {:016x}, log {} bytes",
        recorded.exits,
        recorded.state.digest,
        std::fs::metadata(log).unwrap().len()
    );
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn query(id: u16, qname: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(name(qname), t));
    m.to_vec().unwrap()
}

fn add_update(id: u16, owner: &str, ip: [u8; 4]) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Update);
    m.add_query(Query::query(name("example.test."), RecordType::SOA));
    // Only while the name does not exist: a second application would fail.
    let mut absent = Record::update0(name(owner), 0, RecordType::ANY);
    absent.dns_class = DNSClass::NONE;
    m.add_answer(absent);
    m.add_authority(Record::from_rdata(name(owner), 60, RData::A(A(ip.into()))));
    m.to_vec().unwrap()
}

/// One datagram and its reply (5 s).
fn call(sock: &UdpSocket, to: SocketAddr, d: &[u8]) -> Vec<u8> {
    sock.send_to(d, to).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a reply within 5 s");
    assert_eq!(from, to);
    buf[..n].to_vec()
}

#[test]
fn dns_guest_queries_updates_retries_and_hostile_datagrams_replay_to_the_same_digest() {
    if !kvm_or_skip(
        "dns_guest_queries_updates_retries_and_hostile_datagrams_replay_to_the_same_digest",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dns.log");
    let rec = Recording::start(100, &log);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |d: &[u8]| Message::from_vec(&call(&sock, rec.addr, d)).unwrap();

    let r = ask(&query(1, "www.example.test.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers[0].data.to_string(), "192.0.2.10");
    let r = ask(&query(2, "h42.example.test.", RecordType::A));
    assert_eq!(
        r.answers[0].data.to_string(),
        "10.0.0.42",
        "synthetic host from --arg"
    );
    assert_eq!(
        ask(&query(3, "h100.example.test.", RecordType::A))
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    // 50 updates; each one's retry is answered identically and not applied.
    for i in 0..50u16 {
        let u = add_update(
            100 + i,
            &format!("u{i}.example.test."),
            [198, 51, 100, i as u8],
        );
        let first = call(&sock, rec.addr, &u);
        assert_eq!(first[3] & 0xf, 0, "update {i}");
        assert_eq!(call(&sock, rec.addr, &u), first, "retry of update {i}");
    }
    let r = ask(&query(4, "example.test.", RecordType::SOA));
    let RData::SOA(soa) = &r.answers[0].data else {
        panic!("{r:?}")
    };
    assert_eq!(soa.serial, 51, "one bump per update, none per retry");
    // Hostile datagrams: FORMERR, or no reply for the short ones and responses.
    let mut loop_ptr = vec![0x77, 0x77, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    loop_ptr.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut huge = vec![
        0x77, 0x78, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    huge.extend_from_slice(b"\x03www\x00\x00\x01\x00\x01");
    let mut past_end = vec![0x77, 0x79, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    past_end.extend_from_slice(&[63, b'a']);
    for d in [&loop_ptr, &huge, &past_end] {
        let r = call(&sock, rec.addr, d);
        assert_eq!((&r[..2], r[3] & 0xf), (&d[..2], 1), "FORMERR for {d:02x?}");
    }
    for d in [&[0u8; 5][..], &[0x80; 40][..]] {
        sock.send_to(d, rec.addr).unwrap();
    }
    // ... which left the guest serving, and unanswered (the next reply is ours).
    let r = ask(&query(5, "u49.example.test.", RecordType::A));
    assert_eq!((r.metadata.id, r.answers.len()), (5, 1));

    let nic = Arc::clone(&rec.nic);
    let recorded = rec.stop();
    assert!(nic.rx_packets.get() >= 110);
    assert_same(&recorded, &log, 100);
}

/// The acceptance run: real nsupdate and dnsperf (queries and updates)
/// against a recording primary; the replay ends in the same state.
#[test]
fn dnsperf_and_nsupdate_run_records_and_replays_to_the_same_digest() {
    let test = "dnsperf_and_nsupdate_run_records_and_replays_to_the_same_digest";
    if !kvm_or_skip(test)
        || !require_or_skip(test, "dnsutils", || {
            command_on_path("dig").and_then(|_| command_on_path("nsupdate"))
        })
        || !require_or_skip(test, "dnsperf", || command_on_path("dnsperf"))
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dns-tools.log");
    let hosts = 1000;
    let rec = Recording::start(hosts, &log);
    let a = rec.addr;
    let serial =
        || tools::soa_serial(&tools::dig(a, 5, &["example.test", "SOA", "+short"]).unwrap());
    assert_eq!(serial(), Some(1));
    let n = tools::nsupdate(
        a,
        "update add ns.example.test 300 A 198.51.100.53\nupdate add txt.example.test 300 TXT \"from nsupdate\"\nsend",
    )
    .unwrap();
    assert_eq!(n.code, 0, "{}", n.stderr);

    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file("example.test.", hosts as u32)).unwrap();
    let mut cfg = DnsperfConfig::new(a, queries);
    cfg.max_runs = Some(3);
    cfg.clients = 4;
    cfg.outstanding = 64;
    let q = dnsperf::run(&cfg).unwrap();
    println!(
        "dnsperf queries: {} sent, {} lost, {:.0} q/s, p50 {:.0} us, p99 {:.0} us",
        q.sent,
        q.lost,
        q.qps,
        q.latency_us(0.5),
        q.latency_us(0.99)
    );
    assert_eq!(q.sent, 3 * (1000 + 125 * 5));
    assert_eq!(q.lost, 0);
    assert_eq!(q.rcode("NXDOMAIN"), 3 * 125);

    let updates = dir.path().join("updates.txt");
    std::fs::write(&updates, update_file("example.test.", 200)).unwrap();
    let mut cfg = DnsperfConfig::new(a, updates);
    cfg.updates = true;
    cfg.max_runs = Some(1);
    let u = dnsperf::run(&cfg).unwrap();
    println!(
        "dnsperf updates: {} sent, {} lost, {:.0} updates/s",
        u.sent, u.lost, u.qps
    );
    assert_eq!((u.sent, u.lost, u.rcode("NOERROR")), (200, 0, 200));

    let n = tools::nsupdate(a, "update delete txt.example.test\nsend").unwrap();
    assert_eq!(n.code, 0, "{}", n.stderr);
    assert_eq!(serial(), Some(1 + 1 + 200 + 1));
    assert_eq!(
        tools::dig(a, 5, &["ns.example.test", "+short"]).unwrap(),
        "198.51.100.53\n"
    );
    let recorded = rec.stop();
    assert_same(&recorded, &log, hosts);
}

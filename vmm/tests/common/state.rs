//! Helpers of the state-transfer tests: a kv VM under load, logs that can
//! be cut at a join point, and a log source fed after the fact.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::log::EntryRef;
use ftvm_vmm::{
    ExitBoundary, LogEntry, LogSink, LogSinkError, LogSource, LogSourceError, MemoryLog, RunMode,
    RunOutcome, SourcePoll, Vm, VmConfig, VmControl,
};
use ftvm_wire::Kind;
use ftvm_wire::logfile::LogReader;

/// Runs `f` at the first exit boundary with ordinal >= `ordinal`.
pub fn at_ordinal<T: Send + 'static>(
    control: &VmControl,
    ordinal: u64,
    f: impl FnOnce(&mut ExitBoundary<'_>) -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    type Job<T> = Box<dyn FnOnce(&mut ExitBoundary<'_>) -> T + Send>;
    fn again<T: Send + 'static>(c: VmControl, ordinal: u64, f: Job<T>, tx: mpsc::SyncSender<T>) {
        let c2 = c.clone();
        c.at_next_exit(move |b| {
            if b.ordinal() >= ordinal {
                let _ = tx.send(f(b));
            } else {
                again(c2, ordinal, f, tx);
            }
        });
    }
    let (tx, rx) = mpsc::sync_channel(1);
    again(control.clone(), ordinal, Box::new(f), tx);
    rx
}

/// A memory log the test reads after (or while) the VM writes it.
pub use ftvm_vmm::log::SharedLog;

/// The entries of `log` after exit `ordinal` (where a log continued from a
/// join point at that exit starts).
pub fn entries_after(log: &SharedLog, ordinal: u64) -> Vec<LogEntry> {
    LogReader::new(&log.bytes())
        .unwrap()
        .map(|r| r.unwrap().1)
        .filter(|f| !f.header.kind.is_control() && f.header.exit_ordinal > ordinal)
        .map(|f| LogEntry {
            header: f.header,
            payload: f.payload.to_vec(),
        })
        .collect()
}

/// A log sink that hands each entry to a replaying VM (an in-process
/// logging channel).
pub struct ChannelSink {
    tx: mpsc::Sender<LogEntry>,
    log: MemoryLog,
}

impl ChannelSink {
    /// Entries go to `tx`.
    pub fn of(tx: mpsc::Sender<LogEntry>) -> ChannelSink {
        ChannelSink {
            tx,
            log: MemoryLog::new(),
        }
    }
}

impl LogSink for ChannelSink {
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        // The memory log numbers and seals the entry; it is sent and dropped.
        let start = self.log.bytes.len();
        let Some(seq) = self.log.claim(kind, exit_ordinal, max_len, write)? else {
            return Ok(None);
        };
        let frame = ftvm_wire::raw::frame(&self.log.bytes[start..]).expect("sealed frame");
        let entry = LogEntry {
            header: frame.header,
            payload: frame.payload.to_vec(),
        };
        self.log.bytes.truncate(start);
        self.tx
            .send(entry)
            .map_err(|_| LogSinkError::Closed("the backup is gone".into()))?;
        Ok(Some(seq))
    }
    fn next_seq(&self) -> u64 {
        self.log.next_seq()
    }
    fn flush(&mut self) -> Result<(), LogSinkError> {
        Ok(())
    }
}

/// A replay source fed through a channel (the log arrives after the VM
/// was built and its state received). Closing the sender ends the log.
pub struct ChannelSource {
    rx: mpsc::Receiver<LogEntry>,
    ahead: Option<LogEntry>,
}

impl ChannelSource {
    /// Entries come from `rx`.
    pub fn of(rx: mpsc::Receiver<LogEntry>) -> ChannelSource {
        ChannelSource { rx, ahead: None }
    }
}

impl LogSource for ChannelSource {
    fn poll(&mut self) -> Result<SourcePoll, LogSourceError> {
        if self.ahead.is_some() {
            return Ok(SourcePoll::Ready);
        }
        Ok(match self.rx.try_recv() {
            Ok(e) => {
                self.ahead = Some(e);
                SourcePoll::Ready
            }
            Err(mpsc::TryRecvError::Empty) => SourcePoll::Pending,
            Err(mpsc::TryRecvError::Disconnected) => SourcePoll::End,
        })
    }
    fn peek(&mut self) -> Option<EntryRef<'_>> {
        self.ahead.as_ref().map(LogEntry::as_ref)
    }
    fn consume(&mut self) {
        self.ahead = None;
    }
}

/// A replaying VM for `guest` whose log is sent later through the returned
/// sender.
pub fn replayer(guest: &str) -> (Vm, mpsc::Sender<LogEntry>) {
    let (c, _) = super::config(guest, 0);
    let (tx, rx) = mpsc::channel();
    let vm = Vm::new(c, RunMode::Replay(Box::new(ChannelSource::of(rx)))).unwrap();
    (vm, tx)
}

/// The kv guest recording into a [`SharedLog`] on its own thread.
pub struct KvRecording {
    /// The NIC's service address.
    pub addr: SocketAddr,
    /// The VM's control handle.
    pub control: VmControl,
    /// Its log.
    pub log: SharedLog,
    stop: Arc<AtomicBool>,
    console: Arc<Mutex<Vec<u8>>>,
    thread: std::thread::JoinHandle<Result<RunOutcome, String>>,
}

impl KvRecording {
    /// Boots kv (`mem_mib` of memory) and waits for it to serve.
    pub fn start(mem_mib: u32) -> KvRecording {
        let (mut c, console) = super::config("kv", 0);
        c.mem_mib = mem_mib;
        start_with(c, console, true)
    }

    /// Boots kv live (no log: an unprotected primary).
    pub fn start_live(mem_mib: u32) -> KvRecording {
        let (mut c, console) = super::config("kv", 0);
        c.mem_mib = mem_mib;
        start_with(c, console, false)
    }

    /// Stops at the next exit and returns the outcome.
    pub fn stop(self) -> RunOutcome {
        // Release: pairs with the VM loop's Acquire load of the stop flag.
        self.stop.store(true, Ordering::Release);
        let out = self.thread.join().unwrap();
        out.unwrap_or_else(|e| panic!("{e}; console: {}", super::text(&self.console)))
    }
}

fn start_with(mut c: VmConfig, console: Arc<Mutex<Vec<u8>>>, record: bool) -> KvRecording {
    let nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = nic.local_addr().unwrap();
    c.devices.push(Box::new(nic));
    let stop = c.stop.clone();
    let log = SharedLog::default();
    let mode = if record {
        RunMode::Record(Box::new(log.clone()))
    } else {
        RunMode::Live
    };
    let vm = Vm::new(c, mode).unwrap();
    let control = vm.control();
    let thread = std::thread::spawn(move || {
        let mut vm = vm;
        vm.run().map_err(|e| ftvm_vmm::error_chain(&e))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !super::text(&console).contains("kv: serving") {
        assert!(Instant::now() < deadline, "kv did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
    KvRecording {
        addr,
        control,
        log,
        stop,
        console,
        thread,
    }
}

/// A kv load of `ops` operations on its own thread (blocking sockets: the
/// VMs need the cores).
pub fn load(
    addr: SocketAddr,
    ops: u64,
    seed: u64,
) -> std::thread::JoinHandle<ftvm_kvproto::load::LoadReport> {
    let mut cfg = ftvm_kvproto::load::LoadConfig::new(addr);
    cfg.clients = 8;
    cfg.ops = ops;
    cfg.seed = seed;
    cfg.spin = false;
    std::thread::spawn(move || {
        let r = ftvm_kvproto::load::run_load(&cfg).expect("load");
        assert_eq!(r.errors, 0, "{:?}", r.first_errors);
        r
    })
}

/// Waits until the VM behind `control` has passed exit `ordinal`.
pub fn wait_for_exit(control: &VmControl, ordinal: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = control
            .call_at_next_exit(|b| b.ordinal())
            .wait(Duration::from_secs(5))
            .unwrap();
        if now >= ordinal {
            return now;
        }
        assert!(Instant::now() < deadline, "stuck at exit {now}");
        // Each request ends a WAIT early: ask rarely.
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! `ftvm bench transfer`: live state transfer (pre-copy) of the kv guest
//! from a running VM into a new one, idle and under kv load, at 64 and
//! 512 MiB of guest memory (issue 9, item 5).
//!
//! 1. Per scenario: boot the kv guest (live, NIC on 127.0.0.1:0); with
//!    load, a thread drives it with back-to-back closed-loop bursts of the
//!    kv load generator (blocking sockets: the VMs need the cores).
//! 2. Floors, in the same run and on the same VM: `pause floor` — the pause
//!    a no-op exit-boundary request causes, measured exactly like the
//!    transfer's (the guest's own gap between two exits plus the wake-up);
//!    `stream floor` — the time to push the guest's memory size through the
//!    same byte stream (tcp on loopback, or the in-process pipe) without VMs.
//! 3. `--runs` transfers, each into a fresh receiving VM: `send_live` on
//!    this thread, `receive` on another, over the stream. The receiver
//!    checks the join digest; a refused transfer fails the benchmark. The
//!    receiving thread stands for another host: it runs at nice
//!    `--receiver-nice` (default 10) so that on a small shared machine it
//!    takes the cores the sending VM leaves rather than the VM's.
//! 4. Report per run and per scenario (medians): total time, pause (from
//!    the last guest exit before the pause to the first after it, on the
//!    sending side), stop-and-copy time, rounds, bytes, pages per round;
//!    table and JSON (`--report`).

use std::fmt::Write as _;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ftvm_kvproto::load::{LoadConfig, run_load};
use ftvm_tuning::Settings;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::transfer::{PrecopyConfig, SendReport, pipe, receive, send_live};
use ftvm_vmm::{
    ConsoleTarget, LogSource, LogSourceError, RunMode, SourcePoll, Vm, VmConfig, VmControl,
};
use serde::Serialize;

use crate::report::Machine;

/// One scenario of the table.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TransferScenario {
    /// Name (`--filter` matches substrings).
    pub name: &'static str,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// kv load during the transfer.
    pub load: bool,
    /// One line for `--list`.
    pub about: &'static str,
}

/// The scenarios.
pub const TRANSFER_SCENARIOS: &[TransferScenario] = &[
    TransferScenario {
        name: "idle-64",
        mem_mib: 64,
        load: false,
        about: "64 MiB kv guest waiting for requests",
    },
    TransferScenario {
        name: "kv-64",
        mem_mib: 64,
        load: true,
        about: "64 MiB kv guest under closed-loop kv load (goal: median pause <= 10 ms)",
    },
    TransferScenario {
        name: "idle-512",
        mem_mib: 512,
        load: false,
        about: "512 MiB kv guest waiting for requests",
    },
    TransferScenario {
        name: "kv-512",
        mem_mib: 512,
        load: true,
        about: "512 MiB kv guest under closed-loop kv load",
    },
];

/// The byte stream the transfer runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stream {
    /// TCP on loopback.
    Tcp,
    /// The in-process pipe (no kernel).
    Pipe,
}

/// Options of `ftvm bench transfer` (the binary parses, this module runs).
#[derive(Debug, Clone, Serialize)]
pub struct TransferOptions {
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    /// Transfers per scenario (the medians are over these).
    pub runs: u32,
    /// The stream.
    pub stream: Stream,
    /// kv ops per load burst.
    pub burst_ops: u64,
    /// kv clients of the load.
    pub clients: u32,
    /// Pre-copy: rounds after the full copy, at most.
    pub max_rounds: u32,
    /// Pre-copy: stop and copy once a round would send at most this many pages.
    pub stop_pages: usize,
    /// Nice value of the receiving thread (it stands for another host: at
    /// 10 it takes the cores the sending VM leaves; 0: equal footing).
    pub receiver_nice: i32,
    /// JSON report path.
    pub report: Option<PathBuf>,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        let p = PrecopyConfig::default();
        TransferOptions {
            filter: None,
            runs: 5,
            stream: Stream::Tcp,
            burst_ops: 5_000,
            clients: 8,
            max_rounds: p.max_rounds,
            stop_pages: p.stop_pages,
            receiver_nice: 10,
            report: None,
        }
    }
}

/// One transfer.
#[derive(Debug, Clone, Serialize)]
pub struct TransferRun {
    /// Scenario.
    pub scenario: String,
    /// Run number from 0.
    pub run: u32,
    /// Begin to End written (ms).
    pub total_ms: f64,
    /// The pause the guest saw (ms).
    pub pause_ms: Option<f64>,
    /// Time inside the boundary: final pages, state, digest (ms).
    pub stop_copy_ms: f64,
    /// Pause before the boundary: the join exit's own handling (ms).
    pub to_boundary_ms: f64,
    /// Pause after the boundary: the guest's run to its next exit (ms).
    pub resume_ms: Option<f64>,
    /// Rounds, stop-and-copy included.
    pub rounds: usize,
    /// Bytes of records.
    pub bytes: u64,
    /// Pages (with contents and zero) per round, stop-and-copy last.
    pub pages_per_round: Vec<u64>,
    /// Pages with contents per round.
    pub data_pages_per_round: Vec<u64>,
    /// Exit ordinal of the join point.
    pub join_exit: u64,
    /// The receiver's time from the first byte to restored (ms).
    pub receive_ms: f64,
}

/// One scenario's summary.
#[derive(Debug, Clone, Serialize)]
pub struct TransferSummary {
    /// Scenario.
    pub scenario: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Under kv load.
    pub load: bool,
    /// Transfers.
    pub runs: usize,
    /// Median total time (ms).
    pub total_ms_median: f64,
    /// Median pause (ms).
    pub pause_ms_median: Option<f64>,
    /// Largest pause (ms).
    pub pause_ms_max: Option<f64>,
    /// Median stop-and-copy time (ms).
    pub stop_copy_ms_median: f64,
    /// Median rounds.
    pub rounds_median: usize,
    /// Median bytes sent.
    pub bytes_median: u64,
    /// Pause of a no-op boundary request, median (ms).
    pub floor_pause_ms: Option<f64>,
    /// Time to stream the memory size without VMs (ms).
    pub floor_stream_ms: f64,
    /// pause median / floor pause.
    pub ratio_pause: Option<f64>,
    /// total median / stream floor.
    pub ratio_total: f64,
    /// kv ops the load completed during the scenario.
    pub load_ops: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct TransferReport {
    /// Which benchmark.
    pub bench: &'static str,
    /// Where it ran.
    pub machine: Machine,
    /// The options.
    pub options: TransferOptions,
    /// Per scenario.
    pub summaries: Vec<TransferSummary>,
    /// Per transfer.
    pub runs: Vec<TransferRun>,
    /// The goal of issue 9 and whether this run met it.
    pub goal: String,
}

/// The scenario table for `--list`.
pub fn list_transfer() -> String {
    let mut s = String::new();
    for sc in TRANSFER_SCENARIOS {
        let _ = writeln!(s, "{:<10} {}", sc.name, sc.about);
    }
    s
}

/// A replay source that never delivers: the receiving VM is only restored.
struct Never;

impl LogSource for Never {
    fn poll(&mut self) -> Result<SourcePoll, LogSourceError> {
        Ok(SourcePoll::Pending)
    }
    fn peek(&mut self) -> Option<ftvm_vmm::log::EntryRef<'_>> {
        None
    }
    fn consume(&mut self) {}
}

fn median<T: Copy + PartialOrd>(v: &[T]) -> Option<T> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    s.get(s.len() / 2).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sending VM of a scenario, its load, and how to stop both.
struct Primary {
    control: VmControl,
    stop: Arc<AtomicBool>,
    vm: std::thread::JoinHandle<Result<ftvm_vmm::RunOutcome, ftvm_vmm::VmError>>,
    load: Option<Load>,
}

/// The load thread: its stop flag, its op counter, its handle.
struct Load {
    done: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<()>>,
}

fn kv_config(settings: &Settings, mem_mib: u32) -> Result<VmConfig> {
    let mut c = VmConfig::new("kv", &settings.vmm)?;
    c.mem_mib = mem_mib;
    c.console = ConsoleTarget::Discard;
    Ok(c)
}

/// Step 1.
fn start_primary(
    settings: &Settings,
    sc: &TransferScenario,
    opts: &TransferOptions,
) -> Result<Primary> {
    let mut c = kv_config(settings, sc.mem_mib)?;
    let console = Arc::new(Mutex::new(Vec::new()));
    c.console = ConsoleTarget::Capture(console.clone());
    let nic = Nic::new("127.0.0.1:0".parse()?)?;
    let addr = nic.local_addr().context("NIC address")?;
    c.devices.push(Box::new(nic));
    let stop = c.stop.clone();
    let vm = Vm::new(c, RunMode::Live)?;
    let control = vm.control();
    let vm = std::thread::Builder::new()
        .name(format!("vm-{}", sc.name))
        .spawn(move || {
            let mut vm = vm;
            vm.run()
        })?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&console.lock().map_err(|_| anyhow!("console lock"))?)
        .contains("kv: serving")
    {
        if Instant::now() > deadline {
            bail!("the kv guest did not start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let load = sc.load.then(|| {
        let done = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (d, o) = (done.clone(), ops.clone());
        let (burst, clients) = (opts.burst_ops, opts.clients);
        let t = std::thread::spawn(move || -> Result<()> {
            let mut seed = 1;
            // Acquire: pairs with the Release store when the scenario ends.
            while !d.load(Ordering::Acquire) {
                let mut cfg = LoadConfig::new(addr);
                cfg.clients = clients;
                cfg.ops = burst;
                cfg.seed = seed;
                cfg.spin = false;
                let r = run_load(&cfg)?;
                if r.errors > 0 {
                    bail!("kv load: {} replies disagreed with the model", r.errors);
                }
                // Relaxed: a counter read after the join.
                o.fetch_add(r.ops, Ordering::Relaxed);
                seed += 1;
            }
            Ok(())
        });
        Load {
            done,
            ops,
            thread: t,
        }
    });
    Ok(Primary {
        control,
        stop,
        vm,
        load,
    })
}

impl Primary {
    fn finish(self) -> Result<u64> {
        let mut ops = 0;
        if let Some(load) = self.load {
            // Release: pairs with the load thread's Acquire load.
            load.done.store(true, Ordering::Release);
            load.thread
                .join()
                .map_err(|_| anyhow!("load thread panicked"))??;
            // Relaxed: the thread was joined.
            ops = load.ops.load(Ordering::Relaxed);
        }
        // Release: pairs with the VM loop's Acquire load of the stop flag.
        self.stop.store(true, Ordering::Release);
        self.vm
            .join()
            .map_err(|_| anyhow!("VM thread panicked"))?
            .map_err(|e| anyhow!("primary VM: {}", ftvm_vmm::error_chain(&e)))?;
        Ok(ops)
    }
}

/// Step 2: the pause of a request that does nothing.
fn floor_pause(control: &VmControl) -> Result<Option<Duration>> {
    control.stamp_exits(true);
    let queued = Instant::now();
    let got = control
        .call_at_next_exit(move |b| {
            let start = b.last_exit_at().map_or(queued, |e| e.max(queued));
            (start, b.next_exit_at())
        })
        .wait(Duration::from_secs(10));
    let r = match got {
        Ok((start, next)) => Ok(next
            .recv_timeout(Duration::from_secs(1))
            .ok()
            .map(|t| t.saturating_duration_since(start))),
        Err(e) => Err(anyhow!("pause floor: {e}")),
    };
    control.stamp_exits(false);
    r
}

/// A connected pair of byte streams of the chosen kind.
fn connect(stream: Stream) -> Result<(Box<dyn Write + Send>, Box<dyn Read + Send>)> {
    Ok(match stream {
        Stream::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let a = TcpStream::connect(l.local_addr()?)?;
            let (b, _) = l.accept()?;
            a.set_nodelay(true)?;
            (Box::new(a), Box::new(BufReader::with_capacity(1 << 20, b)))
        }
        Stream::Pipe => {
            let (w, r) = pipe(64);
            (Box::new(w), Box::new(r))
        }
    })
}

/// Step 2: `bytes` through the stream, writer to reader done.
fn floor_stream(stream: Stream, bytes: u64) -> Result<Duration> {
    let (mut w, mut r) = connect(stream)?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match r.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let chunk = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    w.flush()?;
    drop(w);
    let got = reader
        .join()
        .map_err(|_| anyhow!("stream floor reader panicked"))??;
    if got != bytes {
        bail!("stream floor: {got} of {bytes} bytes arrived");
    }
    Ok(start.elapsed())
}

/// Step 3: one transfer into a fresh VM.
fn one_transfer(
    settings: &Settings,
    sc: &TransferScenario,
    opts: &TransferOptions,
    control: &VmControl,
    run: u32,
) -> Result<TransferRun> {
    let mut target = Vm::new(
        kv_config(settings, sc.mem_mib)?,
        RunMode::Replay(Box::new(Never)),
    )?;
    let (w, r) = connect(opts.stream)?;
    let nice = opts.receiver_nice;
    let receiver = std::thread::spawn(move || {
        // SAFETY: setpriority has no memory preconditions; on Linux
        // PRIO_PROCESS with who = 0 sets the calling thread's nice value.
        // Best effort: a refusal leaves the thread at the default.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        let start = Instant::now();
        receive(&mut target, r).map(|rep| (rep, start.elapsed()))
    });
    let cfg = PrecopyConfig {
        max_rounds: opts.max_rounds,
        stop_pages: opts.stop_pages,
        attempt: u64::from(run) + 1,
        ..PrecopyConfig::default()
    };
    let sent = send_live(control, w, &cfg, |_| {}).map(|(rep, w)| {
        drop(w);
        rep
    });
    let received = receiver
        .join()
        .map_err(|_| anyhow!("receiver thread panicked"))?;
    let sent: SendReport = sent.map_err(|e| anyhow!("{}", ftvm_vmm::error_chain(&e)))?;
    let (received, receive_time) =
        received.map_err(|e| anyhow!("receiver refused: {}", ftvm_vmm::error_chain(&e)))?;
    if received.digest != sent.digest {
        bail!(
            "join digests differ: sender {}, receiver {}",
            sent.digest,
            received.digest
        );
    }
    Ok(TransferRun {
        scenario: sc.name.into(),
        run,
        total_ms: ms(sent.total),
        pause_ms: sent.pause.map(ms),
        stop_copy_ms: ms(sent.stop_copy),
        to_boundary_ms: ms(sent.to_boundary),
        resume_ms: sent.resume.map(ms),
        rounds: sent.rounds.len(),
        bytes: sent.bytes,
        pages_per_round: sent.rounds.iter().map(|r| r.pages + r.zero_pages).collect(),
        data_pages_per_round: sent.rounds.iter().map(|r| r.pages).collect(),
        join_exit: sent.ordinal,
        receive_ms: ms(receive_time),
    })
}

fn scenario(
    settings: &Settings,
    sc: &TransferScenario,
    opts: &TransferOptions,
    runs_out: &mut Vec<TransferRun>,
) -> Result<TransferSummary> {
    let floor_stream_ms = ms(floor_stream(opts.stream, u64::from(sc.mem_mib) << 20)?);
    let primary = start_primary(settings, sc, opts)?;
    // Let the load reach its steady state.
    std::thread::sleep(Duration::from_millis(if sc.load { 300 } else { 50 }));
    let mut floors = Vec::new();
    let mut runs = Vec::new();
    let progress = crate::progress::Progress::new(sc.name, u64::from(opts.runs.max(1)));
    let result = (|| -> Result<()> {
        for run in 0..opts.runs.max(1) {
            if let Some(f) = floor_pause(&primary.control)? {
                floors.push(ms(f));
            }
            let r = one_transfer(settings, sc, opts, &primary.control, run)?;
            progress.println(&format!(
                "  {} run {run}: total {:.1} ms, pause {} ms, rounds {}, pages {:?}",
                sc.name,
                r.total_ms,
                r.pause_ms.map_or("-".into(), |p| format!("{p:.2}")),
                r.rounds,
                r.pages_per_round
            ));
            progress.inc(1);
            runs.push(r);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    progress.finish();
    let load_ops = primary.finish()?;
    result?;
    let pauses: Vec<f64> = runs.iter().filter_map(|r| r.pause_ms).collect();
    let total = median(&runs.iter().map(|r| r.total_ms).collect::<Vec<_>>()).unwrap_or(0.0);
    let pause = median(&pauses);
    let floor_pause_ms = median(&floors);
    let summary = TransferSummary {
        scenario: sc.name.into(),
        mem_mib: sc.mem_mib,
        load: sc.load,
        runs: runs.len(),
        total_ms_median: total,
        pause_ms_median: pause,
        pause_ms_max: pauses.iter().copied().reduce(f64::max),
        stop_copy_ms_median: median(&runs.iter().map(|r| r.stop_copy_ms).collect::<Vec<_>>())
            .unwrap_or(0.0),
        rounds_median: median(&runs.iter().map(|r| r.rounds).collect::<Vec<_>>()).unwrap_or(0),
        bytes_median: median(&runs.iter().map(|r| r.bytes).collect::<Vec<_>>()).unwrap_or(0),
        floor_pause_ms,
        floor_stream_ms,
        ratio_pause: pause.zip(floor_pause_ms).map(|(p, f)| p / f.max(1e-6)),
        ratio_total: total / floor_stream_ms.max(1e-6),
        load_ops,
    };
    runs_out.extend(runs);
    Ok(summary)
}

impl TransferReport {
    /// The summaries as a markdown table, then the runs.
    pub fn table(&self) -> String {
        let o = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| scenario | runs | total ms | pause ms (median) | pause ms (max) | stop-copy ms | rounds | MiB sent | floor pause ms | pause/floor | floor stream ms | total/floor | kv ops |"
        );
        let _ = writeln!(s, "|{}", "---|".repeat(13));
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {} | {:.2} | {} | {:.1} | {} | {} | {:.1} | {:.2} | {} |",
                m.scenario,
                m.runs,
                m.total_ms_median,
                o(m.pause_ms_median, 2),
                o(m.pause_ms_max, 2),
                m.stop_copy_ms_median,
                m.rounds_median,
                m.bytes_median as f64 / f64::from(1 << 20),
                o(m.floor_pause_ms, 2),
                o(m.ratio_pause, 1),
                m.floor_stream_ms,
                m.ratio_total,
                m.load_ops
            );
        }
        let _ = writeln!(
            s,
            "\n| scenario | run | total ms | pause ms | = to boundary | + stop-copy | + resume | receive ms | join exit | pages per round (data pages) |"
        );
        let _ = writeln!(s, "|{}", "---|".repeat(10));
        for r in &self.runs {
            let pages: Vec<String> = r
                .pages_per_round
                .iter()
                .zip(&r.data_pages_per_round)
                .map(|(a, d)| format!("{a} ({d})"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {} | {:.2} | {:.2} | {} | {:.1} | {} | {} |",
                r.scenario,
                r.run,
                r.total_ms,
                o(r.pause_ms, 2),
                r.to_boundary_ms,
                r.stop_copy_ms,
                o(r.resume_ms, 2),
                r.receive_ms,
                r.join_exit,
                pages.join(", ")
            );
        }
        let _ = writeln!(s, "\n{}", self.goal);
        s
    }
}

/// Runs the selected scenarios (module doc) and prints the table; writes
/// the JSON report when asked.
pub fn run_transfer(opts: &TransferOptions, settings: &Settings) -> Result<TransferReport> {
    ftvm_vmm::kvm_available().map_err(|e| anyhow!("ftvm bench transfer needs /dev/kvm: {e}"))?;
    let chosen: Vec<&TransferScenario> = TRANSFER_SCENARIOS
        .iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if chosen.is_empty() {
        bail!(
            "--filter {:?} matches no scenario (have: {})",
            opts.filter.as_deref().unwrap_or(""),
            TRANSFER_SCENARIOS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut summaries = Vec::new();
    let mut runs = Vec::new();
    for sc in chosen {
        eprintln!("{}: {}", sc.name, sc.about);
        summaries.push(scenario(settings, sc, opts, &mut runs)?);
    }
    let goal = match summaries.iter().find(|s| s.scenario == "kv-64") {
        Some(s) => match s.pause_ms_median {
            Some(p) => format!(
                "goal (issue 9): median pause <= 10 ms for 64 MiB under kv load: {p:.2} ms over {} runs, {}",
                s.runs,
                if p <= 10.0 { "met" } else { "missed" }
            ),
            None => {
                "goal (issue 9): kv-64 measured no pause (the guest did not exit after it)".into()
            }
        },
        None => "goal (issue 9): kv-64 not run".into(),
    };
    let report = TransferReport {
        bench: "transfer",
        machine: Machine::detect(),
        options: opts.clone(),
        summaries,
        runs,
        goal,
    };
    print!("{}", report.table());
    if let Some(path) = &opts.report {
        let text = serde_json::to_string_pretty(&report).context("serialize report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(report)
}

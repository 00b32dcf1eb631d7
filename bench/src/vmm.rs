//! `ftvm bench vmm`: the kv guest behind the NIC, driven by the load
//! generator on loopback, in live mode and in record mode (log file) in one
//! run, beside a floor: the same `Store` served by a host thread (no VM).
//!
//! 1. Floor: `ftvm_kvproto::server::KvServer` (busy-polling host thread) +
//!    the load (`--ops`, `--clients`).
//! 2. `--rounds` times, live then record: boot the kv guest with a NIC on 127.0.0.1:0,
//!    wait for its "kv: serving" line, run a warm-up of `--ops / 10`, then
//!    the measured load; stop the VM at an exit boundary.
//! 3. Report per mode: kv requests/s, latency percentiles, VM exits/s and
//!    per request, packets per rx batch, log bytes per request and logging
//!    bandwidth (record), and the record/live ratio of the median
//!    throughputs (goal >= 0.97).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ftvm_kvproto::load::{LoadConfig, LoadReport, run_load};
use ftvm_kvproto::server::KvServer;
use ftvm_tuning::Settings;
use ftvm_vmm::Counter;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{
    ConsoleTarget, LogFileWriter, LogSink, LogSinkError, MemoryLog, RunMode, Vm, VmConfig,
};
use ftvm_wire::{Kind, frame_len};

#[derive(Debug, clap::Args)]
pub struct BenchVmmArgs {
    /// Client operations per mode.
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,
    /// Client ids of the load generator.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Live/record pairs to run alternately; the ratio uses the median
    /// throughput of each mode (robust against a noisy shared host).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Where record mode writes its log: `file` (a log file in the temp
    /// directory, written from the vCPU thread) or `memory` (frames kept in
    /// memory: the VMM's own record cost, without the file system).
    #[arg(long, default_value = "file", value_parser = ["file", "memory"])]
    pub log_sink: String,
    /// Pin the vCPU thread to this core and the load generator to the
    /// others (the host server of the floor runs on this core too);
    /// -1: no pinning. Default: the last core.
    #[arg(long, allow_negative_numbers = true)]
    pub vcpu_core: Option<i64>,
}

/// (vCPU core, load cores) from `--vcpu-core`; `None` when not pinning.
fn placement(args: &BenchVmmArgs) -> anyhow::Result<Option<(usize, Vec<usize>)>> {
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let vcpu = match args.vcpu_core {
        Some(c) if c < 0 => return Ok(None),
        Some(c) => c as usize,
        None => match cores.last() {
            Some(&c) if cores.len() >= 2 => c,
            _ => return Ok(None),
        },
    };
    if !cores.contains(&vcpu) {
        anyhow::bail!("--vcpu-core {vcpu}: not one of this process's cores {cores:?}");
    }
    let others: Vec<usize> = cores.into_iter().filter(|&c| c != vcpu).collect();
    if others.is_empty() {
        return Ok(None);
    }
    Ok(Some((vcpu, others)))
}

/// A log sink that counts the frame bytes it passes on.
struct CountingSink<S> {
    inner: S,
    bytes: Arc<Counter>,
}

impl<S: LogSink> LogSink for CountingSink<S> {
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        let mut len = 0;
        let seq = self.inner.claim(kind, exit_ordinal, max_len, &mut |buf| {
            len = write(buf)?;
            Some(len)
        })?;
        if seq.is_some() {
            self.bytes.add(frame_len(len) as u64);
        }
        Ok(seq)
    }

    fn next_seq(&self) -> u64 {
        self.inner.next_seq()
    }

    fn max_payload_len(&self) -> usize {
        self.inner.max_payload_len()
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        self.inner.flush()
    }
}

/// One mode's figures.
#[derive(Debug)]
struct ModeResult {
    mode: &'static str,
    load: LoadReport,
    exits: u64,
    rx_batches: u64,
    rx_packets: u64,
    log_bytes: u64,
    log_entries: u64,
}

impl ModeResult {
    fn secs(&self) -> f64 {
        self.load.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        let ops = self.load.ops.max(1) as f64;
        serde_json::json!({
            "mode": self.mode,
            "ops": self.load.ops,
            "elapsed_s": self.secs(),
            "ops_per_s": self.load.ops_per_sec(),
            "p50_us": self.load.latency_us(0.5),
            "p90_us": self.load.latency_us(0.9),
            "p99_us": self.load.latency_us(0.99),
            "p999_us": self.load.latency_us(0.999),
            "max_us": self.load.max_us(),
            "retries": self.load.retries,
            "errors": self.load.errors,
            "exits": self.exits,
            "exits_per_s": self.exits as f64 / self.secs(),
            "exits_per_op": self.exits as f64 / ops,
            "rx_batches": self.rx_batches,
            "packets_per_rx_batch": self.rx_packets as f64 / self.rx_batches.max(1) as f64,
            "log_bytes": self.log_bytes,
            "log_entries": self.log_entries,
            "log_bytes_per_op": self.log_bytes as f64 / ops,
            "log_mbit_per_s": self.log_bytes as f64 * 8.0 / self.secs() / 1e6,
        })
    }
}

fn load_config(
    server: SocketAddr,
    clients: u32,
    ops: u64,
    seed: u64,
    pin: &Option<(usize, Vec<usize>)>,
) -> LoadConfig {
    let mut cfg = LoadConfig::new(server);
    if let Some((_, load_cores)) = pin {
        cfg.pin_cores = load_cores.clone();
    }
    cfg.clients = clients;
    cfg.ops = ops;
    cfg.seed = seed;
    cfg.timeout = Duration::from_millis(500);
    cfg
}

fn wait_for_line(console: &Arc<Mutex<Vec<u8>>>, line: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let text = String::from_utf8_lossy(&console.lock().expect("console lock")).into_owned();
        if text.contains(line) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the kv guest did not print {line:?} within {limit:?}; console: {text:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Step 2: one mode (`record` = `Some(log path)`).
fn run_mode(
    args: &BenchVmmArgs,
    settings: &Settings,
    record: Option<PathBuf>,
    pin: &Option<(usize, Vec<usize>)>,
) -> anyhow::Result<ModeResult> {
    let mode = if record.is_some() { "record" } else { "live" };
    let mut config = VmConfig::new("kv", &settings.vmm)?;
    let console = Arc::new(Mutex::new(Vec::new()));
    config.console = ConsoleTarget::Capture(console.clone());
    let nic = Nic::new("127.0.0.1:0".parse()?)?;
    let addr = nic.local_addr().context("NIC has an address")?;
    let nic_stats = nic.stats();
    config.devices.push(Box::new(nic));
    let stop = config.stop.clone();
    let log_bytes = Arc::new(Counter::new(0));
    let run_mode = match &record {
        Some(_) if args.log_sink == "memory" => RunMode::Record(Box::new(CountingSink {
            inner: MemoryLog::new(),
            bytes: log_bytes.clone(),
        })),
        Some(path) => RunMode::Record(Box::new(CountingSink {
            inner: LogFileWriter::create(path)?,
            bytes: log_bytes.clone(),
        })),
        None => RunMode::Live,
    };
    let vm = std::thread::Builder::new()
        .name(format!("vm-{mode}"))
        .spawn(move || {
            Vm::new(config, run_mode)
                .map_err(ftvm_vmm::VmError::from)
                .and_then(|mut vm| vm.run())
        })?;
    let ready = wait_for_line(&console, "kv: serving", Duration::from_secs(20));
    let loads = ready.and_then(|()| {
        run_load(&load_config(
            addr,
            args.clients,
            (args.ops / 10).max(100),
            7,
            pin,
        ))?;
        let before = (
            nic_stats.rx_batches.get(),
            nic_stats.rx_packets.get(),
            log_bytes.get(),
        );
        Ok((
            before,
            run_load(&load_config(addr, args.clients, args.ops, 11, pin))?,
        ))
    });
    // Release: pairs with the VM loop's Acquire load of the stop flag.
    stop.store(true, Ordering::Release);
    let outcome = vm
        .join()
        .map_err(|_| anyhow::anyhow!("{mode} VM thread panicked"))?
        .with_context(|| format!("{mode} VM"))?;
    let (before, load) = loads?;
    // Exits are counted over the whole run (boot and warm-up add a few
    // hundred); the NIC and log counters over the measured load only.
    Ok(ModeResult {
        mode,
        exits: outcome.exits,
        rx_batches: nic_stats.rx_batches.get() - before.0,
        rx_packets: nic_stats.rx_packets.get() - before.1,
        log_bytes: log_bytes.get() - before.2,
        log_entries: outcome.stats.entries,
        load,
    })
}

pub fn run(args: BenchVmmArgs, settings: &Settings) -> anyhow::Result<()> {
    ftvm_vmm::kvm_available().map_err(|e| anyhow::anyhow!("ftvm bench vmm needs /dev/kvm: {e}"))?;
    let dir = std::env::temp_dir().join(format!("ftvm-bench-vmm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // Threads inherit the affinity of their creator: pinning this thread
    // places the host server and the vCPU threads; load threads re-pin.
    let pin = placement(&args)?;
    if let Some((vcpu, _)) = &pin {
        ftvm_channel::pin_current_thread(*vcpu);
    }
    // Step 1: the floor.
    let server = KvServer::spawn("127.0.0.1:0".parse()?, 1 << 16, 4096, true)?;
    let floor = run_load(&load_config(server.addr(), args.clients, args.ops, 3, &pin));
    server.stop()?;
    let floor = floor?;
    // Step 2, alternating live and record so drifting host load hits both.
    let mut results = Vec::new();
    for round in 0..args.rounds.max(1) {
        results.push(run_mode(&args, settings, None, &pin)?);
        let record = run_mode(
            &args,
            settings,
            Some(dir.join(format!("record-{round}.log"))),
            &pin,
        );
        let _ = std::fs::remove_file(dir.join(format!("record-{round}.log")));
        results.push(record?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mode: &str| -> f64 {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.load.ops_per_sec())
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (live_median, record_median) = (median("live"), median("record"));
    let ratio = record_median / live_median.max(1e-9);

    let placement_text = match &pin {
        Some((vcpu, load)) => format!("vCPU/server on core {vcpu}, load on {load:?}"),
        None => "not pinned".to_string(),
    };
    println!(
        "ftvm bench vmm: kv guest, {} clients, {} ops per mode, {} rounds, {} log sink, cpl {}, {placement_text}",
        args.clients,
        args.ops,
        args.rounds.max(1),
        args.log_sink,
        settings.vmm.guest_cpl
    );
    println!(
        "{:<7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>8} {:>9} {:>8}",
        "mode",
        "req/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "exits/s",
        "exit/req",
        "pkt/rx",
        "log B/req",
        "log Mbit/s",
        "retries"
    );
    println!(
        "{:<7} {:>9.0} {:>8.1} {:>8.1} {:>9.1} {:>9} {:>8} {:>7} {:>8} {:>9} {:>8}",
        "host",
        floor.ops_per_sec(),
        floor.latency_us(0.5),
        floor.latency_us(0.99),
        floor.latency_us(0.999),
        "-",
        "-",
        "-",
        "-",
        "-",
        floor.retries
    );
    for m in &results {
        let ops = m.load.ops.max(1) as f64;
        println!(
            "{:<7} {:>9.0} {:>8.1} {:>8.1} {:>9.1} {:>9.0} {:>8.2} {:>7.1} {:>9.0} {:>10.2} {:>8}",
            m.mode,
            m.load.ops_per_sec(),
            m.load.latency_us(0.5),
            m.load.latency_us(0.99),
            m.load.latency_us(0.999),
            m.exits as f64 / m.secs(),
            m.exits as f64 / ops,
            m.rx_packets as f64 / m.rx_batches.max(1) as f64,
            m.log_bytes as f64 / ops,
            m.log_bytes as f64 * 8.0 / m.secs() / 1e6,
            m.load.retries
        );
    }
    println!(
        "median req/s: live {live_median:.0}, record {record_median:.0}; record/live throughput ratio {ratio:.3} (goal >= 0.97)"
    );
    let errors = floor.errors + results.iter().map(|r| r.load.errors).sum::<u64>();
    if let Some(path) = &args.report {
        let json = serde_json::json!({
            "bench": "vmm",
            "guest": "kv",
            "clients": args.clients,
            "ops": args.ops,
            "guest_cpl": settings.vmm.guest_cpl,
            "log_sink": args.log_sink,
            "placement": placement_text,
            "floor_host": {
                "ops_per_s": floor.ops_per_sec(),
                "p50_us": floor.latency_us(0.5),
                "p99_us": floor.latency_us(0.99),
                "p999_us": floor.latency_us(0.999),
                "max_us": floor.max_us(),
            },
            "rounds": results.iter().map(ModeResult::json).collect::<Vec<_>>(),
            "live_median_ops_per_s": live_median,
            "record_median_ops_per_s": record_median,
            "record_live_ratio": ratio,
            "verification_errors": errors,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("write report {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if errors > 0 {
        anyhow::bail!("{errors} kv replies disagreed with the client's model");
    }
    Ok(())
}

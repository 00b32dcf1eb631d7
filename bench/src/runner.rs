//! Runs the selected scenarios locally (two pinned threads) or as one end of
//! a two-host run, and assembles the report.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ftvm_channel::transport::{self, Listener, Transport, TransportError};
use ftvm_tuning::{Settings, TransportKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::hist::Latency;
use crate::report::{IDLE_CPU_BUDGET_PCT, Report, Row};
use crate::scenarios::{Outcome, Params, Preamble, SCENARIOS, Scenario, by_code, stream_entries};

/// Which end this process plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Both ends here, each on its own pinned thread.
    Local,
    /// The backup / echo end, serving runs on `listen` until killed.
    Sink {
        /// Listen address (`host:port`, or an shm name).
        listen: String,
    },
    /// The measuring end, connecting to a sink at `connect`.
    Source {
        /// Sink address.
        connect: String,
    },
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Options of `ftvm bench channel` (the binary parses, this crate runs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelOptions {
    /// Transports to run (`all` expands to tcp, uring, shm, rdma).
    pub transports: Vec<TransportKind>,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    /// Entries (latency samples) per scenario.
    pub entries: u64,
    /// Duration of time-based scenarios (idle-cpu); in the JSON as
    /// `duration_s`, seconds.
    #[serde(rename = "duration_s", serialize_with = "as_secs")]
    pub duration: Duration,
    /// Payload sizes in bytes.
    pub payloads: Vec<usize>,
    /// mixed / open-floor: offered entries per second.
    pub rate: u64,
    /// throughput / stream-floor: bytes of frames streamed at least.
    pub stream_bytes: u64,
    /// mixed: plain entries per OUTPUT entry.
    pub output_every: u32,
    /// JSON report path.
    pub report: Option<PathBuf>,
    /// Directory for `.hgrm` files.
    pub hgrm: Option<PathBuf>,
    /// SVG percentile plot path.
    pub plot: Option<PathBuf>,
    /// Local, sink or source.
    #[serde(skip)]
    pub role: Role,
}

/// The scenario table as `--list` prints it.
pub fn list() -> String {
    SCENARIOS
        .iter()
        .map(|s| format!("{:<13} {}\n", s.name, s.about))
        .collect()
}

/// Rounds [`run`] uses: each scenario and its floor alternate this often.
pub const DEFAULT_ROUNDS: u32 = 4;

/// Runs the benchmark with [`DEFAULT_ROUNDS`]; returns the report (already
/// printed and written), or `None` for `--role sink` (which serves until killed).
pub fn run(opts: &ChannelOptions, settings: &Settings) -> Result<Option<Report>> {
    run_rounds(opts, settings, DEFAULT_ROUNDS)
}

/// [`run`] with `rounds` interleaved rounds per scenario (see `run_transport`).
pub fn run_rounds(
    opts: &ChannelOptions,
    settings: &Settings,
    rounds: u32,
) -> Result<Option<Report>> {
    if let Role::Sink { listen } = &opts.role {
        let [kind] = opts.transports[..] else {
            bail!(
                "--role sink serves one transport; got {:?} (use --transport tcp|uring|shm)",
                opts.transports.iter().map(|t| t.name()).collect::<Vec<_>>()
            );
        };
        let mut s = settings.clone();
        s.channel.transport = kind;
        serve(&s, listen)?;
        return Ok(None);
    }
    if matches!(opts.role, Role::Source { .. }) && opts.transports.len() != 1 {
        bail!("--role source runs one transport (the sink's); use --transport tcp|uring|shm");
    }
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| opts.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if selected.is_empty() {
        bail!(
            "--filter {:?} matches no scenario; scenarios: {}",
            opts.filter.as_deref().unwrap_or(""),
            SCENARIOS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if opts.payloads.is_empty()
        || opts
            .payloads
            .iter()
            .any(|&p| p == 0 || p > ftvm_wire::MAX_PAYLOAD_LEN)
    {
        bail!(
            "--payload {:?}: every size must be 1..={} bytes",
            opts.payloads,
            ftvm_wire::MAX_PAYLOAD_LEN
        );
    }
    let mut results = Vec::new();
    let mut skipped = Vec::new();
    for &kind in &opts.transports {
        let mut s = settings.clone();
        s.channel.transport = kind;
        if let Err(reason) = available(&s) {
            eprintln!("skip transport {}: {reason}", kind.name());
            skipped.push(format!("{}: {reason}", kind.name()));
            continue;
        }
        for &payload in &opts.payloads {
            run_transport(
                opts,
                &s,
                payload,
                rounds,
                &selected,
                &mut results,
                &mut skipped,
            )?;
        }
    }
    if results.is_empty() && !skipped.is_empty() {
        bail!("no transport could run here: {}", skipped.join("; "));
    }
    let mut options = serde_json::to_value(opts).context("serialize options")?;
    options["rounds"] = rounds.into();
    let report = Report::new(settings, options, results, skipped)?;
    println!("{}", report.table());
    if let Some(path) = &opts.report {
        report.write_json(path)?;
        eprintln!("report: {}", path.display());
    }
    if let Some(dir) = &opts.hgrm {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        for row in &report.results {
            if let Some(h) = &row.hist {
                let name = format!(
                    "{}-{}-{}B.hgrm",
                    row.scenario, row.transport, row.payload_bytes
                );
                h.write_hgrm(&dir.join(name))?;
            }
        }
        eprintln!("hgrm files: {}", dir.display());
    }
    if let Some(path) = &opts.plot {
        let m = &report.machine;
        let title = format!(
            "ftvm channel latency ({} cores, {}, kernel {})",
            m.cores, m.cpu_model, m.kernel
        );
        crate::plot::percentile_svg(&report.results, &title, path)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(Some(report))
}

/// Whether `settings.channel.transport` can run here.
fn available(settings: &Settings) -> Result<(), String> {
    match settings.channel.transport {
        TransportKind::Uring => {
            transport::uring::probe_available().map_err(|e| ftvm_channel::error_chain(&e))
        }
        TransportKind::Shm => {
            let name = format!("ftvm-bench-probe-{}", std::process::id());
            transport::listen(&settings.channel, &name)
                .map(drop)
                .map_err(|e| ftvm_channel::error_chain(&e))
        }
        TransportKind::Rdma => transport::rdma::probe_available(&settings.channel)
            .map_err(|e| ftvm_channel::error_chain(&e)),
        TransportKind::Tcp => Ok(()),
    }
}

/// The transport's name in reports: `rdma-sim` when the rdma transport runs
/// on the simulated NIC (a check of the harness and the protocol's software
/// path, not a measurement of RDMA).
fn transport_label(s: &Settings) -> &'static str {
    match (s.channel.transport, s.channel.rdma.nic) {
        (TransportKind::Rdma, ftvm_tuning::RdmaNic::Simulated) => "rdma-sim",
        (kind, _) => kind.name(),
    }
}

/// What the rounds of one scenario added up to.
#[derive(Debug, Default)]
struct Acc {
    hist: Option<Latency>,
    entries: u64,
    frame_bytes: usize,
    secs: f64,
    cpu_pct: Option<f64>,
    note: String,
}

impl Acc {
    fn add(&mut self, out: Outcome) {
        if let Some(h) = out.hist {
            self.hist.get_or_insert_with(Latency::new).merge(&h);
        }
        self.entries += out.entries;
        self.frame_bytes = out.frame_bytes;
        self.secs += out.secs;
        self.cpu_pct = out.cpu_pct.or(self.cpu_pct);
        if self.note.is_empty() {
            self.note = out.note;
        }
    }

    fn p50_p99(&self) -> Option<(f64, f64)> {
        self.hist
            .as_ref()
            .map(|h| (h.quantile_us(0.5), h.quantile_us(0.99)))
    }
}

/// All selected scenarios for one transport and payload.
///
/// Scenarios and their floors run interleaved in `opts.rounds` rounds of
/// `1/rounds` of the samples each (floor, open-floor, output-rule, mixed,
/// stream-floor, throughput, then again), and each scenario's rounds are
/// merged. A shift of the machine's state during the run (another process,
/// a host moving vCPUs) then lands on the floor and the scenario alike, so
/// the ratios stay meaningful. `idle-cpu` runs once at the end.
fn run_transport(
    opts: &ChannelOptions,
    s: &Settings,
    payload: usize,
    rounds: u32,
    selected: &[&Scenario],
    results: &mut Vec<Row>,
    skipped: &mut Vec<String>,
) -> Result<()> {
    let tname = transport_label(s);
    let wants = |name: &str| selected.iter().any(|sc| sc.name == name);
    let find = |name: &str| {
        SCENARIOS
            .iter()
            .find(|sc| sc.name == name)
            .expect("scenario in table")
    };
    let rounds = rounds.max(1);
    let stream_count = stream_entries(payload, opts.entries, opts.stream_bytes);
    // Floors are measured whenever a scenario needs them.
    let mut order: Vec<&str> = Vec::new();
    for (name, needed_by) in [
        ("floor", "output-rule"),
        ("open-floor", "mixed"),
        ("output-rule", ""),
        ("mixed", ""),
        ("stream-floor", "throughput"),
        ("throughput", ""),
    ] {
        if wants(name) || (!needed_by.is_empty() && wants(needed_by)) {
            order.push(name);
        }
    }
    let mut accs: Vec<(&str, Acc)> = order.iter().map(|&n| (n, Acc::default())).collect();
    let mut failed: Vec<&str> = Vec::new();
    for _ in 0..rounds {
        for (name, acc) in accs.iter_mut() {
            if failed.contains(name) {
                continue;
            }
            let total = if matches!(*name, "stream-floor" | "throughput") {
                stream_count
            } else {
                opts.entries
            };
            let params = Params {
                payload,
                count: total.div_ceil(u64::from(rounds)).max(1),
                output_every: opts.output_every,
                rate: opts.rate,
            };
            match run_one(opts, s, find(name), params) {
                Ok(out) => acc.add(out),
                Err(e) if matches!(*name, "floor" | "open-floor" | "stream-floor") => {
                    return Err(e);
                }
                Err(e) => {
                    eprintln!("{name} {tname} {payload}B failed: {e:#}");
                    skipped.push(format!("{name} {tname} {payload}B: failed: {e:#}"));
                    failed.push(name);
                }
            }
        }
    }
    let get = |n: &str| accs.iter().find(|(name, _)| *name == n).map(|(_, a)| a);
    let floor = get("floor").and_then(Acc::p50_p99);
    let open_floor = get("open-floor").and_then(Acc::p50_p99);
    let stream_floor = get("stream-floor")
        .map(|a| a.entries as f64 * a.frame_bytes as f64 / a.secs.max(1e-9) / 1e6);
    for (name, acc) in accs {
        if failed.contains(&name) {
            continue;
        }
        let mut row = Row::new(name, tname, payload);
        if let Some(h) = acc.hist {
            let f = match name {
                "floor" => floor,
                "open-floor" | "mixed" => open_floor,
                _ => floor,
            };
            row = row.with_latency(h).with_floor(f);
        }
        if acc.entries > 0 {
            row = row.with_rate(acc.entries, acc.frame_bytes, acc.secs);
        }
        if matches!(name, "stream-floor" | "throughput") {
            row = row.with_stream_floor(stream_floor);
        }
        row.note = match name {
            "mixed" | "open-floor" => format!(
                "offered {}/s, achieved {:.0}/s",
                opts.rate,
                row.entries_per_s.unwrap_or(0.0)
            ),
            _ => acc.note,
        };
        if rounds > 1 {
            row.note = format!("{rounds} rounds; {}", row.note)
                .trim_end_matches("; ")
                .to_string();
        }
        results.push(row);
    }
    if wants("idle-cpu") {
        let mut balanced = match Settings::load(Some("balanced"), &[]) {
            Ok(b) => b,
            Err(e) => {
                skipped.push(format!(
                    "idle-cpu {tname}: balanced profile not loadable: {e}"
                ));
                return Ok(());
            }
        };
        balanced.channel.transport = s.channel.transport;
        balanced.channel.rdma = s.channel.rdma.clone();
        let params = Params {
            payload,
            count: opts.duration.as_millis() as u64,
            output_every: opts.output_every,
            rate: opts.rate,
        };
        match run_one(opts, &balanced, find("idle-cpu"), params) {
            Ok(out) => {
                let mut row =
                    Row::new("idle-cpu", tname, payload).with_cpu(out.cpu_pct, IDLE_CPU_BUDGET_PCT);
                row.note = format!("balanced profile; {}", out.note);
                results.push(row);
            }
            Err(e) => {
                eprintln!("idle-cpu {tname} failed: {e:#}");
                skipped.push(format!("idle-cpu {tname} {payload}B: failed: {e:#}"));
            }
        }
    }
    Ok(())
}

/// Runs one scenario: locally on two pinned threads, or as the source of a two-host run.
fn run_one(opts: &ChannelOptions, s: &Settings, sc: &Scenario, params: Params) -> Result<Outcome> {
    let tname = transport_label(s);
    let label = format!("{} {} {}B", sc.name, tname, params.payload);
    let pb = ProgressBar::with_draw_target(Some(params.count), ProgressDrawTarget::hidden());
    if let Ok(style) = ProgressStyle::with_template("{msg:28} [{bar:40}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.clone());
    let preamble = Preamble {
        code: sc.code,
        params,
    };
    let outcome = match &opts.role {
        Role::Source { connect } => {
            if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.first().copied()) {
                ftvm_channel::pin_current_thread(c.id);
            }
            let mut t = transport::connect(&s.channel, connect)
                .with_context(|| format!("connect to sink {connect}"))?;
            preamble.send(t.as_mut())?;
            (sc.source)(s, params, t, &pb)?
        }
        Role::Local | Role::Sink { .. } => local(s, sc, preamble, &pb)?,
    };
    pb.finish_and_clear();
    eprintln!("done: {label} in {:.2} s", outcome.secs);
    Ok(outcome)
}

/// The address a local run listens on.
fn local_addr(kind: TransportKind) -> String {
    match kind {
        TransportKind::Shm => format!("ftvm-bench-{}-{}", std::process::id(), rand_suffix()),
        _ => "127.0.0.1:0".into(),
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Both ends in this process: sink pinned to the last core, source to the first.
fn local(s: &Settings, sc: &Scenario, preamble: Preamble, pb: &ProgressBar) -> Result<Outcome> {
    let mut listener = transport::listen(&s.channel, &local_addr(s.channel.transport))?;
    let addr = listener.local_addr();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let source_core = cores.first().copied();
    let sink_core = cores.last().copied();
    let sink = {
        let s = s.clone();
        thread::Builder::new()
            .name("bench-sink".into())
            .spawn(move || -> Result<()> {
                if let Some(c) = sink_core {
                    ftvm_channel::pin_current_thread(c.id);
                }
                let t = listener
                    .accept(Duration::from_secs(10))?
                    .ok_or_else(|| anyhow!("no connection from the bench source within 10 s"))?;
                serve_one(&s, t)
            })?
    };
    let source = {
        let s = s.clone();
        let sc = *sc;
        let pb = pb.clone();
        thread::Builder::new()
            .name("bench-source".into())
            .spawn(move || -> Result<_> {
                if let Some(c) = source_core {
                    ftvm_channel::pin_current_thread(c.id);
                }
                let mut t = transport::connect(&s.channel, &addr)?;
                preamble.send(t.as_mut())?;
                (sc.source)(&s, preamble.params, t, &pb)
            })?
    };
    // Show the bar only for runs that last; the main thread wakes rarely.
    while !source.is_finished() {
        thread::sleep(Duration::from_millis(250));
        crate::progress::show_once_it_lasts(pb, Duration::from_secs(2));
    }
    let out = source
        .join()
        .map_err(|_| anyhow!("bench source thread panicked"))?;
    let sink_result = sink
        .join()
        .map_err(|_| anyhow!("bench sink thread panicked"))?;
    let out = out.with_context(|| format!("{} source", sc.name))?;
    sink_result.with_context(|| format!("{} sink", sc.name))?;
    Ok(out)
}

/// Serves one run on an accepted connection.
fn serve_one(s: &Settings, mut t: Box<dyn Transport>) -> Result<()> {
    let pre = Preamble::recv(t.as_mut())?;
    let sc = by_code(pre.code)
        .ok_or_else(|| anyhow!("bench preamble names unknown scenario code {}", pre.code))?;
    let mut s = s.clone();
    if sc.name == "idle-cpu"
        && let Ok(mut b) = Settings::load(Some("balanced"), &[])
    {
        b.channel.transport = s.channel.transport;
        b.channel.rdma = s.channel.rdma.clone();
        s = b;
    }
    (sc.sink)(&s, pre.params, t)
}

/// `--role sink`: serves runs one after another until killed.
fn serve(s: &Settings, listen: &str) -> Result<()> {
    let mut listener: Box<dyn Listener> =
        transport::listen(&s.channel, listen).with_context(|| format!("listen on {listen}"))?;
    eprintln!(
        "bench sink: {} on {}",
        s.channel.transport.name(),
        listener.local_addr()
    );
    if let Some(c) = core_affinity::get_core_ids().and_then(|c| c.last().copied()) {
        ftvm_channel::pin_current_thread(c.id);
    }
    loop {
        let Some(t) = listener.accept(Duration::from_secs(3600))? else {
            continue;
        };
        let peer = t.peer();
        match serve_one(s, t) {
            Ok(()) => eprintln!("bench sink: run from {peer} done"),
            Err(e) if is_peer_gone(&e) => eprintln!("bench sink: {peer} went away: {e:#}"),
            Err(e) => eprintln!("bench sink: run from {peer} failed: {e:#}"),
        }
    }
}

fn is_peer_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<TransportError>(),
            Some(TransportError::Closed | TransportError::PeerLost(_))
        )
    })
}

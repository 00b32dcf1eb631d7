//! The channel's two ends as loops (`ftvm channel sink` / `ftvm channel
//! source`, and the demo's channel part): a sink that serves connections
//! one after another, and a source that appends entries (paced or flat out)
//! and measures the output rule.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ftvm_channel::transport::{self, Listener};
use ftvm_channel::{AckGate, AppendError, Backup, BackupStats, HelloParams, Primary, PrimaryStats};
use ftvm_tuning::Settings;
use ftvm_wire::Kind;
use hdrhistogram::Histogram;

/// Serves connections one after another until `stop` or `max` connections.
pub fn serve_sink(
    settings: &Settings,
    listener: &mut dyn Listener,
    capture: Option<&std::path::Path>,
    max: Option<u64>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut served = 0u64;
    while !stop.load(Ordering::Relaxed) && max.is_none_or(|m| served < m) {
        let Some(t) = listener.accept(Duration::from_millis(200))? else {
            continue;
        };
        served += 1;
        let peer = t.peer();
        let start = Instant::now();
        match sink_connection(settings, t, capture, stop) {
            Ok(stats) => eprintln!(
                "{}",
                sink_line(&peer, &stats, start.elapsed(), "ended with goodbye")
            ),
            Err((stats, e)) => eprintln!(
                "{}",
                sink_line(&peer, &stats, start.elapsed(), &format!("closed: {e:#}"))
            ),
        }
    }
    Ok(())
}

fn sink_line(peer: &str, s: &BackupStats, took: Duration, end: &str) -> String {
    let secs = took.as_secs_f64().max(1e-9);
    format!(
        "connection {peer}: {} entries ({} outputs), {} bytes, {} ACKs in {:.3} s ({:.0} entries/s, {:.1} MB/s); {end}",
        s.entries,
        s.outputs,
        s.entry_bytes,
        s.acks,
        secs,
        s.entries as f64 / secs,
        s.entry_bytes as f64 / secs / 1e6
    )
}

type SinkFailure = (BackupStats, anyhow::Error);

fn sink_connection(
    settings: &Settings,
    t: Box<dyn ftvm_channel::transport::Transport>,
    capture: Option<&std::path::Path>,
    stop: &AtomicBool,
) -> Result<BackupStats, SinkFailure> {
    let fail = |stats, e: anyhow::Error| (stats, e);
    let mut backup = Backup::establish(t, &settings.channel, HelloParams::of_settings(settings))
        .map_err(|e| fail(BackupStats::default(), e.into()))?;
    let mut cap = match capture {
        Some(p) => {
            let mut w = BufWriter::new(
                File::create(p)
                    .with_context(|| format!("creating capture file {}", p.display()))
                    .map_err(|e| fail(BackupStats::default(), e))?,
            );
            w.write_all(&ftvm_wire::logfile::file_header())
                .map_err(|e| fail(BackupStats::default(), e.into()))?;
            Some(w)
        }
        None => None,
    };
    let mut idler = ftvm_channel::idler_for(&settings.channel);
    let mut cap_err = None;
    while !backup.is_ended() {
        if stop.load(Ordering::Relaxed) {
            return Err(fail(backup.stats(), anyhow::anyhow!("interrupted")));
        }
        let work = backup
            .poll(|_, f| {
                if let Some(w) = cap.as_mut()
                    && let Err(e) = w.write_all(f.bytes)
                {
                    cap_err.get_or_insert(e);
                }
            })
            .map_err(|e| (backup.stats(), e.into()))?;
        if let Some(e) = cap_err.take() {
            return Err(fail(
                backup.stats(),
                anyhow::Error::from(e).context("writing capture file"),
            ));
        }
        let received = backup.received_seq();
        backup.set_replayed(received, 0);
        idler.idle(work);
    }
    if let Some(mut w) = cap {
        w.flush().map_err(|e| (backup.stats(), e.into()))?;
    }
    Ok(backup.stats())
}

/// What `ftvm channel source` does.
#[derive(Debug, Clone)]
pub struct SourceOpts {
    pub entries: u64,
    pub payload: usize,
    pub output_every: u64,
    pub capture: Option<PathBuf>,
    pub rate: u64,
}

/// What a source run measured.
#[derive(Debug)]
pub struct SourceSummary {
    pub entries: u64,
    pub outputs: u64,
    pub elapsed: Duration,
    /// Output-rule latency (append -> release by the gate), nanoseconds.
    pub latency_ns: Histogram<u64>,
    pub stats: PrimaryStats,
    pub full_waits: u64,
}

impl SourceSummary {
    pub fn render(&self, transport: &str) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let us = |q: f64| self.latency_ns.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "ftvm channel source ({transport}): {} entries ({} outputs), {} bytes in {:.3} s: {:.0} entries/s, {:.1} MB/s, {} sends, {} ACKs, ring full {} times\n\
             output-rule latency (append -> release): p50 {:.1} us, p90 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.entries,
            self.outputs,
            self.stats.entry_bytes_sent,
            secs,
            self.entries as f64 / secs,
            self.stats.entry_bytes_sent as f64 / secs / 1e6,
            self.stats.link.sends,
            self.stats.acks,
            self.full_waits,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            self.latency_ns.max() as f64 / 1000.0,
        )
    }
}

/// Connects, appends `opts.entries` entries and waits until every output is released.
pub fn run_source(
    settings: &Settings,
    addr: &str,
    opts: &SourceOpts,
    stop: &AtomicBool,
) -> anyhow::Result<SourceSummary> {
    // What can be checked is checked before connecting.
    if opts.payload > ftvm_wire::MAX_PAYLOAD_LEN {
        bail!(
            "--payload {}: larger than an entry's payload may be ({} bytes)",
            opts.payload,
            ftvm_wire::MAX_PAYLOAD_LEN
        );
    }
    let capture = match &opts.capture {
        Some(p) => Some(
            File::create(p)
                .with_context(|| format!("--capture {}: creating the file", p.display()))?,
        ),
        None => None,
    };
    let t = transport::connect(&settings.channel, addr)?;
    let (mut primary, mut app) =
        Primary::establish(t, &settings.channel, HelloParams::of_settings(settings))?;
    if let Some(f) = capture {
        primary.capture_to(Box::new(BufWriter::new(f)))?;
    }
    let payload: Vec<u8> = (0..opts.payload).map(|i| (i * 7 + 3) as u8).collect();
    let mut gate: AckGate<Instant> = AckGate::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?;
    let mut idler = ftvm_channel::idler_for(&settings.channel);
    let mut full_waits = 0u64;
    let mut outputs = 0u64;
    let release = |gate: &mut AckGate<Instant>, acked: u64, hist: &mut Histogram<u64>| {
        let now = Instant::now();
        gate.release(acked, |_, t| {
            let _ = hist.record((now - t).as_nanos().max(1) as u64);
        })
    };
    let start = Instant::now();
    let threaded = settings.channel.threaded;
    let mut handle = None;
    let mut primary = Some(primary);
    if threaded {
        handle = primary.take().map(|p| p.spawn(&settings.channel));
    }
    let acked = |primary: &Option<Primary>, handle: &Option<ftvm_channel::PrimaryHandle>| {
        primary
            .as_ref()
            .map(Primary::acked_seq)
            .or_else(|| handle.as_ref().map(|h| h.acked_seq()))
            .unwrap_or(0)
    };
    let interval = (opts.rate > 0).then(|| Duration::from_secs_f64(1.0 / opts.rate as f64));
    for i in 1..=opts.entries {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted after {} entries", i - 1);
        }
        if let Some(iv) = interval {
            // Open loop: wait for this entry's intended time, keeping the channel moving.
            let due = start + iv.mul_f64((i - 1) as f64);
            while Instant::now() < due {
                let work = match primary.as_mut() {
                    Some(p) => p.poll()?,
                    None => 0,
                };
                release(&mut gate, acked(&primary, &handle), &mut hist);
                if work == 0 {
                    std::hint::spin_loop();
                }
            }
        }
        let kind = if opts.output_every > 0 && i.is_multiple_of(opts.output_every) {
            Kind::OpaqueOutput
        } else {
            Kind::Opaque
        };
        let seq = loop {
            match app.append(kind, i, &payload) {
                Ok(seq) => break seq,
                Err(AppendError::Full { .. }) => {
                    full_waits += 1;
                    let work = match primary.as_mut() {
                        Some(p) => p.poll()?,
                        None => {
                            if handle.as_ref().is_some_and(|h| h.is_finished()) {
                                handle.as_mut().map(|h| h.join()).transpose()?;
                                bail!("channel thread stopped");
                            }
                            0
                        }
                    };
                    release(&mut gate, acked(&primary, &handle), &mut hist);
                    idler.idle(work);
                }
                Err(e) => return Err(e.into()),
            }
        };
        if kind.is_output() {
            gate.hold(seq, Instant::now())?;
            outputs += 1;
        }
        if let Some(p) = primary.as_mut() {
            p.poll()?;
        }
        release(&mut gate, acked(&primary, &handle), &mut hist);
    }
    while gate.held() > 0 {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted with {} outputs held", gate.held());
        }
        let work = match primary.as_mut() {
            Some(p) => p.poll()?,
            None => {
                if handle.as_ref().is_some_and(|h| h.is_finished()) {
                    handle.as_mut().map(|h| h.join()).transpose()?;
                    bail!("channel thread stopped with {} outputs held", gate.held());
                }
                0
            }
        };
        let n = release(&mut gate, acked(&primary, &handle), &mut hist);
        idler.idle(work + n);
    }
    let elapsed = start.elapsed();
    let stats = match (primary, handle) {
        (Some(mut p), _) => p.finish(Duration::from_secs(5))?,
        (None, Some(h)) => h.finish()?,
        (None, None) => unreachable!("either inline or threaded"),
    };
    Ok(SourceSummary {
        entries: opts.entries,
        outputs,
        elapsed,
        latency_ns: hist,
        stats,
        full_waits,
    })
}

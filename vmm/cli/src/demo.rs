//! `ftvm demo`: a local tour with embedded defaults, no setup. For each
//! transport (shm, tcp) it runs a sink (the backup end) and a source (the
//! primary end) on two threads of this process, pinned to their own cores,
//! first paced (the output rule under a steady load), then flat out.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use ftvm_channel::transport;
use ftvm_tuning::{Settings, TransportKind};

use crate::channel_cmd::{SourceOpts, SourceSummary, run_source, serve_sink};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds per paced run.
    #[arg(long, default_value_t = 1.5)]
    pub seconds: f64,
    /// Entries per second in the paced run.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
}

static NEVER: AtomicBool = AtomicBool::new(false);

fn pin(core: usize) {
    // Best effort: on a 1-core machine the threads simply share it.
    ftvm_channel::pin_current_thread(core);
}

fn one_run(settings: &Settings, opts: &SourceOpts) -> anyhow::Result<SourceSummary> {
    let name = format!("demo-{}-{}", std::process::id(), opts.entries);
    let addr = match settings.channel.transport {
        TransportKind::Shm => name,
        _ => "127.0.0.1:0".to_string(),
    };
    let mut listener = transport::listen(&settings.channel, &addr)?;
    let addr = listener.local_addr();
    let s = settings.clone();
    let sink = std::thread::Builder::new()
        .name("demo-sink".into())
        .spawn(move || {
            pin(1);
            serve_sink(&s, listener.as_mut(), None, Some(1), &NEVER)
        })
        .context("starting the sink thread")?;
    pin(0);
    let summary = run_source(settings, &addr, opts, &NEVER);
    sink.join()
        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    summary
}

pub fn run(args: DemoArgs, settings: &Settings) -> anyhow::Result<()> {
    println!("ftvm demo: the logging channel, primary end -> backup end, on this machine");
    println!(
        "settings: batch_bytes {}, max_delay_us {}, ack_every {}, idle {}",
        settings.channel.batch_bytes,
        settings.channel.max_delay_us,
        settings.channel.ack_every,
        settings.channel.idle.name()
    );
    println!();
    println!(
        "{:<6} {:<7} {:>9} {:>8} {:>11} {:>9} {:>10} {:>10} {:>10}",
        "trans", "run", "entries", "outputs", "entries/s", "MB/s", "p50 us", "p99 us", "max us"
    );
    let started = Instant::now();
    for kind in [TransportKind::Shm, TransportKind::Tcp] {
        let mut s = settings.clone();
        s.channel.transport = kind;
        let paced = SourceOpts {
            entries: (args.rate as f64 * args.seconds) as u64,
            payload: 64,
            output_every: 50,
            capture: None,
            rate: args.rate,
        };
        let flat = SourceOpts {
            entries: 1_000_000,
            rate: 0,
            ..paced.clone()
        };
        for (label, opts) in [("paced", &paced), ("flat", &flat)] {
            let r = one_run(&s, opts).with_context(|| format!("{} {label} run", kind.name()))?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let us = |q: f64| r.latency_ns.value_at_quantile(q) as f64 / 1e3;
            println!(
                "{:<6} {:<7} {:>9} {:>8} {:>11.0} {:>9.1} {:>10.1} {:>10.1} {:>10.1}",
                kind.name(),
                label,
                r.entries,
                r.outputs,
                r.entries as f64 / secs,
                r.stats.entry_bytes_sent as f64 / secs / 1e6,
                us(0.5),
                us(0.99),
                r.latency_ns.max() as f64 / 1e3
            );
        }
    }
    println!();
    println!(
        "Latency is the output rule: from appending an OUTPUT entry to its release by the gate,\n\
         i.e. one trip to the backup and its ACK back. 'paced' appends {} entries/s (1 in 50 an\n\
         OUTPUT); 'flat' appends as fast as the channel takes them, so outputs also queue behind\n\
         the backlog. Done in {:.1} s. Next: `ftvm channel sink` / `ftvm channel source` between\n\
         two hosts; `--profile latency|throughput|balanced` to tune.",
        args.rate,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

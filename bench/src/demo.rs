//! `ftvm demo`: a local tour with embedded defaults, no setup.
//!
//! Part 1 (needs /dev/kvm): the kv guest serving 16 UDP clients, unprotected
//! and then as a fault-tolerant pair (a backup VM replaying the primary's log
//! over tcp and over shm): client latency, logging bandwidth, and the check
//! that both VMs end in the same state.
//!
//! Part 2 (needs /dev/kvm): failover. A protected kv guest in two `ftvm`
//! processes under a self-checking APPEND load; `kill -9` of the primary,
//! the backup drains, wins the next generation at the embedded `file:`
//! arbiter and goes live; then the same with the backup killed. A table of
//! detection, drain, arbitration and go-live times, the client-visible gap
//! and the acknowledged writes checked afterwards.
//!
//! Part 2b (needs /dev/kvm): re-protection. A chain of `ftvm` processes:
//! each failover is followed by a registered spare joining the side that
//! went live (live state transfer), so the pair is protected again.
//!
//! Part 3: the logging channel alone, a sink (the backup end) and a source
//! (the primary end) on two pinned threads, paced and flat out.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use ftvm_channel::transport;
use ftvm_ft::local::Protection;
use ftvm_tuning::{Settings, TransportKind};

use crate::e2e::{check_pair, kv_run, protection};
use crate::loops::{SourceOpts, SourceSummary, run_source, serve_sink};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Seconds per paced run.
    #[arg(long, default_value_t = 1.5)]
    pub seconds: f64,
    /// Entries per second in the paced run.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Client operations per kv run.
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
}

static NEVER: AtomicBool = AtomicBool::new(false);

fn pin(core: usize) {
    // Best effort: on a 1-core machine the threads simply share it.
    ftvm_channel::pin_current_thread(core);
}

fn channel_run(settings: &Settings, opts: &SourceOpts) -> anyhow::Result<SourceSummary> {
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
    match ftvm_vmm::kvm_available() {
        Ok(()) => {
            pair_part(&args, settings)?;
            failover_part(settings)?;
            reprotect_part(settings)?;
        }
        Err(why) => println!(
            "ftvm demo: skipping the VM pair and failover: /dev/kvm not accessible ({why})\n"
        ),
    }
    channel_part(&args, settings)
}

fn failover_part(settings: &Settings) -> anyhow::Result<()> {
    use crate::failover::{FailoverOptions, FaultKind, run_trial};
    println!("ftvm demo, part 2: failover — the pair as two ftvm processes, 8 clients appending");
    println!("  unique tokens and retrying the other address after 100 ms; a fault; then every");
    println!("  client reads back every key (arbiter: the embedded file: backend).\n");
    let work_dir = std::env::temp_dir().join(format!("ftvm-demo-failover-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let profile = work_dir.join("settings.toml");
    std::fs::write(&profile, settings.to_toml())?;
    let opts = FailoverOptions {
        ftvm: std::env::current_exe()?,
        trials: Vec::new(),
        transport: "tcp".into(),
        peer_timeout_ms: 300,
        retry: std::time::Duration::from_millis(100),
        clients: 8,
        arbiter: None,
        work_dir: work_dir.clone(),
        seed: u64::from(std::process::id()),
        profile: Some(profile),
        verbose: false,
    };
    println!(
        "{:<18} {:>8} {:>9} {:>9} {:>8} {:>12} {:>9} {:>8} {:>6} {:>7} {:>7}",
        "fault",
        "serves",
        "gap ms",
        "detect",
        "drain",
        "arbitration",
        "go-live",
        "resent",
        "ops",
        "lost",
        "twice"
    );
    let mut seed = opts.seed;
    let mut clean = true;
    for (kind, label) in [
        (FaultKind::KillPrimary, "kill -9 primary"),
        (FaultKind::KillBackup, "kill -9 backup"),
    ] {
        let t = run_trial(&opts, kind, 0, &mut seed);
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        if let Some(e) = &t.error {
            println!("{label:<18} trial failed: {e:#}");
            clean = false;
            continue;
        }
        clean &= t.ok();
        println!(
            "{:<18} {:>8} {:>9.1} {:>9} {:>8} {:>12} {:>9} {:>8} {:>6} {:>7} {:>7}",
            label,
            t.winner,
            t.gap_ms,
            f(t.detect_ms),
            f(t.drain_ms),
            f(t.arbitration_ms),
            f(t.go_live_ms),
            t.resent_replies,
            t.ops,
            t.lost,
            t.applied_twice
        );
    }
    println!(
        "\nTimes in ms. detect: from the kill to the survivor noticing (EOF; the kernel's reaping of\n\
         the killed VM dominates); drain: replaying what was received; arbitration: winning the next\n\
         generation; go-live: taking over the service address, re-issuing unconfirmed disk writes and\n\
         re-sending unconfirmed replies. gap: the longest time no client got a reply. More faults\n\
         (SIGSTOP past the timeout, partitions) and many trials: `ftvm bench failover`.\n"
    );
    let _ = std::fs::remove_dir_all(&work_dir);
    if !clean {
        anyhow::bail!("a failover trial lost or doubled an acknowledged write, or failed");
    }
    Ok(())
}

fn reprotect_part(settings: &Settings) -> anyhow::Result<()> {
    use crate::failover::chain::{ChainOptions, run_chain};
    println!(
        "ftvm demo, part 2b: redundancy restored by itself — a primary with no backup takes a"
    );
    println!(
        "  registered spare by live state transfer; then twice: kill -9 of the live side, its"
    );
    println!("  backup goes live and takes the next spare (4 clients appending throughout).\n");
    let work_dir = std::env::temp_dir().join(format!("ftvm-demo-reprotect-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let profile = work_dir.join("settings.toml");
    std::fs::write(&profile, settings.to_toml())?;
    let run = run_chain(&ChainOptions {
        ftvm: std::env::current_exe()?,
        work_dir: work_dir.clone(),
        cycles: 2,
        clients: 4,
        profile: Some(profile),
        peer_timeout_ms: 300,
    });
    let _ = std::fs::remove_dir_all(&work_dir);
    let r = run.context("the re-protection chain")?;
    println!(
        "{:<12} {:>9} {:>14} {:>12} {:>10} {:>10}  join digest (both sides)",
        "generation", "live ms", "protected ms", "transfer ms", "pause ms", "MB sent"
    );
    for j in &r.joins {
        println!(
            "{:<12} {:>9} {:>14.0} {:>12.0} {:>10.2} {:>10.2}  {}",
            j.generation,
            j.live_ms.map_or("-".to_string(), |v| format!("{v:.0}")),
            j.protected_ms,
            j.transfer_ms,
            j.pause_ms,
            j.bytes as f64 / 1e6,
            j.digest
        );
    }
    println!(
        "\n{} ops, {} lost, {} applied twice; the last pair ended at the same state ({}).\n\
         live/protected: from the kill to the backup serving / to it being protected by the next\n\
         spare (the first row: from the primary's start). pause: the vCPU stopped for the last\n\
         dirty pages and the device state. More: docs/reprotect.md.\n",
        r.ops, r.lost, r.applied_twice, r.final_state
    );
    if !r.clean() {
        anyhow::bail!("the re-protection chain lost or doubled an acknowledged write");
    }
    Ok(())
}

/// Closed-loop kv clients in the demo's pair runs.
const CLIENTS: u32 = 16;

fn pair_part(args: &DemoArgs, settings: &Settings) -> anyhow::Result<()> {
    println!(
        "ftvm demo, part 1: the kv guest under KVM, 16 UDP clients on loopback ({} ops a run)",
        args.ops
    );
    println!(
        "  FT off: the guest alone. FT on: a backup VM replays the primary's log as it arrives,"
    );
    println!("  and every reply waits in the primary until the backup ACKed its log entry.\n");
    println!(
        "{:<16} {:>9} {:>10} {:>9} {:>9} {:>9} {:>12} {:>10}",
        "run", "ops/s", "p50 us", "p99 us", "p99.9 us", "retries", "log Mbit/s", "digests"
    );
    let mut rows = Vec::new();
    let (off, _) = kv_run(settings, Protection::Off, CLIENTS, args.ops)?;
    rows.push(("FT off".to_string(), off, None, String::from("-")));
    for kind in [TransportKind::Tcp, TransportKind::Shm] {
        let mut s = settings.clone();
        s.channel.transport = kind;
        let (report, out) = kv_run(&s, protection(kind, "demo"), CLIENTS, args.ops)?;
        let checked = check_pair(out)?;
        let p = &checked.primary;
        let same = format!("equal {:016x} at exit {}", p.state.digest, p.exits);
        rows.push((
            format!("FT on ({})", kind.name()),
            report,
            checked.log_mbit_s,
            same,
        ));
    }
    for (name, r, mbit, same) in &rows {
        println!(
            "{:<16} {:>9.0} {:>10.1} {:>9.1} {:>9.1} {:>9} {:>12} {}",
            name,
            r.ops_per_sec(),
            r.latency_us(0.5),
            r.latency_us(0.99),
            r.latency_us(0.999),
            r.retries,
            mbit.map_or("-".to_string(), |m| format!("{m:.2}")),
            same
        );
    }
    println!();
    Ok(())
}

fn channel_part(args: &DemoArgs, settings: &Settings) -> anyhow::Result<()> {
    println!(
        "ftvm demo, part 3: the logging channel alone, primary end -> backup end, on this machine"
    );
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
            let r =
                channel_run(&s, opts).with_context(|| format!("{} {label} run", kind.name()))?;
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

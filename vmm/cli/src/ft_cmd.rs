//! The fault-tolerant pair from the command line: `ftvm backup`, the
//! `--backup` path of `ftvm primary`, and `ftvm status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ftvm_channel::transport;
use ftvm_ft::{BackupEnd, PrimaryEnd, accept_backup, connect_primary};
use ftvm_tuning::Settings;
use ftvm_vmm::{RunMode, RunOutcome, Vm, VmConfig};

use crate::channel_cmd::with_transport;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Embedded guest (must be the primary's: the handshake compares image digests).
    #[arg(long)]
    pub guest: String,
    /// Address to wait for the primary on: host:port (tcp, uring) or a name (shm).
    #[arg(long)]
    pub listen: String,
    /// Transport: tcp, shm or uring (default: the settings' channel.transport).
    #[arg(long)]
    pub transport: Option<String>,
    /// Guest argument (must be the primary's).
    #[arg(long, default_value_t = 0)]
    pub arg: u64,
    /// Serve status (JSON) on this TCP address (`ftvm status ADDR`).
    #[arg(long)]
    pub status: Option<String>,
    /// Seconds to wait for a primary.
    #[arg(long, default_value_t = 3600)]
    pub wait_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The `--status` address of a primary or backup.
    pub addr: String,
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let v = ftvm_ft::status::query(&a.addr, Duration::from_secs(2))
        .with_context(|| format!("reading the status of {}", a.addr))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Runs `c` as the primary of a pair with the backup at `backup`; every
/// output waits for the backup's ACK. Returns the VM's outcome after the
/// channel shipped everything and the backup ACKed it.
pub fn run_primary(
    mut c: VmConfig,
    settings: &Settings,
    backup: &str,
    transport_name: Option<&str>,
    status_addr: Option<&str>,
    record_log: Option<&std::path::Path>,
) -> anyhow::Result<RunOutcome> {
    let s = with_transport(settings, transport_name)?;
    let PrimaryEnd {
        sink,
        gate,
        device,
        mut channel,
        shared,
        gate_counters,
        sink_stats,
    } = connect_primary(&s, backup, &c.image)?;
    eprintln!(
        "ftvm primary: protected by the backup at {backup} ({})",
        s.channel.transport.name()
    );
    if let Some(addr) = status_addr {
        let shared = shared.clone();
        let (g, st) = (gate_counters.clone(), sink_stats.clone());
        let lag_limit = s.channel.lag_limit_us;
        let local = ftvm_ft::status::serve(
            addr,
            Arc::new(move || {
                let r = Ordering::Relaxed;
                let (replayed, replay_ordinal) = shared.replay();
                serde_json::json!({
                    "role": "primary",
                    "mode": if shared.is_stopped() { "record (channel stopped)" } else { "record" },
                    "exit_ordinal": st.exit_ordinal.load(r),
                    "last_seq_appended": st.entries.load(r),
                    "last_seq_sent": shared.last_sent_seq(),
                    "last_seq_acked": shared.acked_seq(),
                    "last_seq_replayed": replayed,
                    "replay_exit_ordinal": replay_ordinal,
                    "lag_us": st.lag_us.load(r),
                    "max_lag_us": st.max_lag_us.load(r),
                    "lag_limit_us": lag_limit,
                    "lag_sleeps": st.lag_sleeps.load(r),
                    "ring_full_waits": st.full_waits.load(r),
                    "held_outputs": g.held(),
                    "released_outputs": g.released.load(r),
                    "bytes_logged": st.bytes.load(r),
                })
            }),
        )
        .with_context(|| format!("serving status on {addr}"))?;
        eprintln!("ftvm primary: status on {local}");
    }
    c.gate = gate;
    c.devices.extend(device);
    let sink: Box<dyn ftvm_vmm::LogSink> = match record_log {
        Some(path) => Box::new(ftvm_ft::TeeSink::new(
            sink,
            ftvm_vmm::LogFileWriter::create(path)?,
        )),
        None => Box::new(sink),
    };
    let run = Vm::new(c, RunMode::Record(sink)).and_then(|mut vm| vm.run());
    let outcome = match run {
        Ok(o) => o,
        Err(e) => {
            // A dead channel surfaces in the VM as a refused append; its own
            // error says why (peer lost, corrupt ACK, ...).
            if let Some(ce) = channel.failure() {
                return Err(anyhow::Error::from(ce).context(format!(
                    "the backup at {backup} is lost; outputs not ACKed stay held"
                )));
            }
            return Err(e.into());
        }
    };
    let stats = channel
        .finish()
        .with_context(|| format!("shipping the rest of the log to the backup at {backup}"))?;
    let r = Ordering::Relaxed;
    eprintln!(
        "channel: {} entries, {} bytes in {} sends, {} ACKs; outputs released {}; ring full {} times; lag max {} us, {} lag-control sleeps ({} us)",
        stats.entries_sent,
        stats.entry_bytes_sent,
        stats.link.sends,
        stats.acks,
        gate_counters.released.load(r),
        sink_stats.full_waits.load(r),
        sink_stats.max_lag_us.load(r),
        sink_stats.lag_sleeps.load(r),
        sink_stats.lag_sleep_us.load(r),
    );
    Ok(outcome)
}

/// `ftvm backup`: waits for a primary, replays its log as it arrives.
pub fn run_backup(a: BackupArgs, settings: &Settings) -> anyhow::Result<RunOutcome> {
    let s = with_transport(settings, a.transport.as_deref())?;
    let mut c = VmConfig::new(&a.guest, &s.vmm)?;
    c.guest_arg = a.arg;
    let mut listener = transport::listen(&s.channel, &a.listen)?;
    eprintln!(
        "ftvm backup: waiting for a primary on {} ({})",
        listener.local_addr(),
        s.channel.transport.name()
    );
    let BackupEnd {
        source,
        stats,
        peer,
    } = accept_backup(
        &s,
        listener.as_mut(),
        &c.image,
        Duration::from_secs(a.wait_secs),
    )?;
    eprintln!("ftvm backup: replaying the log of {peer}");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    // A signal stops the backup only once it has replayed what it received.
    c.stop = stop;
    if let Some(addr) = &a.status {
        let st = stats.clone();
        let local = ftvm_ft::status::serve(
            addr,
            Arc::new(move || {
                let r = Ordering::Relaxed;
                serde_json::json!({
                    "role": "backup",
                    "mode": "replay",
                    "exit_ordinal": st.exit_ordinal.load(r),
                    "last_seq_replayed": st.replayed.load(r),
                    "received_not_replayed": st.backlog.load(r),
                })
            }),
        )
        .with_context(|| format!("serving status on {addr}"))?;
        eprintln!("ftvm backup: status on {local}");
    }
    let outcome = Vm::new(c, RunMode::Replay(Box::new(source)))?.run()?;
    Ok(outcome)
}

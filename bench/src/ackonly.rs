//! The ACK-only backup: a process that takes a primary's channel like a
//! backup (the same handshake: guest, image, settings, VM name), validates
//! every entry (CRC, sequence) and ACKs it, but replays nothing.
//!
//! `bench e2e` runs one next to the full pair and the unprotected VM, so the
//! table shows what fault tolerance costs a primary whose backup has a host
//! of its own (on one 2-core host a replaying backup shares the primary's
//! cores). On two hosts: `ftvm bench ack-backup --listen 0.0.0.0:7400` there,
//! `ftvm primary --backup HOST:7400 ...` here.
//!
//! 1. Listen on `--listen` and print `ack-backup listening on ADDR` (the
//!    bound address: a parent that gave port 0 reads it).
//! 2. Take one primary (`ftvm_ft::accept_backup`), then consume every entry
//!    the channel lends as soon as it is ready: the channel ACKs on
//!    receipt, the replay position follows at once.
//! 3. At the primary's goodbye print the counts and exit 0; a lost primary
//!    is an error naming why.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ftvm_ft::{BackupOptions, accept_backup};
use ftvm_tuning::Settings;
use ftvm_vmm::{LogSource, SourcePoll};

#[derive(Debug, clap::Args)]
pub struct AckBackupArgs {
    /// Address (tcp, uring: HOST:PORT; shm: a name) to take the primary on.
    #[arg(long)]
    pub listen: String,
    /// The guest the primary runs (its image is part of the handshake).
    #[arg(long, default_value = "kv")]
    pub guest: String,
    /// Seconds to wait for the primary.
    #[arg(long, default_value_t = 30)]
    pub wait_s: u64,
}

/// The line that announces the bound address.
pub const LISTENING: &str = "ack-backup listening on ";

pub fn run(a: AckBackupArgs, settings: &Settings) -> anyhow::Result<()> {
    let image =
        ftvm_vmm::guest_image(&a.guest).with_context(|| format!("unknown guest {:?}", a.guest))?;
    let mut listener = ftvm_channel::transport::listen(&settings.channel, &a.listen)
        .with_context(|| format!("listening on {}", a.listen))?;
    println!("{LISTENING}{}", listener.local_addr());
    std::io::stdout().flush()?;
    let opts = BackupOptions {
        guest: a.guest.clone(),
        ..BackupOptions::default()
    };
    let end = accept_backup(
        settings,
        listener.as_mut(),
        image,
        &opts,
        Duration::from_secs(a.wait_s),
    )
    .context("taking the primary")?;
    let stats = end.stats.clone();
    let mut source = end.source;
    let start = Instant::now();
    let mut entries = 0u64;
    loop {
        match source.poll().context("receiving")? {
            SourcePoll::Ready => {
                source.consume();
                entries += 1;
            }
            SourcePoll::Pending => std::hint::spin_loop(),
            SourcePoll::End => break,
            SourcePoll::Lost { reason } => bail!("the primary was lost: {reason}"),
        }
    }
    println!(
        "ack-backup: {entries} entries validated and ACKed in {:.2} s ({} ACK frames)",
        start.elapsed().as_secs_f64(),
        stats.acks_sent.get()
    );
    Ok(())
}

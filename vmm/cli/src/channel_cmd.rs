//! `ftvm channel source|sink`: the two ends of the logging channel on their
//! own, so a user can check the channel between two real hosts.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ftvm_bench::loops::{SourceOpts, run_source, serve_sink};
use ftvm_channel::transport;
use ftvm_tuning::{Settings, TransportKind};

#[derive(Debug, clap::Subcommand)]
pub enum ChannelCommand {
    /// The backup end on its own: receives, validates, ACKs, counts; keeps
    /// listening after a connection ends.
    Sink(SinkArgs),
    /// The primary end on its own: appends entries (every K-th an OUTPUT),
    /// waits on the output gate, prints a summary.
    Source(SourceArgs),
}

#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Transport: tcp, shm or uring (default: the settings' channel.transport).
    #[arg(long)]
    pub transport: Option<TransportKind>,
    /// Address to listen on: host:port (tcp, uring) or a name (shm).
    #[arg(long)]
    pub listen: String,
    /// Also write every received entry to this log file (overwritten per connection).
    #[arg(long)]
    pub capture: Option<PathBuf>,
    /// Exit after this many connections (default: serve until SIGINT/SIGTERM).
    #[arg(long)]
    pub connections: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// Transport: tcp, shm or uring (default: the settings' channel.transport).
    #[arg(long)]
    pub transport: Option<TransportKind>,
    /// Address of the sink.
    #[arg(long)]
    pub connect: String,
    /// Entries to append.
    #[arg(long, default_value_t = 100_000)]
    pub entries: u64,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Every K-th entry is an OUTPUT (0: none).
    #[arg(long, default_value_t = 100)]
    pub output_every: u64,
    /// Write the frames exactly as shipped to this log file.
    #[arg(long)]
    pub capture: Option<PathBuf>,
    /// Append at this many entries per second (open loop; 0: as fast as the
    /// channel takes them, which measures queueing behind a full ring).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

pub fn run(cmd: ChannelCommand, settings: &Settings) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    match cmd {
        ChannelCommand::Sink(a) => {
            let s = crate::ft_cmd::with_transport(settings, a.transport);
            // Checked before listening (each connection re-creates it).
            if let Some(p) = &a.capture {
                std::fs::File::create(p)
                    .with_context(|| format!("--capture {}: creating the file", p.display()))?;
            }
            let mut listener = transport::listen(&s.channel, &a.listen)?;
            eprintln!(
                "ftvm channel sink: listening on {} ({})",
                listener.local_addr(),
                s.channel.transport.name()
            );
            serve_sink(
                &s,
                listener.as_mut(),
                a.capture.as_deref(),
                a.connections,
                &stop,
            )
        }
        ChannelCommand::Source(a) => {
            let s = crate::ft_cmd::with_transport(settings, a.transport);
            let opts = SourceOpts {
                entries: a.entries,
                payload: a.payload,
                output_every: a.output_every,
                capture: a.capture,
                rate: a.rate,
            };
            let summary = run_source(&s, &a.connect, &opts, &stop)?;
            println!("{}", summary.render(s.channel.transport.name()));
            Ok(())
        }
    }
}

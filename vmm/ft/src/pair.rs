//! Setting up either end of the pair: transport, handshake, channel thread,
//! and the VM's sink/gate (primary) or source (backup).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_channel::transport::{self, Listener, TransportError};
use ftvm_channel::{Backup, ChannelError, Primary, PrimaryHandle};
use ftvm_tuning::Settings;

use crate::gate::{ChannelGate, GateCounters, gate_pair};
use crate::sink::{ChannelSink, SinkStats};
use crate::source::{ChannelSource, SourceStats};

/// Setting up an end of the pair failed.
#[derive(Debug, thiserror::Error)]
pub enum PairSetupError {
    /// The transport could not connect or listen.
    #[error("{what}: {source}")]
    Transport {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: TransportError,
    },
    /// The handshake or the channel failed.
    #[error("{what}: {source}")]
    Channel {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: ChannelError,
    },
    /// No primary connected in time.
    #[error("no primary connected to {addr} within {secs} s")]
    NoPrimary {
        /// The listening address.
        addr: String,
        /// The wait.
        secs: u64,
    },
}

/// The primary's end: what the VM needs, and the channel thread.
#[derive(Debug)]
pub struct PrimaryEnd {
    /// The VM's log sink.
    pub sink: ChannelSink,
    /// The VM's output gate.
    pub gate: ChannelGate,
    /// The channel thread (finish it after the VM stopped).
    pub handle: PrimaryHandle,
    /// Held / released outputs.
    pub gate_counters: Arc<GateCounters>,
    /// Sink counters (entries, bytes, flow and lag control).
    pub sink_stats: Arc<SinkStats>,
}

/// Connects to the backup at `addr`, handshakes (settings fingerprint and
/// guest image digest must match) and starts the channel thread.
pub fn connect_primary(
    settings: &Settings,
    addr: &str,
    image: &[u8],
) -> Result<PrimaryEnd, PairSetupError> {
    let t = transport::connect(&settings.channel, addr).map_err(|source| {
        PairSetupError::Transport {
            what: format!(
                "connecting to the backup at {addr} ({})",
                settings.channel.transport.name()
            ),
            source,
        }
    })?;
    let (primary, app) = Primary::establish(t, &settings.channel, crate::hello(settings, image))
        .map_err(|source| PairSetupError::Channel {
            what: format!("handshake with the backup at {addr}"),
            source,
        })?;
    let (gate, hook, gate_counters) = gate_pair();
    let handle = primary.spawn_with(&settings.channel, hook);
    let sink = ChannelSink::new(
        app,
        handle.shared().clone(),
        Duration::from_micros(settings.channel.lag_limit_us),
    );
    let sink_stats = sink.stats();
    Ok(PrimaryEnd {
        sink,
        gate,
        handle,
        gate_counters,
        sink_stats,
    })
}

/// The backup's end.
#[derive(Debug)]
pub struct BackupEnd {
    /// The VM's log source (owns the channel thread).
    pub source: ChannelSource,
    /// Replay counters.
    pub stats: Arc<SourceStats>,
    /// Peer address.
    pub peer: String,
}

/// Waits up to `wait` for a primary on `listener`, handshakes and starts the
/// receiver thread.
pub fn accept_backup(
    settings: &Settings,
    listener: &mut dyn Listener,
    image: &[u8],
    wait: Duration,
) -> Result<BackupEnd, PairSetupError> {
    let addr = listener.local_addr();
    let start = Instant::now();
    let t = loop {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(PairSetupError::NoPrimary {
                addr,
                secs: wait.as_secs(),
            });
        }
        match listener.accept(left.min(Duration::from_millis(200))) {
            Ok(Some(t)) => break t,
            Ok(None) => {}
            Err(source) => {
                return Err(PairSetupError::Transport {
                    what: format!("accepting on {addr}"),
                    source,
                });
            }
        }
    };
    let peer = t.peer();
    let backup = Backup::establish(t, &settings.channel, crate::hello(settings, image)).map_err(
        |source| PairSetupError::Channel {
            what: format!("handshake with the primary {peer}"),
            source,
        },
    )?;
    let source = if settings.channel.threaded {
        let (handle, feed) =
            backup
                .spawn(&settings.channel)
                .map_err(|source| PairSetupError::Channel {
                    what: "starting the receiver".into(),
                    source,
                })?;
        ChannelSource::threaded(feed, handle)
    } else {
        ChannelSource::inline(backup, &settings.channel)
    };
    let stats = source.stats();
    Ok(BackupEnd {
        source,
        stats,
        peer,
    })
}

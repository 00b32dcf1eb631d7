//! Setting up either end of the pair: transport, handshake, channel thread,
//! and the VM's sink/gate (primary) or source (backup).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_channel::transport::{self, Listener, TransportError};
use ftvm_channel::{Backup, ChannelError, Primary, PrimaryHandle, PrimaryShared, PrimaryStats};
use ftvm_tuning::Settings;
use ftvm_vmm::OutputGate;
use ftvm_vmm::device::Device;

use crate::gate::{GateCounters, gate_pair};
use crate::inline::{ChannelDevice, Inline, InlineEnd, InlineGate};
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

/// Who drives the primary's channel.
#[derive(Debug)]
pub enum PrimaryChannel {
    /// A channel thread (`channel.threaded = true`).
    Threaded(PrimaryHandle),
    /// The vCPU thread, through the sink and the channel device.
    Inline(InlineEnd),
}

impl PrimaryChannel {
    /// After the VM stopped: ships the rest, waits for the last ACK, says goodbye.
    pub fn finish(self) -> Result<PrimaryStats, ChannelError> {
        match self {
            PrimaryChannel::Threaded(h) => h.finish(),
            PrimaryChannel::Inline(i) => i.finish(FINISH_TIMEOUT),
        }
    }

    /// After the VM failed: the channel's own error, if it has one.
    pub fn failure(&mut self) -> Option<ChannelError> {
        match self {
            PrimaryChannel::Threaded(h) if h.is_finished() => h.join().err(),
            PrimaryChannel::Threaded(_) => None,
            PrimaryChannel::Inline(i) => i.take_error(),
        }
    }
}

/// How long an orderly finish waits for the backup's last ACK.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The primary's end: what the VM needs, and who drives the channel.
pub struct PrimaryEnd {
    /// The VM's log sink.
    pub sink: ChannelSink,
    /// The VM's output gate.
    pub gate: Box<dyn OutputGate>,
    /// Inline mode: the device to add to the VM (drives the channel at WAIT exits).
    pub device: Option<Box<dyn Device>>,
    /// The channel (finish it after the VM stopped).
    pub channel: PrimaryChannel,
    /// Positions published by the channel (status, lag).
    pub shared: Arc<PrimaryShared>,
    /// Held / released outputs.
    pub gate_counters: Arc<GateCounters>,
    /// Sink counters (entries, bytes, flow and lag control).
    pub sink_stats: Arc<SinkStats>,
}

impl std::fmt::Debug for PrimaryEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryEnd")
            .field("sink", &self.sink)
            .field("channel", &self.channel)
            .field("inline_device", &self.device.is_some())
            .finish()
    }
}

impl PrimaryEnd {
    /// Wires the sink, gate and (inline) device into `config`; returns the
    /// run mode and the channel to finish after the VM stopped.
    pub fn install(self, config: &mut ftvm_vmm::VmConfig) -> (ftvm_vmm::RunMode, PrimaryChannel) {
        config.gate = self.gate;
        if let Some(d) = self.device {
            config.devices.push(d);
        }
        (ftvm_vmm::RunMode::Record(Box::new(self.sink)), self.channel)
    }
}

/// Connects to the backup at `addr`, handshakes (settings fingerprint and
/// guest image digest must match) and sets up the channel: inline when the
/// transport has a readiness fd (tcp), else — or with `channel.threaded` —
/// on a thread of its own.
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
    let hello = crate::hello(settings, image);
    let handshake = |source| PairSetupError::Channel {
        what: format!("handshake with the backup at {addr}"),
        source,
    };
    let lag_limit = Duration::from_micros(settings.channel.lag_limit_us);
    // Inline needs a readiness fd: a vCPU asleep in the wait port must wake
    // when an ACK arrives. Transports without one (shm, io_uring) get the
    // channel thread, which also does the handshake: a transport is driven
    // by one thread only (io_uring's rings are single-issuer).
    if settings.channel.threaded || t.readable_fd().is_none() {
        let (gate, hook, gate_counters) = gate_pair();
        let (handle, app) =
            Primary::spawn_establish(t, &settings.channel, hello, hook).map_err(handshake)?;
        let shared = handle.shared().clone();
        let sink = ChannelSink::new(app, shared.clone(), lag_limit);
        let sink_stats = sink.stats();
        return Ok(PrimaryEnd {
            sink,
            gate: Box::new(gate),
            device: None,
            channel: PrimaryChannel::Threaded(handle),
            shared,
            gate_counters,
            sink_stats,
        });
    }
    let (primary, app) = Primary::establish(t, &settings.channel, hello).map_err(handshake)?;
    let shared = Arc::new(PrimaryShared::new());
    let gate_counters = Arc::new(GateCounters::default());
    let inline = Arc::new(Mutex::new(Inline::new(
        primary,
        shared.clone(),
        gate_counters.clone(),
    )));
    let sink = ChannelSink::inline(app, inline.clone(), shared.clone(), lag_limit);
    let sink_stats = sink.stats();
    Ok(PrimaryEnd {
        sink,
        gate: Box::new(InlineGate(inline.clone())),
        device: Some(Box::new(ChannelDevice::new(inline.clone()))),
        channel: PrimaryChannel::Inline(InlineEnd(inline)),
        shared,
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
    let hello = crate::hello(settings, image);
    let handshake = |source| PairSetupError::Channel {
        what: format!("handshake with the primary {peer}"),
        source,
    };
    let source = if settings.channel.threaded {
        // The receiver thread does the handshake: one thread drives a transport.
        let (handle, feed) =
            Backup::spawn_establish(t, &settings.channel, hello).map_err(handshake)?;
        ChannelSource::threaded(feed, handle)
    } else {
        let backup = Backup::establish(t, &settings.channel, hello).map_err(handshake)?;
        ChannelSource::inline(backup, &settings.channel)
    };
    let stats = source.stats();
    Ok(BackupEnd {
        source,
        stats,
        peer,
    })
}

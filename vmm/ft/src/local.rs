//! A whole pair in one process — a primary VM serving on a real UDP socket,
//! and (when protected) a backup VM replaying over a real transport — for
//! the demo, the end-to-end benchmark and tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ftvm_channel::{PrimaryStats, transport};
use ftvm_tuning::Settings;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{ConsoleTarget, LogSource, RunMode, RunOutcome, Vm, VmConfig, error_chain};

use crate::{BackupEnd, GateCounters, SinkStats, accept_backup, connect_primary};

/// Wraps the backup's replay source (tests throttle replay with it).
pub type WrapSource = Box<dyn FnOnce(BackupEnd) -> Box<dyn LogSource> + Send>;

/// How a [`LocalPair`] is protected.
pub enum Protection {
    /// No backup: the primary runs live, outputs leave at once.
    Off,
    /// A backup on `listen`; the primary connects to `connect(listen_addr)`
    /// (the same address, or a proxy in front of it). `wrap` may wrap the
    /// backup's log source (tests throttle replay with it).
    On {
        /// Backup's listening address (`127.0.0.1:0`, or an shm name).
        listen: String,
        /// Maps the bound address to the one the primary dials.
        connect: Box<dyn FnOnce(&str) -> String + Send>,
        /// Wraps the replay source.
        wrap: Option<WrapSource>,
    },
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Off => f.write_str("Off"),
            Protection::On { listen, .. } => write!(f, "On({listen})"),
        }
    }
}

impl Protection {
    /// A backup on `listen`, dialled directly.
    pub fn on(listen: &str) -> Protection {
        Protection::On {
            listen: listen.to_string(),
            connect: Box::new(|a| a.to_string()),
            wrap: None,
        }
    }
}

/// A running pair (or lone primary).
#[derive(Debug)]
pub struct LocalPair {
    /// Where clients send requests.
    pub service: SocketAddr,
    /// Outputs held / released (protected only).
    pub gate: Option<Arc<GateCounters>>,
    /// Sink counters (protected only).
    pub sink: Option<Arc<SinkStats>>,
    /// The guest's console output.
    pub console: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    primary: JoinHandle<Result<(RunOutcome, Option<PrimaryStats>), String>>,
    backup: Option<JoinHandle<Result<RunOutcome, String>>>,
}

/// How a [`LocalPair`] ended.
#[derive(Debug)]
pub struct PairOutcome {
    /// The primary VM's run (or its error).
    pub primary: Result<RunOutcome, String>,
    /// The channel's counters (protected, clean finish).
    pub channel: Option<PrimaryStats>,
    /// The backup VM's run (protected only).
    pub backup: Option<Result<RunOutcome, String>>,
}

fn config(
    guest: &str,
    settings: &Settings,
    console: &Arc<Mutex<Vec<u8>>>,
) -> Result<VmConfig, String> {
    let mut c = VmConfig::new(guest, &settings.vmm).map_err(|e| e.to_string())?;
    c.console = ConsoleTarget::Capture(console.clone());
    Ok(c)
}

impl LocalPair {
    /// Starts `guest` serving on a free loopback UDP port, protected or not.
    pub fn start(
        guest: &str,
        settings: &Settings,
        protection: Protection,
    ) -> Result<LocalPair, String> {
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut c = config(guest, settings, &console)?;
        let nic = Nic::new("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
            .map_err(|e| e.to_string())?;
        let service = nic.local_addr().ok_or("the NIC has no address")?;
        c.devices.push(Box::new(nic));
        let stop = c.stop.clone();
        let (mut gate_counters, mut sink_stats, mut backup) = (None, None, None);
        let mode_and_handle = match protection {
            Protection::Off => (RunMode::Live, None),
            Protection::On {
                listen,
                connect,
                wrap,
            } => {
                let mut listener =
                    transport::listen(&settings.channel, &listen).map_err(|e| e.to_string())?;
                let bound = listener.local_addr();
                let sb = settings.clone();
                let bconsole = Arc::new(Mutex::new(Vec::new()));
                let bc = config(guest, settings, &bconsole)?;
                backup = Some(std::thread::spawn(move || {
                    let image = bc.image.clone();
                    let end =
                        accept_backup(&sb, listener.as_mut(), &image, Duration::from_secs(10))
                            .map_err(|e| error_chain(&e))?;
                    let source: Box<dyn LogSource> = match wrap {
                        Some(w) => w(end),
                        None => Box::new(end.source),
                    };
                    Vm::new(bc, RunMode::Replay(source))
                        .and_then(|mut vm| vm.run())
                        .map_err(|e| error_chain(&e))
                }));
                let end = connect_primary(settings, &connect(&bound), &c.image)
                    .map_err(|e| error_chain(&e))?;
                gate_counters = Some(end.gate_counters.clone());
                sink_stats = Some(end.sink_stats.clone());
                let (mode, channel) = end.install(&mut c);
                (mode, Some(channel))
            }
        };
        let (mode, handle) = mode_and_handle;
        let primary = std::thread::spawn(move || {
            let run = Vm::new(c, mode).and_then(|mut vm| vm.run());
            let outcome = match (run, handle) {
                (Ok(o), Some(h)) => {
                    let stats = h
                        .finish()
                        .map_err(|e| format!("primary channel: {}", error_chain(&e)))?;
                    return Ok((o, Some(stats)));
                }
                (Ok(o), None) => o,
                (Err(e), Some(mut h)) => {
                    let channel = h
                        .failure()
                        .map(|ce| format!("; channel: {}", error_chain(&ce)))
                        .unwrap_or_default();
                    return Err(format!("primary VM: {}{channel}", error_chain(&e)));
                }
                (Err(e), None) => return Err(format!("primary VM: {}", error_chain(&e))),
            };
            Ok((outcome, None))
        });
        Ok(LocalPair {
            service,
            gate: gate_counters,
            sink: sink_stats,
            console,
            stop,
            primary,
            backup,
        })
    }

    /// True once the primary VM stopped by itself (guest exit or error).
    pub fn is_finished(&self) -> bool {
        self.primary.is_finished()
    }

    /// True once the backup VM stopped (protected pairs; false otherwise).
    pub fn backup_is_finished(&self) -> bool {
        self.backup.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Stops the primary at its next exit (final checkpoint logged), lets
    /// the channel ship the rest and the backup replay it; returns both ends.
    pub fn stop(self) -> PairOutcome {
        self.stop.store(true, Ordering::Release);
        let (primary, channel) = match self.primary.join() {
            Ok(Ok((o, c))) => (Ok(o), c),
            Ok(Err(e)) => (Err(e), None),
            Err(_) => (Err("primary thread panicked".to_string()), None),
        };
        let backup = self.backup.map(|b| {
            b.join()
                .unwrap_or_else(|_| Err("backup thread panicked".into()))
        });
        PairOutcome {
            primary,
            channel,
            backup,
        }
    }
}

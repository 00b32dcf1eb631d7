//! A whole pair in one process — a primary VM serving on a real UDP socket,
//! and (when protected) a backup VM replaying over a real transport — for
//! the demo, the end-to-end benchmark and tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ftvm_arbiter::{Arbiter, Retry};
use ftvm_channel::{PrimaryStats, transport};
use ftvm_tuning::Settings;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{ConsoleTarget, LogSource, RunMode, RunOutcome, Vm, VmConfig, VmError, error_chain};

use crate::{
    BackupOptions, ChannelSource, DriverShared, GateCounters, PairIdentity, PrimaryOptions,
    SinkStats, accept_backup, claim_generation, connect_primary,
};

/// Wraps the backup's replay source (tests throttle replay with it).
pub type WrapSource = Box<dyn FnOnce(ChannelSource) -> Box<dyn LogSource> + Send>;

/// How a [`LocalPair`] is protected.
pub enum Protection {
    /// No backup: the primary runs live, outputs leave at once.
    Off,
    /// A backup on `listen`; the primary connects to `connect(listen_addr)`
    /// (the same address, or a proxy in front of it). `wrap` may wrap the
    /// backup's log source (tests throttle replay with it). The pair's
    /// arbiter is a fresh `file:` directory of its own. The backup has no
    /// failover plan (a lost primary is an error there); the primary's
    /// driver reacts to a lost backup as always (it goes unprotected).
    On {
        /// Backup's listening address (`127.0.0.1:0`, or an shm name).
        listen: String,
        /// Maps the bound address to the one the primary dials.
        connect: Box<dyn FnOnce(&str) -> String + Send>,
        /// Wraps the replay source.
        wrap: Option<WrapSource>,
    },
    /// A backup in another process, already listening at `connect` (the
    /// ACK-only backup of `bench e2e`, which validates and ACKs without
    /// replaying). The outcome has no backup run.
    External {
        /// The address (or shm name) the primary dials.
        connect: String,
    },
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Off => f.write_str("Off"),
            Protection::On { listen, .. } => write!(f, "On({listen})"),
            Protection::External { connect } => write!(f, "External({connect})"),
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
    /// The primary driver's state (protected only).
    pub driver: Option<Arc<DriverShared>>,
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
    let mut c = VmConfig::new(guest, &settings.vmm).map_err(|e| ftvm_vmm::error_chain(&e))?;
    c.console = ConsoleTarget::Capture(console.clone());
    Ok(c)
}

/// A `file:` arbiter in a fresh temporary directory (one per local pair).
fn local_arbiter() -> Result<Arc<dyn Arbiter>, String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ftvm-local-arbiter-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    ftvm_arbiter::open(&format!("file:{}", dir.display()))
        .map(Arc::from)
        .map_err(|e| ftvm_vmm::error_chain(&e))
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
            .map_err(|e| ftvm_vmm::error_chain(&e))?;
        let service = nic.local_addr().ok_or("the NIC has no address")?;
        c.devices.push(Box::new(nic));
        let stop = c.stop.clone();
        let (mut gate_counters, mut sink_stats, mut driver, mut backup) = (None, None, None, None);
        let dial = match protection {
            Protection::Off => None,
            Protection::External { connect } => Some(connect),
            Protection::On {
                listen,
                connect,
                wrap,
            } => {
                let mut listener = transport::listen(&settings.channel, &listen)
                    .map_err(|e| ftvm_vmm::error_chain(&e))?;
                let bound = listener.local_addr();
                let sb = settings.clone();
                let bconsole = Arc::new(Mutex::new(Vec::new()));
                let mut bc = config(guest, settings, &bconsole)?;
                let opts = BackupOptions {
                    guest: guest.to_string(),
                    ..BackupOptions::default()
                };

                backup = Some(std::thread::spawn(move || {
                    let image = bc.image.clone();
                    let end = accept_backup(
                        &sb,
                        listener.as_mut(),
                        &image,
                        &opts,
                        Duration::from_secs(10),
                    )
                    .map_err(|e| error_chain(&e))?;
                    let source = end.install(&mut bc, None);
                    let source: Box<dyn LogSource> = match wrap {
                        Some(w) => w(source),
                        None => Box::new(source),
                    };
                    Vm::new(bc, RunMode::Replay(source))
                        .map_err(VmError::from)
                        .and_then(|mut vm| vm.run())
                        .map_err(|e| error_chain(&e))
                }));
                Some(connect(&bound))
            }
        };
        let mode = match dial {
            None => RunMode::Live,
            Some(dial) => {
                let arbiter = local_arbiter()?;
                let vm = format!("{guest}-{}", service.port());
                let candidate = crate::candidate("primary", &service.to_string());
                let generation = claim_generation(arbiter.as_ref(), &vm, &candidate)
                    .map_err(|e| error_chain(&e))?;
                let stop2 = stop.clone();
                let opts = PrimaryOptions {
                    pair: PairIdentity {
                        vm,
                        generation,
                        candidate,
                        arbiter,
                        retry: Retry::default(),
                    },
                    guest: guest.to_string(),
                    guest_arg: c.guest_arg,
                    give_up: Arc::new(move || stop2.load(Ordering::Relaxed)),
                };
                let end = connect_primary(settings, &dial, &c.image, opts)
                    .map_err(|e| error_chain(&e))?;
                gate_counters = Some(end.gate_counters.clone());
                sink_stats = Some(end.sink_stats.clone());
                driver = Some(end.shared.clone());
                RunMode::Record(Box::new(end.install(&mut c)))
            }
        };
        let shared = driver.clone();
        let primary = std::thread::spawn(move || {
            let run = Vm::new(c, mode)
                .map_err(VmError::from)
                .and_then(|mut vm| vm.run());
            match run {
                Ok(o) => Ok((o, shared.and_then(|s| s.channel_stats()))),
                Err(e) => Err(format!("primary VM: {}", error_chain(&e))),
            }
        });
        Ok(LocalPair {
            service,
            gate: gate_counters,
            sink: sink_stats,
            driver,
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

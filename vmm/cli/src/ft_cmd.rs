//! The fault-tolerant pair from the command line: `ftvm backup`, the
//! `--backup` path of `ftvm primary`, and `ftvm status`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ftvm_arbiter::{Arbiter, Retry};
use ftvm_channel::transport;
use ftvm_ft::{
    BackupOptions, FloatingIp, PairIdentity, PrimaryEnd, PrimaryOptions, Protection,
    ServiceTakeover, StandbyPlan, accept_backup, claim_generation, connect_primary,
};
use ftvm_tuning::Settings;
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{RunMode, RunOutcome, StopReason, Vm, VmConfig};
use ftvm_wire::control::StopCause;

use crate::channel_cmd::with_transport;
use ftvm_ft::events::notice;

/// Where the pair's generations are decided, and under which name.
#[derive(Debug, Clone, clap::Args)]
pub struct PairArgs {
    /// Arbiter deciding generations: `file:DIR` (one host or a shared NFS
    /// directory) or `etcd:http://HOST:PORT[,...]`. Default: a per-user
    /// runtime directory on this host (printed at start).
    #[arg(long, value_name = "URL")]
    pub arbiter: Option<String>,
    /// Name of the protected VM at the arbiter (default: derived from the
    /// guest and the primary's service address; a backup adopts the primary's).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// A floating service address this side adds to `--service-dev` while it
    /// is live (announced by gratuitous ARP) and removes when it stops or loses.
    #[arg(long, value_name = "IP/PREFIX", requires = "service_dev")]
    pub service_ip: Option<String>,
    /// The device the floating service address lives on.
    #[arg(long, value_name = "DEV", requires = "service_ip")]
    pub service_dev: Option<String>,
}

impl PairArgs {
    fn arbiter(&self, role: &str) -> anyhow::Result<Arc<dyn Arbiter>> {
        let url = self
            .arbiter
            .clone()
            .unwrap_or_else(ftvm_arbiter::default_url);
        let a: Arc<dyn Arbiter> = Arc::from(ftvm_arbiter::open(&url)?);
        let scope = if self.arbiter.is_none() {
            " (the default: this host only — a pair on two hosts needs --arbiter with a shared directory or etcd)"
        } else {
            ""
        };
        notice(role, &format!("arbiter {}{scope}", a.url()));
        Ok(a)
    }

    fn floating(&self) -> anyhow::Result<Option<FloatingIp>> {
        match (&self.service_ip, &self.service_dev) {
            (Some(ip), Some(dev)) => Ok(Some(FloatingIp::parse(ip, dev)?)),
            _ => Ok(None),
        }
    }
}

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
    /// UDP address this backup serves once live (bound at start). Without
    /// it (and without --service-ip) the backup cannot serve after failover.
    #[arg(long, value_name = "ADDR")]
    pub service: Option<String>,
    /// The shared disk (the primary's --disk): writes the primary had not
    /// confirmed are re-issued at go-live. --disk-mode local: this side's own copy.
    #[arg(long, value_name = "FILE")]
    pub disk: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub pair: PairArgs,
    /// Do not re-send, at go-live, the replies whose release by the
    /// primary was not confirmed (clients then wait for their retry).
    #[arg(long)]
    pub no_resend: bool,
    /// Serve status (JSON) on this TCP address (`ftvm status ADDR`).
    #[arg(long)]
    pub status: Option<String>,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (docs/operations.md).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Seconds to wait for a primary.
    #[arg(long, default_value_t = 3600)]
    pub wait_secs: u64,
    /// Wait as a spare: a live side (`ftvm primary --spare ADDR`, or a
    /// backup that went live) transfers its running state to this side,
    /// which then replays its log from there (tcp; `--listen` is the TCP
    /// address). With --vm the spare registers at the arbiter, where
    /// `--find-spares` finds it.
    #[arg(long)]
    pub as_spare: bool,
    /// Once live, take the spare at ADDR (`ftvm backup --as-spare --listen
    /// ADDR`) as the next backup: live state transfer, then protected
    /// again; again whenever that backup is lost.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub spare: Vec<String>,
    /// Once live, also take the spares registered at the arbiter under the VM's name.
    #[arg(long)]
    pub find_spares: bool,
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

/// Resolves a `host:port` service address.
pub fn resolve_service(flag: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("{flag} {addr}: not an address"))?
        .next()
        .with_context(|| format!("{flag} {addr}: resolves to no address"))
}

/// The default VM name: the guest and the primary's service address, in
/// the characters the arbiter allows.
fn default_vm_name(guest: &str, service: Option<SocketAddr>) -> String {
    let at = service.map_or_else(|| "noservice".to_string(), |s| s.to_string());
    format!("{guest}-{at}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// How the primary is protected.
#[derive(Debug, Clone)]
pub enum Protect {
    /// By the backup at `addr` (`--backup`), over `transport`.
    Backup {
        /// The backup's address.
        addr: String,
        /// `--transport`.
        transport: Option<String>,
    },
    /// Unprotected at first; spares join (`--spare`, `--find-spares`).
    Spares(ftvm_ft::rejoin::SpareSources),
}

/// Runs `c` as the primary of a pair with the backup at `backup`; every
/// output waits for the backup's ACK. A lost backup makes the primary race
/// for the next generation: won, it runs on unprotected; lost, it stops
/// releasing nothing. Returns the VM's outcome.
#[allow(clippy::too_many_arguments)]
pub fn run_primary(
    mut c: VmConfig,
    settings: &Settings,
    protect: &Protect,
    status_addr: Option<&str>,
    metrics: Option<ftvm_ft::metrics::MetricsEndpoint>,
    record_log: Option<&std::path::Path>,
    pair: &PairArgs,
    floating: Option<&FloatingIp>,
    service: Option<SocketAddr>,
) -> anyhow::Result<RunOutcome> {
    let transport_name = match protect {
        Protect::Backup { transport, .. } => transport.as_deref(),
        Protect::Spares(_) => Some("tcp"),
    };
    let s = with_transport(settings, transport_name)?;
    let arbiter = pair.arbiter("primary")?;
    let vm = pair
        .vm
        .clone()
        .unwrap_or_else(|| default_vm_name(&c.guest, service));
    let service = service.map_or_else(|| "-".to_string(), |a| a.to_string());
    let candidate = ftvm_ft::candidate("primary", &service);
    // Status is served (and its address checked) before the generation is
    // claimed and the pair forms: `connecting` until then.
    let claimed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let view = Arc::new(std::sync::OnceLock::<ftvm_ft::status::PrimaryView>::new());
    if let Some(addr) = status_addr {
        let (view, vm, claimed) = (view.clone(), vm.clone(), claimed.clone());
        let local = ftvm_ft::status::serve(
            addr,
            Arc::new(move || {
                let mut v = serde_json::json!({"role": "primary", "vm": vm, "mode": "record"});
                let report = match view.get() {
                    Some(view) => serde_json::to_value(view.report()),
                    None => Ok(serde_json::json!({
                        "protection": "connecting",
                        // Relaxed: a reporting value.
                        "generation": claimed.load(Ordering::Relaxed),
                    })),
                };
                if let (Some(o), Ok(serde_json::Value::Object(r))) = (v.as_object_mut(), report) {
                    o.extend(r);
                }
                v
            }),
        )
        .with_context(|| format!("--status {addr}: serving status"))?;
        notice("primary", &format!("status on {local}"));
    }
    let generation = claim_generation(arbiter.as_ref(), &vm, &candidate)?;
    // Relaxed: read only for status.
    claimed.store(generation, Ordering::Relaxed);
    let stop = c.stop.clone();
    let opts = PrimaryOptions {
        pair: PairIdentity {
            vm: vm.clone(),
            generation,
            candidate,
            arbiter,
            retry: Retry::default(),
        },
        guest: c.guest.clone(),
        guest_arg: c.guest_arg,
        give_up: Arc::new(move || stop.load(Ordering::Relaxed)),
    };
    let (end, reprotect): (PrimaryEnd, _) = match protect {
        Protect::Backup { addr, .. } => {
            let end = connect_primary(&s, addr, &c.image, opts)?;
            notice(
                "primary",
                &format!(
                    "VM {vm:?} at generation {generation}, protected by the backup at {addr} ({})",
                    s.channel.transport.name()
                ),
            );
            (end, None)
        }
        Protect::Spares(spares) => {
            let (end, r) = ftvm_ft::rejoin::unprotected_primary(&s, &c.image, opts)?;
            notice(
                "primary",
                &format!(
                    "VM {vm:?} at generation {generation}, UNPROTECTED until a spare joins ({})",
                    if spares.list.is_empty() {
                        "spares registered at the arbiter".to_string()
                    } else {
                        spares.list.join(", ")
                    }
                ),
            );
            (end, Some((r, spares.clone())))
        }
    };
    let (shared, gate_counters, sink_stats) = (
        end.shared.clone(),
        end.gate_counters.clone(),
        end.sink_stats.clone(),
    );
    let primary_view = ftvm_ft::status::PrimaryView::of(&end, s.channel.lag_limit_us);
    let _ = view.set(primary_view.clone());
    if let Some(m) = metrics {
        let view = ftvm_ft::metrics::PrimaryMetrics::new(&vm, primary_view);
        let local = m.serve(Arc::new(move || view.encode()))?;
        notice("primary", &format!("metrics on http://{local}/metrics"));
    }
    let sink = end.install(&mut c);
    let sink: Box<dyn ftvm_vmm::LogSink> = match record_log {
        Some(path) => Box::new(ftvm_ft::TeeSink::new(
            sink,
            ftvm_vmm::LogFileWriter::create(path)?,
        )),
        None => Box::new(sink),
    };
    let run = Vm::new(c, RunMode::Record(sink)).and_then(|mut vm| {
        if let Some((r, spares)) = reprotect {
            r.spawn(
                vm.control(),
                spares,
                ftvm_vmm::transfer::PrecopyConfig::default(),
            )
            .map_err(|e| ftvm_vmm::VmError::DeviceSetup {
                device: "reprotect",
                detail: format!("starting the re-protection thread: {e}"),
            })?;
        }
        vm.run()
    });
    let give_back = |why: &str| {
        if let Some(f) = floating
            && let Err(e) = f.remove()
        {
            notice("primary", &format!("{why}: {}", ftvm_vmm::error_chain(&e)));
        }
    };
    let outcome = match run {
        Ok(o) => o,
        Err(e) => {
            give_back("giving back the service address");
            return Err(anyhow::Error::from(e).context(match shared.protection() {
                Protection::Lost => format!(
                    "VM {vm:?}: this primary lost its generation; outputs not ACKed stay held"
                ),
                _ => format!("VM {vm:?}: the primary stopped"),
            }));
        }
    };
    let r = Ordering::Relaxed;
    match shared.channel_stats() {
        Some(stats) => notice(
            "primary",
            &format!(
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
            ),
        ),
        None => notice(
            "primary",
            &format!(
                "stopped {} at generation {} ({}); outputs released {}",
                shared.protection().name(),
                shared.generation(),
                shared.note(),
                gate_counters.released.load(r)
            ),
        ),
    }
    give_back("giving back the service address");
    Ok(outcome)
}

/// `ftvm backup --as-spare`: builds the VM, waits for a live side's state on
/// `--listen` (registered at the arbiter with --vm) and attaches its log.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn spare_vm(
    c: VmConfig,
    s: &Settings,
    a: &BackupArgs,
    image: &[u8],
    opts: &BackupOptions,
    arbiter: &Arc<dyn Arbiter>,
    stop: &Arc<AtomicBool>,
    control: &std::sync::OnceLock<ftvm_vmm::VmControl>,
    plan: impl FnOnce(&str) -> StandbyPlan,
) -> anyhow::Result<(
    Vm,
    String,
    ftvm_wire::control::Hello,
    Arc<ftvm_ft::SourceStats>,
    ftvm_ft::Stopper,
)> {
    let listener = std::net::TcpListener::bind(&a.listen)
        .with_context(|| format!("--listen {}: binding the spare's TCP listener", a.listen))?;
    let local = listener.local_addr()?.to_string();
    let mut vm = Vm::new(c, RunMode::Replay(Box::new(ftvm_ft::spare::Unattached)))?;
    let _ = control.set(vm.control());
    let _registration = match &a.pair.vm {
        Some(name) => {
            let r = ftvm_ft::spare::SpareRegistration::register(arbiter.clone(), name, &local)
                .with_context(|| format!("registering spare {local} of VM {name:?}"))?;
            notice(
                "backup",
                &format!(
                    "spare {local} of VM {name:?} registered at {}",
                    arbiter.url()
                ),
            );
            Some(r)
        }
        None => None,
    };
    notice(
        "backup",
        &format!("waiting as a SPARE on {local} (tcp) for a live side's state"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(a.wait_secs);
    let give_up = || stop.load(Ordering::Relaxed) || std::time::Instant::now() > deadline;
    let backing = ftvm_ft::spare::join_as_backup(
        s,
        &listener,
        &mut vm,
        image,
        opts,
        plan(&local),
        &give_up,
        |peer, e| {
            notice(
                "backup",
                &format!(
                    "refused a transfer from {peer}: {}",
                    ftvm_vmm::error_chain(e)
                ),
            );
        },
    )?;
    let r = &backing.report;
    notice(
        "backup",
        &format!(
            "took the state of {}: {} bytes, {} pages ({} zero), join at exit {} (seq {}), digest {:016x}",
            backing.peer, r.bytes, r.pages, r.zero_pages, r.ordinal, r.next_seq, r.digest.digest
        ),
    );
    Ok((
        vm,
        backing.peer.to_string(),
        backing.hello,
        backing.stats,
        backing.stopper,
    ))
}

/// `ftvm backup`: waits for a primary, replays its log as it arrives, and
/// goes live if the primary is lost and this side wins the next generation.
pub fn run_backup(a: BackupArgs, settings: &Settings) -> anyhow::Result<RunOutcome> {
    let s = with_transport(settings, a.transport.as_deref())?;
    let mut c = VmConfig::new(&a.guest, &s.vmm)?;
    c.guest_arg = a.arg;
    c.disk = a.disk.clone();
    let floating = a.pair.floating()?;
    let service = a
        .service
        .as_deref()
        .map(|addr| resolve_service("--service", addr))
        .transpose()?;
    // The standby NIC: its socket is reserved now (a busy address fails
    // here, not at failover) unless a floating address must come first.
    let reserve = if floating.is_some() { None } else { service };
    let (nic, attach) = Nic::standby(reserve)?;
    c.devices.push(Box::new(nic));
    let arbiter = a.pair.arbiter("backup")?;
    if a.as_spare && s.channel.transport != ftvm_tuning::TransportKind::Tcp {
        anyhow::bail!(
            "--as-spare takes the state and the log over tcp, not {} (leave out --transport)",
            s.channel.transport.name()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let opts = BackupOptions {
        guest: a.guest.clone(),
        guest_arg: a.arg,
        vm: a.pair.vm.clone(),
        status: Arc::new(ftvm_ft::BackupStatus::default()),
    };
    if let Some(addr) = &a.metrics {
        let local = ftvm_ft::metrics::serve_backup("--metrics", addr, opts.status.clone())?;
        notice("backup", &format!("metrics on http://{local}/metrics"));
    }
    if let Some(addr) = &a.status {
        let status = opts.status.clone();
        let local = ftvm_ft::status::serve(
            addr,
            Arc::new(move || {
                let r = Ordering::Relaxed;
                let st = &status.replay;
                serde_json::json!({
                    "role": "backup",
                    "vm": status.vm(),
                    "generation": status.generation(),
                    "phase": status.phase().name(),
                    "exit_ordinal": st.exit_ordinal.load(r),
                    "last_seq_replayed": st.replayed.load(r),
                    "received_not_replayed": st.backlog.load(r),
                    "failover": status.timeline(),
                    // Live and recording for a next backup (--spare, --find-spares).
                    "protection": status.live().map(|l| l.shared.protection().name()),
                    "live": status.live().map(|l| l.report()),
                })
            }),
        )
        .with_context(|| format!("serving status on {addr}"))?;
        notice("backup", &format!("status on {local}"));
    }
    // A signal stops the backup at the next exit boundary it reaches.
    c.stop = stop.clone();
    let image = c.image.clone();
    let reserved = attach.reserved_addr();
    let stop2 = stop.clone();
    let control = Arc::new(std::sync::OnceLock::new());
    let reprotect =
        (!a.spare.is_empty() || a.find_spares).then(|| ftvm_ft::rejoin::ReprotectPlan {
            settings: s.clone(),
            image: Arc::from(&image[..]),
            guest: a.guest.clone(),
            guest_arg: a.arg,
            spares: ftvm_ft::rejoin::SpareSources {
                list: a.spare.clone(),
                registered: a.find_spares,
            },
            precopy: ftvm_vmm::transfer::PrecopyConfig::default(),
            control: control.clone(),
        });
    let plan = |listen: &str| StandbyPlan {
        arbiter: arbiter.clone(),
        candidate: ftvm_ft::candidate("backup", listen),
        retry: Retry::default(),
        service: ServiceTakeover {
            nic: Some(attach),
            addr: service,
            floating: floating.clone(),
        },
        resend_replies: !a.no_resend,
        give_up: Arc::new(move || stop2.load(Ordering::Relaxed)),
        reprotect,
    };
    let (mut vm, peer, hello, stats, stopper) = if a.as_spare {
        spare_vm(c, &s, &a, &image, &opts, &arbiter, &stop, &control, plan)?
    } else {
        let mut listener = transport::listen(&s.channel, &a.listen)?;
        notice(
            "backup",
            &format!(
                "waiting for a primary on {} ({})",
                listener.local_addr(),
                s.channel.transport.name()
            ),
        );
        let end = accept_backup(
            &s,
            listener.as_mut(),
            &image,
            &opts,
            Duration::from_secs(a.wait_secs),
        )?;
        let (peer, hello, stats, stopper) = (
            end.peer.clone(),
            end.hello.clone(),
            end.stats.clone(),
            end.stopper.clone(),
        );
        let source = end.install(&mut c, Some(plan(&listener.local_addr())));
        let vm = Vm::new(c, RunMode::Replay(Box::new(source)))?;
        let _ = control.set(vm.control());
        (vm, peer, hello, stats, stopper)
    };
    let status = opts.status.clone();
    let serves = match (&floating, service.or(reserved)) {
        (Some(f), Some(addr)) => format!("{} (floating, port {})", f.ip, addr.port()),
        (Some(f), None) => format!("{} (floating)", f.ip),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "nothing (no --service)".to_string(),
    };
    notice(
        "backup",
        &format!(
            "replaying the log of {peer} — VM {:?} at generation {}; if the primary is lost, this backup races for generation {} and serves {serves}",
            hello.vm,
            hello.generation,
            hello.generation + 1,
        ),
    );
    let run = vm.run();
    // Tell the primary why replay stopped (a Stop frame when the VM is
    // dropped), unless it ended with the primary's own goodbye.
    match &run {
        Ok(o) if o.reason == StopReason::PrimaryStopped => {}
        Ok(o) => stopper.set(
            StopCause::Requested,
            format!(
                "the backup was stopped at exit {} (state digest {:016x})",
                o.exits, o.state.digest
            ),
        ),
        Err(e) => {
            let cause = if e.is_divergence() {
                StopCause::Diverged
            } else {
                StopCause::Failed
            };
            stopper.set(cause, ftvm_vmm::error_chain(e));
        }
    }
    drop(vm);
    if status.phase() == ftvm_ft::BackupPhase::Live
        && let Some(f) = &floating
        && let Err(e) = f.remove()
    {
        notice(
            "backup",
            &format!(
                "giving back the service address: {}",
                ftvm_vmm::error_chain(&e)
            ),
        );
    }
    let outcome = run?;
    if outcome.reason == StopReason::Requested {
        notice(
            "backup",
            &format!(
                "stopped on request ({}) at exit {}, last seq replayed {}",
                status.phase().name(),
                outcome.exits,
                stats.replayed.load(Ordering::Relaxed)
            ),
        );
    }
    Ok(outcome)
}

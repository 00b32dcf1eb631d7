//! The backup of a pair (`ftvm backup`), or a spare waiting for a live
//! side's state (`ftvm backup --as-spare`).

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ftvm_arbiter::{Arbiter, Retry};
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::devices::net::Nic;
use ftvm_vmm::{RunMode, RunOutcome, StopReason, Vm, VmConfig, VmControl};
use ftvm_wire::control::{Hello, StopCause};

use super::{NodeError, PairConfig};
use crate::events::notice;
use crate::rejoin::{ReprotectPlan, SpareSources};
use crate::{
    BackupOptions, BackupPhase, BackupStatus, ServiceTakeover, SourceStats, StandbyPlan, Stopper,
};

/// Everything a backup runs with, besides its VM (whose `stop` flag, set by
/// a signal, stops it at the next exit boundary).
#[derive(Debug)]
pub struct BackupNode {
    /// The settings (`channel.transport` is the pair's transport).
    pub settings: Settings,
    /// Where to wait for the primary: host:port (tcp, uring) or a name (shm);
    /// a spare's TCP address.
    pub listen: String,
    /// The UDP address served once live (bound at start unless a floating
    /// address must come first).
    pub service: Option<SocketAddr>,
    /// The arbiter, the VM's name (a spare registers under it) and the
    /// floating service address.
    pub pair: PairConfig,
    /// Re-send, at go-live, the replies whose release was not confirmed.
    pub resend_replies: bool,
    /// Serve status (JSON) on this TCP address.
    pub status: Option<String>,
    /// Serve metrics on this address.
    pub metrics: Option<String>,
    /// How long to wait for a primary (or a live side's state).
    pub wait: Duration,
    /// Wait as a spare: take a live side's running state, then its log.
    pub as_spare: bool,
    /// Once live, take these spares as the next backup.
    pub spares: SpareSources,
}

/// What either way of becoming a backup hands to the run.
struct Backing {
    vm: Vm,
    peer: String,
    hello: Hello,
    stats: Arc<SourceStats>,
    stopper: Stopper,
}

/// Runs `c` as the backup: waits for a primary (or, as a spare, for a live
/// side's state), replays its log as it arrives, and goes live if the
/// primary is lost and this side wins the next generation.
pub fn run_backup(mut c: VmConfig, node: BackupNode) -> Result<RunOutcome, NodeError> {
    let s = &node.settings;
    if node.as_spare && s.channel.transport != TransportKind::Tcp {
        return Err(NodeError::SpareTransport(s.channel.transport.name()));
    }
    let floating = node.pair.floating.clone();
    // The standby NIC: its socket is reserved now (a busy address fails
    // here, not at failover) unless a floating address must come first.
    let reserve = if floating.is_some() {
        None
    } else {
        node.service
    };
    let (nic, attach) = Nic::standby(reserve)?;
    c.devices.push(Box::new(nic));
    let arbiter = node.pair.open_arbiter("backup")?;
    let opts = BackupOptions {
        guest: c.guest.clone(),
        guest_arg: c.guest_arg,
        vm: node.pair.vm.clone(),
        status: Arc::new(BackupStatus::default()),
    };
    if let Some(addr) = &node.metrics {
        let local = crate::metrics::serve_backup("--metrics", addr, opts.status.clone())?;
        notice("backup", &format!("metrics on http://{local}/metrics"));
    }
    if let Some(addr) = &node.status {
        let local = serve_status(addr, opts.status.clone())?;
        notice("backup", &format!("status on {local}"));
    }
    let stop = c.stop.clone();
    let image = c.image.clone();
    let reserved = attach.reserved_addr();
    let control = Arc::new(OnceLock::new());
    let spares = &node.spares;
    let reprotect = (!spares.list.is_empty() || spares.registered).then(|| ReprotectPlan {
        settings: s.clone(),
        image: Arc::from(&image[..]),
        guest: c.guest.clone(),
        guest_arg: c.guest_arg,
        spares: spares.clone(),
        precopy: ftvm_vmm::transfer::PrecopyConfig::default(),
        control: control.clone(),
    });
    let give_up = stop.clone();
    let plan = |listen: &str| StandbyPlan {
        arbiter: arbiter.clone(),
        candidate: crate::candidate("backup", listen),
        retry: Retry::default(),
        service: ServiceTakeover {
            nic: Some(attach),
            addr: node.service,
            floating: floating.clone(),
        },
        resend_replies: node.resend_replies,
        give_up: Arc::new(move || give_up.load(Ordering::Relaxed)),
        reprotect,
    };
    let b = if node.as_spare {
        spare(c, &node, &image, &opts, &arbiter, &stop, &control, plan)?
    } else {
        let mut listener =
            ftvm_channel::transport::listen(&s.channel, &node.listen).map_err(|source| {
                crate::PairSetupError::Transport {
                    what: format!("listening on {}", node.listen),
                    source,
                }
            })?;
        let transport = s.channel.transport.name();
        let local = listener.local_addr();
        notice(
            "backup",
            &format!("waiting for a primary on {local} ({transport})"),
        );
        let end = crate::accept_backup(s, listener.as_mut(), &image, &opts, node.wait)?;
        let (peer, hello) = (end.peer.clone(), end.hello.clone());
        let (stats, stopper) = (end.stats.clone(), end.stopper.clone());
        let source = end.install(&mut c, Some(plan(&local)));
        let vm = Vm::new(c, RunMode::Replay(Box::new(source)))?;
        let _ = control.set(vm.control());
        Backing {
            vm,
            peer,
            hello,
            stats,
            stopper,
        }
    };
    let status = opts.status.clone();
    let serves = match (&floating, node.service.or(reserved)) {
        (Some(f), Some(addr)) => format!("{} (floating, port {})", f.ip, addr.port()),
        (Some(f), None) => format!("{} (floating)", f.ip),
        (None, Some(addr)) => addr.to_string(),
        (None, None) => "nothing (no --service)".to_string(),
    };
    let (vm_name, generation) = (&b.hello.vm, b.hello.generation);
    notice(
        "backup",
        &format!(
            "replaying the log of {} — VM {vm_name:?} at generation {generation}; if the primary is lost, this backup races for generation {} and serves {serves}",
            b.peer,
            generation + 1,
        ),
    );
    let Backing {
        mut vm,
        stats,
        stopper,
        ..
    } = b;
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
        Err(e) if e.is_divergence() => stopper.set(StopCause::Diverged, ftvm_vmm::error_chain(e)),
        Err(e) => stopper.set(StopCause::Failed, ftvm_vmm::error_chain(e)),
    }
    drop(vm);
    if status.phase() == BackupPhase::Live
        && let Some(f) = &floating
        && let Err(e) = f.remove()
    {
        let e = ftvm_vmm::error_chain(&e);
        notice("backup", &format!("giving back the service address: {e}"));
    }
    let outcome = run?;
    if outcome.reason == StopReason::Requested {
        notice(
            "backup",
            &format!(
                "stopped on request ({}) at exit {}, last seq replayed {}",
                status.phase().name(),
                outcome.exits,
                stats.replayed.get()
            ),
        );
    }
    Ok(outcome)
}

/// `--as-spare`: builds the VM, waits for a live side's state on the TCP
/// address `--listen` (registered at the arbiter under the VM's name, when
/// given) and attaches its log.
#[allow(clippy::too_many_arguments)]
fn spare(
    c: VmConfig,
    node: &BackupNode,
    image: &[u8],
    opts: &BackupOptions,
    arbiter: &Arc<dyn Arbiter>,
    stop: &Arc<AtomicBool>,
    control: &OnceLock<VmControl>,
    plan: impl FnOnce(&str) -> StandbyPlan,
) -> Result<Backing, NodeError> {
    let listen = &node.listen;
    let what = format!("--listen {listen}: binding the spare's TCP listener");
    let listener = TcpListener::bind(listen).map_err(NodeError::setup(what))?;
    let local = (listener.local_addr())
        .map_err(NodeError::setup("reading the spare's address"))?
        .to_string();
    let mut vm = Vm::new(c, RunMode::Replay(Box::new(crate::spare::Unattached)))?;
    let _ = control.set(vm.control());
    let _registration = match &node.pair.vm {
        Some(name) => {
            let r = crate::spare::SpareRegistration::register(arbiter.clone(), name, &local)
                .map_err(|source| crate::PairSetupError::Arbiter {
                    what: format!("registering spare {local} of VM {name:?}"),
                    arbiter: arbiter.url(),
                    source,
                })?;
            let at = arbiter.url();
            notice(
                "backup",
                &format!("spare {local} of VM {name:?} registered at {at}"),
            );
            Some(r)
        }
        None => None,
    };
    notice(
        "backup",
        &format!("waiting as a SPARE on {local} (tcp) for a live side's state"),
    );
    let deadline = Instant::now() + node.wait;
    let give_up = || stop.load(Ordering::Relaxed) || Instant::now() > deadline;
    let backing = crate::spare::join_as_backup(
        &node.settings,
        &listener,
        &mut vm,
        image,
        opts,
        plan(&local),
        &give_up,
        |peer, e| {
            let why = ftvm_vmm::error_chain(e);
            notice("backup", &format!("refused a transfer from {peer}: {why}"));
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
    Ok(Backing {
        vm,
        peer: backing.peer.to_string(),
        hello: backing.hello,
        stats: backing.stats,
        stopper: backing.stopper,
    })
}

/// Serves the backup's status: its phase, replay position, failover
/// timeline and, once live, its own protection.
fn serve_status(addr: &str, status: Arc<BackupStatus>) -> Result<String, NodeError> {
    let snapshot = move || {
        let st = &status.replay;
        serde_json::json!({
            "role": "backup",
            "vm": status.vm(),
            "generation": status.generation(),
            "phase": status.phase().name(),
            "exit_ordinal": st.exit_ordinal.get(),
            "last_seq_replayed": st.replayed.get(),
            "received_not_replayed": st.backlog.get(),
            "failover": status.timeline(),
            // Live and recording for a next backup (--spare, --find-spares).
            "protection": status.live().map(|l| l.shared.protection().name()),
            "live": status.live().map(|l| l.report()),
        })
    };
    crate::status::serve(addr, Arc::new(snapshot))
        .map_err(NodeError::setup(format!("--status {addr}: serving status")))
}

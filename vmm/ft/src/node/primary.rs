//! The primary of a pair (`ftvm primary --backup ADDR | --spare ADDR | --find-spares`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ftvm_arbiter::Retry;
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::{LogSink, RunMode, RunOutcome, Vm, VmConfig};

use super::{NodeError, PairConfig, default_vm_name};
use crate::events::notice;
use crate::metrics::{MetricsEndpoint, PrimaryMetrics};
use crate::rejoin::SpareSources;
use crate::status::PrimaryView;
use crate::{PairIdentity, PrimaryEnd, PrimaryOptions, Protection, TeeSink};

/// How the primary is protected.
#[derive(Debug, Clone)]
pub enum Protect {
    /// By the backup listening at this address, over the settings' transport.
    Backup(String),
    /// Unprotected at first; spares join (over tcp), again whenever the
    /// backup is lost.
    Spares(SpareSources),
}

/// Everything a primary of a pair runs with, besides its VM.
#[derive(Debug)]
pub struct PrimaryNode {
    /// The settings (`channel.transport` is the pair's transport).
    pub settings: Settings,
    /// Who protects it.
    pub protect: Protect,
    /// Serve status (JSON) on this TCP address.
    pub status: Option<String>,
    /// Serve metrics here (bound by the caller, so a busy address fails first).
    pub metrics: Option<MetricsEndpoint>,
    /// Also write the log into this file.
    pub record_log: Option<PathBuf>,
    /// The arbiter, the VM's name and the floating address (already added
    /// and announced: the primary is live from the start).
    pub pair: PairConfig,
    /// The service address (for the default VM name and the notices).
    pub service: Option<SocketAddr>,
}

/// Runs `c` as the primary of a pair: every output waits for the backup's
/// ACK. A lost backup makes the primary race for the next generation: won,
/// it runs on unprotected (and takes the next spare, with
/// [`Protect::Spares`]); lost, it stops releasing nothing. The floating
/// address, if any, is given back when it stops.
pub fn run_primary(mut c: VmConfig, node: PrimaryNode) -> Result<RunOutcome, NodeError> {
    let PrimaryNode {
        mut settings,
        protect,
        status,
        metrics,
        record_log,
        pair,
        service,
    } = node;
    if let Protect::Spares(_) = protect {
        settings.channel.transport = TransportKind::Tcp;
    }
    let s = settings;
    let arbiter = pair.open_arbiter("primary")?;
    let vm = pair
        .vm
        .clone()
        .unwrap_or_else(|| default_vm_name(&c.guest, service));
    let service_name = service.map_or_else(|| "-".to_string(), |a| a.to_string());
    let candidate = crate::candidate("primary", &service_name);
    // Status is served (and its address checked) before the generation is
    // claimed and the pair forms: `connecting` until then.
    let claimed = Arc::new(AtomicU64::new(0));
    let view = Arc::new(OnceLock::<PrimaryView>::new());
    if let Some(addr) = &status {
        let local = serve_status(addr, &vm, view.clone(), claimed.clone())?;
        notice("primary", &format!("status on {local}"));
    }
    let generation = crate::claim_generation(arbiter.as_ref(), &vm, &candidate)?;
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
        Protect::Backup(addr) => {
            let end = crate::connect_primary(&s, &addr, &c.image, opts)?;
            let transport = s.channel.transport.name();
            notice(
                "primary",
                &format!(
                    "VM {vm:?} at generation {generation}, protected by the backup at {addr} ({transport})"
                ),
            );
            (end, None)
        }
        Protect::Spares(spares) => {
            let (end, r) = crate::rejoin::unprotected_primary(&s, &c.image, opts)?;
            let from = if spares.list.is_empty() {
                "spares registered at the arbiter".to_string()
            } else {
                spares.list.join(", ")
            };
            notice(
                "primary",
                &format!(
                    "VM {vm:?} at generation {generation}, UNPROTECTED until a spare joins ({from})"
                ),
            );
            (end, Some((r, spares)))
        }
    };
    let (shared, gate_counters, sink_stats) = (
        end.shared.clone(),
        end.gate_counters.clone(),
        end.sink_stats.clone(),
    );
    let primary_view = PrimaryView::of(&end, s.channel.lag_limit_us);
    let _ = view.set(primary_view.clone());
    if let Some(m) = metrics {
        let metrics = PrimaryMetrics::new(&vm, primary_view);
        let local = (m.serve(Arc::new(move || metrics.encode())))
            .map_err(NodeError::setup("serving metrics"))?;
        notice("primary", &format!("metrics on http://{local}/metrics"));
    }
    let sink = end.install(&mut c);
    let sink: Box<dyn LogSink> = match record_log {
        Some(path) => match ftvm_vmm::LogFileWriter::create(&path) {
            Ok(file) => Box::new(TeeSink::new(sink, file)),
            Err(source) => return Err(NodeError::RecordLog { path, source }),
        },
        None => Box::new(sink),
    };
    let run = (|| {
        let mut machine = Vm::new(c, RunMode::Record(sink))?;
        if let Some((r, spares)) = reprotect {
            let precopy = ftvm_vmm::transfer::PrecopyConfig::default();
            (r.spawn(machine.control(), spares, precopy))
                .map_err(NodeError::setup("starting the re-protection thread"))?;
        }
        Ok(machine.run()?)
    })();
    if let Some(f) = &pair.floating
        && let Err(e) = f.remove()
    {
        let e = ftvm_vmm::error_chain(&e);
        notice("primary", &format!("giving back the service address: {e}"));
    }
    let outcome = run.map_err(|e| match e {
        NodeError::Vm(source) => NodeError::PrimaryStopped {
            vm: vm.clone(),
            lost: shared.protection() == Protection::Lost,
            source,
        },
        e => e,
    })?;
    let summary = match shared.channel_stats() {
        Some(stats) => format!(
            "channel: {} entries, {} bytes in {} sends, {} ACKs; outputs released {}; ring full {} times; lag max {} us, {} lag-control sleeps ({} us)",
            stats.entries_sent,
            stats.entry_bytes_sent,
            stats.link.sends,
            stats.acks,
            gate_counters.released.get(),
            sink_stats.full_waits.get(),
            sink_stats.max_lag_us.get(),
            sink_stats.lag_sleeps.get(),
            sink_stats.lag_sleep_us.get(),
        ),
        None => format!(
            "stopped {} at generation {} ({}); outputs released {}",
            shared.protection().name(),
            shared.generation(),
            shared.note(),
            gate_counters.released.get()
        ),
    };
    notice("primary", &summary);
    Ok(outcome)
}

/// Serves the primary's status: `connecting` (with the generation being
/// claimed) until the pair forms, then the [`PrimaryView`]'s report.
fn serve_status(
    addr: &str,
    vm: &str,
    view: Arc<OnceLock<PrimaryView>>,
    claimed: Arc<AtomicU64>,
) -> Result<String, NodeError> {
    let vm = vm.to_string();
    let snapshot = move || {
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
    };
    crate::status::serve(addr, Arc::new(snapshot))
        .map_err(NodeError::setup(format!("--status {addr}: serving status")))
}

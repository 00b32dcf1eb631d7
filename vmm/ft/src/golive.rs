//! The backup's side of failover: an explicit state machine, with the
//! times of each step kept for `ftvm status`, the demo and `bench failover`.
//!
//! ```text
//!  Waiting ──hello──▶ Replaying ──primary lost──▶ Draining ──log drained──▶ Arbitrating
//!                        │ (EOF, reset, corrupt       (replay every entry       │      │
//!                        │  frame, peer_timeout)       received, nothing      won│      │lost
//!                        │                             from a bad frame on)      ▼      ▼
//!                        └──primary's goodbye──▶ Stopped                       Live    Lost
//! ```
//!
//! * **Replaying → Draining**: the channel source notices the loss
//!   (*detection*) and goes on handing out what it received.
//! * **Draining → Arbitrating**: the VM needs an entry the log will never
//!   have — at an exit boundary or inside an exit whose entries were cut off.
//!   The journal calls [`BackupFailover::go_live`] right there.
//! * **Arbitrating → Live**: won generation N+1. The service address is
//!   taken over, the shared-disk writes after the primary's released-through
//!   watermark are re-issued, the replies after it are re-sent (if enabled),
//!   and the same exit continues in live mode.
//! * **Arbitrating → Lost**: another side holds N+1; the backup stops,
//!   naming the winner. While the arbiter is unreachable it keeps trying
//!   and nothing goes live.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ftvm_arbiter::Decision;
use ftvm_vmm::Counter;
use ftvm_vmm::{Failover, FailoverError, GoLive, ImmediateGate, KeptOutput, LogEnd};
use ftvm_wire::Kind;

use crate::driver::{PairIdentity, notice};
use crate::service::ServiceTakeover;

/// Where a backup stands (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BackupPhase {
    /// Waiting for a primary.
    Waiting = 0,
    /// Replaying the primary's log as it arrives.
    Replaying = 1,
    /// The primary is lost; replaying what was received.
    Draining = 2,
    /// Racing for the next generation.
    Arbitrating = 3,
    /// Won: serving.
    Live = 4,
    /// Another side won: stopped.
    Lost = 5,
    /// Stopped with the primary (goodbye), or on request.
    Stopped = 6,
}

impl BackupPhase {
    /// Lower-case name (status, messages).
    pub fn name(self) -> &'static str {
        match self {
            BackupPhase::Waiting => "waiting",
            BackupPhase::Replaying => "replaying",
            BackupPhase::Draining => "draining",
            BackupPhase::Arbitrating => "arbitrating",
            BackupPhase::Live => "live",
            BackupPhase::Lost => "lost",
            BackupPhase::Stopped => "stopped",
        }
    }

    fn from_u8(v: u8) -> BackupPhase {
        match v {
            0 => BackupPhase::Waiting,
            1 => BackupPhase::Replaying,
            2 => BackupPhase::Draining,
            3 => BackupPhase::Arbitrating,
            4 => BackupPhase::Live,
            5 => BackupPhase::Lost,
            _ => BackupPhase::Stopped,
        }
    }
}

/// Microseconds since the Unix epoch: comparable across the processes of
/// one host (the failover benchmark lines them up with its own kill time).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The failover's story, step by step (times in Unix µs).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timeline {
    /// The source noticed the primary's loss.
    pub detected_us: Option<u64>,
    /// How: EOF, reset, corrupt frame, silence, with the values.
    pub reason: String,
    /// Entries received but not replayed at detection.
    pub backlog_at_detection: usize,
    /// Replay consumed everything received.
    pub drained_us: Option<u64>,
    /// Exit ordinal where the log ended, and whether inside that exit.
    pub end_ordinal: u64,
    /// The end fell inside an exit (its other entries never arrived).
    pub mid_exit: bool,
    /// Seq of the last entry replayed.
    pub last_seq: u64,
    /// The arbiter answered.
    pub decided_us: Option<u64>,
    /// The generation raced for.
    pub generation: u64,
    /// Who holds it, when another side does.
    pub holder: Option<String>,
    /// Serving (service taken over, writes re-issued).
    pub live_us: Option<u64>,
    /// Shared-disk writes re-issued.
    pub reissued_writes: usize,
    /// Replies re-sent.
    pub resent_replies: usize,
}

impl Timeline {
    fn span(a: Option<u64>, b: Option<u64>) -> Option<f64> {
        Some((b?.saturating_sub(a?)) as f64 / 1000.0)
    }

    /// Drain time (detection → drained), ms.
    pub fn drain_ms(&self) -> Option<f64> {
        Timeline::span(self.detected_us, self.drained_us)
    }

    /// Arbitration time (drained → decided), ms.
    pub fn arbitration_ms(&self) -> Option<f64> {
        Timeline::span(self.drained_us, self.decided_us)
    }

    /// Go-live time (decided → live), ms.
    pub fn go_live_ms(&self) -> Option<f64> {
        Timeline::span(self.decided_us, self.live_us)
    }
}

/// A backup's phase, replay counters and failover timeline, shared with
/// the status endpoint (made before the backup waits for its primary).
#[derive(Debug, Default)]
pub struct BackupStatus {
    /// Replay counters.
    pub replay: Arc<crate::source::SourceStats>,
    phase: AtomicU8,
    generation: Counter,
    vm: Mutex<String>,
    timeline: Mutex<Timeline>,
    /// Once live and recording for a next backup: that side's view.
    live: std::sync::OnceLock<crate::status::PrimaryView>,
}

impl BackupStatus {
    /// The phase.
    pub fn phase(&self) -> BackupPhase {
        // Acquire: pairs with the Release in `set_phase`.
        BackupPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// The generation the backup runs at (the pair's, then the one it won).
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// The VM's name.
    pub fn vm(&self) -> String {
        self.vm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A copy of the failover timeline.
    pub fn timeline(&self) -> Timeline {
        self.timeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Once this backup went live and records for its next backup
    /// (`--spare`, `--find-spares`): the live side's counters.
    pub fn live(&self) -> Option<&crate::status::PrimaryView> {
        self.live.get()
    }

    pub(crate) fn set_phase(&self, p: BackupPhase) {
        // Release: the timeline written before is visible with the phase.
        self.phase.store(p as u8, Ordering::Release);
        crate::events::state_changed("backup", p.name(), &self.vm(), self.generation(), "");
    }

    fn edit(&self, f: impl FnOnce(&mut Timeline)) {
        f(&mut self.timeline.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The handshake named the pair.
    pub(crate) fn paired(&self, vm: &str, generation: u64) {
        *self.vm.lock().unwrap_or_else(PoisonError::into_inner) = vm.to_string();
        self.generation.set(generation);
        self.set_phase(BackupPhase::Replaying);
    }

    /// Replaying → Draining (called by the source, once).
    pub(crate) fn primary_lost(&self, reason: &str, backlog: usize) {
        self.edit(|t| {
            t.detected_us = Some(unix_us());
            t.reason = reason.to_string();
            t.backlog_at_detection = backlog;
        });
        self.set_phase(BackupPhase::Draining);
        notice(
            "backup",
            &format!("primary lost: {reason}; draining {backlog} received entries"),
        );
    }
}

/// The backup's failover plan (module doc), run by the VM's journal.
pub struct BackupFailover {
    /// This side at the arbiter; `generation` is the pair's.
    pub pair: PairIdentity,
    /// What to take over.
    pub service: ServiceTakeover,
    /// The phase and timeline.
    pub status: Arc<BackupStatus>,
    /// True once the process is stopping: stop retrying the arbiter.
    pub give_up: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Once live, record for a next backup and look for spares.
    pub reprotect: Option<crate::rejoin::ReprotectPlan>,
}

impl std::fmt::Debug for BackupFailover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupFailover")
            .field("vm", &self.pair.vm)
            .field("generation", &self.pair.generation)
            .finish()
    }
}

impl Failover for BackupFailover {
    fn go_live(&mut self, end: LogEnd, kept: Vec<KeptOutput>) -> Result<GoLive, FailoverError> {
        let generation = self.pair.generation + 1;
        let status = self.status.clone();
        status.edit(|t| {
            t.drained_us = Some(unix_us());
            t.end_ordinal = end.ordinal;
            t.mid_exit = end.mid_exit;
            t.last_seq = end.last_seq;
            t.generation = generation;
            if t.detected_us.is_none() {
                t.detected_us = t.drained_us;
                t.reason.clone_from(&end.reason);
            }
        });
        status.set_phase(BackupPhase::Arbitrating);
        notice(
            "backup",
            &format!(
                "log drained through seq {} at exit {}{}; racing for generation {generation} of VM {:?} at {}",
                end.last_seq,
                end.ordinal,
                if end.mid_exit {
                    " (inside the exit)"
                } else {
                    ""
                },
                self.pair.vm,
                self.pair.arbiter.url()
            ),
        );
        let give_up = self.give_up.clone();
        let decision = ftvm_arbiter::test_and_set_with_retry(
            self.pair.arbiter.as_ref(),
            &self.pair.vm,
            generation,
            &self.pair.candidate,
            &self.pair.retry,
            &|| give_up(),
            &mut |e, delay| {
                notice(
                    "backup",
                    &format!(
                        "arbiter unreachable ({}); not going live, retrying in {} ms",
                        ftvm_vmm::error_chain(e),
                        delay.as_millis()
                    ),
                );
            },
        );
        status.edit(|t| t.decided_us = Some(unix_us()));
        match decision {
            Ok(Decision::Won) => {}
            Ok(Decision::Lost { holder }) => {
                status.edit(|t| t.holder = Some(holder.clone()));
                status.set_phase(BackupPhase::Lost);
                // Never served: nothing to give back but a stale address.
                let _ = self.service.give_back();
                return Err(FailoverError::Lost {
                    vm: self.pair.vm.clone(),
                    generation,
                    holder,
                    detail: "this backup stops without going live".into(),
                });
            }
            Err(e) => {
                status.set_phase(BackupPhase::Stopped);
                return Err(FailoverError::Failed(format!(
                    "generation {generation} of VM {:?} undecided: {}",
                    self.pair.vm,
                    ftvm_vmm::error_chain(&e)
                )));
            }
        }
        self.pair.generation = generation;
        status.generation.set(generation);
        let served = self
            .service
            .take_over()
            .map_err(|e| FailoverError::Failed(ftvm_vmm::error_chain(&e)))?;
        let (mut writes, mut replies) = (0, 0);
        for k in kept {
            match k.kind {
                Kind::DiskWrite => writes += 1,
                Kind::NetTx => replies += 1,
                _ => {}
            }
            (k.release)();
        }
        // Live: with a plan, record into an unprotected driver that spares
        // join (docs/reprotect.md); without, run with no log.
        let end = self.reprotect.take().and_then(|plan| {
            let lag_limit = plan.settings.channel.lag_limit_us;
            match plan.start(self.pair.clone(), self.give_up.clone()) {
                Ok(end) => {
                    let _ = status
                        .live
                        .set(crate::status::PrimaryView::of(&end, lag_limit));
                    Some(end)
                }
                Err(why) => {
                    notice(
                        "backup",
                        &format!("live, but not looking for spares: {why}"),
                    );
                    None
                }
            }
        });
        status.edit(|t| {
            t.live_us = Some(unix_us());
            t.reissued_writes = writes;
            t.resent_replies = replies;
        });
        status.set_phase(BackupPhase::Live);
        let t = status.timeline();
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        notice(
            "backup",
            &format!(
                "LIVE at generation {generation} of VM {:?}{}: drain {}, arbitration {}, go-live {}; re-issued {writes} disk writes, re-sent {replies} replies; {}",
                self.pair.vm,
                served.map(|a| format!(", serving {a}")).unwrap_or_default(),
                ms(t.drain_ms()),
                ms(t.arbitration_ms()),
                ms(t.go_live_ms()),
                if end.is_some() {
                    "UNPROTECTED until a spare joins"
                } else {
                    "UNPROTECTED (no backup)"
                }
            ),
        );
        Ok(match end {
            Some(end) => GoLive {
                sink: Some(Box::new(end.sink)),
                gate: Box::new(end.gate),
            },
            None => GoLive {
                sink: None,
                gate: Box::new(ImmediateGate),
            },
        })
    }
}

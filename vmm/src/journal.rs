//! The record / replay / live engine underneath [`crate::device::ExitCtx`].
//!
//! Record appends entries with contiguous sequence numbers; replay keeps a
//! one-entry lookahead of the primary's log and checks each entry against
//! the exit it is at (kind, port, ordinal); live only releases outputs.

use ftvm_wire::Kind;

use crate::event::{EventSource, EventSourceError, PollPoint};
use crate::failover::{Failover, FailoverError, LogEnd};
use crate::log::{EntryRef, LogSink, LogSinkError, LogSource, LogSourceError, SourcePoll};
use crate::output::{OutputGate, Release};
use crate::payload::{CheckpointRecord, INPUT_PREFIX_LEN, describe_entry, input_port};

/// The execution mode of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No log: inputs from the host, outputs released at once.
    Live,
    /// Primary: inputs from the host, logged; outputs through the gate.
    Record,
    /// Backup: inputs from the log; outputs checked against the log and dropped.
    Replay,
}

/// The replayed execution differs from the recorded one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Divergence {
    /// The next log entry is not what this exit needs.
    #[error("divergence at exit {ordinal}: expected {expected}, the log has {found}")]
    Entry {
        /// Exit ordinal.
        ordinal: u64,
        /// What the replaying exit needed.
        expected: String,
        /// The log entry found.
        found: String,
    },
    /// The log ended where this exit needs an entry.
    #[error("divergence at exit {ordinal}: expected {expected}, the log has ended")]
    LogEnded {
        /// Exit ordinal.
        ordinal: u64,
        /// What the replaying exit needed.
        expected: String,
    },
    /// An output differs from the primary's.
    #[error(
        "divergence at exit {ordinal}: {kind} output on port {port:#x} is {len} bytes digest {digest:016x}, the primary's was {log_len} bytes digest {log_digest:016x}"
    )]
    Output {
        /// Exit ordinal.
        ordinal: u64,
        /// Output kind.
        kind: Kind,
        /// Port.
        port: u16,
        /// Replayed length.
        len: u32,
        /// Replayed digest.
        digest: u64,
        /// Logged length.
        log_len: u32,
        /// Logged digest.
        log_digest: u64,
    },
    /// A local disk copy returned other data than the primary's copy.
    #[error(
        "divergence at exit {ordinal}: the read of {len} bytes at sector {sector} from this side's disk copy hashes to {digest:016x}, the primary's copy to {log_digest:016x} (the disk copies differ)"
    )]
    DiskRead {
        /// Exit ordinal.
        ordinal: u64,
        /// First sector read.
        sector: u64,
        /// Bytes read.
        len: u32,
        /// Digest of this side's data.
        digest: u64,
        /// The primary's digest.
        log_digest: u64,
    },
    /// Guest state differs at a checkpoint.
    #[error("divergence at exit {ordinal}: state digest {replay}, the primary's was {primary}")]
    Checkpoint {
        /// Exit ordinal.
        ordinal: u64,
        /// The primary's digest.
        primary: CheckpointRecord,
        /// The replayer's digest.
        replay: CheckpointRecord,
    },
    /// The log injects an interrupt where the replaying guest cannot take one.
    #[error(
        "divergence at exit {ordinal}: the log injects vector {vector:#x} but the guest cannot take an interrupt (IF {if_flag}, ready {ready})"
    )]
    InterruptBlocked {
        /// Exit ordinal.
        ordinal: u64,
        /// Vector.
        vector: u32,
        /// Guest IF.
        if_flag: bool,
        /// KVM's ready_for_interrupt_injection.
        ready: bool,
    },
}

/// A log operation at an exit failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Replay diverged.
    #[error(transparent)]
    Divergence(#[from] Divergence),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] LogSinkError),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] LogSourceError),
    /// A stop was requested while replay waited for the next entry.
    #[error("stop requested at exit {ordinal} while waiting for the primary's next log entry")]
    StopRequested {
        /// Exit ordinal (0: before the first exit).
        ordinal: u64,
    },
    /// The primary was lost and going live failed (lost the arbitration, ...).
    #[error(transparent)]
    Failover(#[from] FailoverError),
    /// An event source stopped the VM (e.g. the primary lost its backup and
    /// the arbitration).
    #[error(transparent)]
    Event(#[from] EventSourceError),
    /// An entry of a kind the VMM never writes.
    #[error("log entry seq {seq} at exit {ordinal} has kind {kind}, which is not a VMM entry")]
    ForeignKind {
        /// Sequence number.
        seq: u64,
        /// Exit ordinal.
        ordinal: u64,
        /// Kind.
        kind: Kind,
    },
}

/// Describes an entry for divergence messages.
pub(crate) fn describe(e: &EntryRef<'_>) -> String {
    format!(
        "{} seq {} at exit {} ({})",
        e.header.kind,
        e.header.seq,
        e.header.exit_ordinal,
        describe_entry(e.header.kind, e.payload)
    )
}

enum Backend {
    Live,
    Record {
        sink: Box<dyn LogSink>,
    },
    Replay {
        source: Box<dyn LogSource>,
        /// The source said `Ready`: its `peek` lends the next entry.
        ready: bool,
        ended: bool,
    },
}

/// What a replaying journal knows when its primary is lost.
struct Standby {
    plan: Option<Box<dyn Failover>>,
    /// Seq of the last entry taken.
    last_seq: u64,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Entries appended (record) or consumed (replay).
    pub entries: u64,
    /// Payload bytes of those entries.
    pub payload_bytes: u64,
    /// Outputs produced.
    pub outputs: u64,
}

/// The engine. One per VM.
pub(crate) struct Journal {
    backend: Backend,
    /// The VM's stop flag: a replay waiting for entries gives up when set.
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Exit ordinal of the exit being handled (for messages).
    pub(crate) ordinal: u64,
    gate: Box<dyn OutputGate>,
    pub(crate) stats: JournalStats,
    /// Live mode's input buffer (grown, never shrunk: no allocation per input).
    scratch: Vec<u8>,
    standby: Standby,
    /// Set by the VM while a device handles an exit (for the failover report).
    pub(crate) mid_exit: bool,
    went_live: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("mode", &self.mode())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Journal {
    pub(crate) fn live(gate: Box<dyn OutputGate>) -> Journal {
        Journal::with(Backend::Live, gate)
    }

    pub(crate) fn record(sink: Box<dyn LogSink>, gate: Box<dyn OutputGate>) -> Journal {
        Journal::with(Backend::Record { sink }, gate)
    }

    pub(crate) fn replay(source: Box<dyn LogSource>, gate: Box<dyn OutputGate>) -> Journal {
        Journal::with(
            Backend::Replay {
                source,
                ready: false,
                ended: false,
            },
            gate,
        )
    }

    /// The flag that interrupts a replay waiting for the log.
    pub(crate) fn set_stop(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(stop);
    }

    /// The plan to run when the replayed primary is lost (`crate::failover`).
    pub(crate) fn set_failover(&mut self, plan: Box<dyn Failover>) {
        self.standby.plan = Some(plan);
    }

    /// A replaying journal takes its real source, gate and failover plan
    /// (a spare after its state transfer: `Vm::attach_replay`).
    pub(crate) fn attach(
        &mut self,
        source: Box<dyn LogSource>,
        gate: Box<dyn OutputGate>,
        plan: Option<Box<dyn Failover>>,
    ) {
        self.backend = Backend::Replay {
            source,
            ready: false,
            ended: false,
        };
        self.gate = gate;
        self.standby.plan = plan;
    }

    /// Failover: the same engine continuing in live mode (`sink = None`) or
    /// recording into `sink`, with `gate` from now on if given (the counters
    /// carry over).
    pub(crate) fn go_live(
        &mut self,
        sink: Option<Box<dyn LogSink>>,
        gate: Option<Box<dyn OutputGate>>,
    ) {
        self.switch(sink);
        if let Some(gate) = gate {
            self.gate = gate;
        }
        self.went_live = true;
    }

    /// The same engine continuing in live mode (`sink = None`) or recording
    /// into `sink`, which numbers its entries from its own `next_seq` (the
    /// gate and the counters carry over).
    pub(crate) fn switch(&mut self, sink: Option<Box<dyn LogSink>>) {
        self.backend = match sink {
            None => Backend::Live,
            Some(sink) => Backend::Record { sink },
        };
    }

    /// True once after the journal left replay mode (the VM then restarts
    /// its host timer).
    pub(crate) fn take_went_live(&mut self) -> bool {
        std::mem::take(&mut self.went_live)
    }

    /// The replayed primary is lost and every entry it sent was taken: run
    /// the failover plan, or report the loss when there is none.
    fn fail_over(&mut self, reason: String) -> Result<(), LogError> {
        let Some(mut plan) = self.standby.plan.take() else {
            return Err(LogSourceError::Channel(reason).into());
        };
        let end = LogEnd {
            ordinal: self.ordinal,
            last_seq: self.standby.last_seq,
            mid_exit: self.mid_exit,
            reason,
        };
        let kept = self.gate.take_kept();
        let live = plan.go_live(end, kept)?;
        self.go_live(live.sink, Some(live.gate));
        Ok(())
    }

    /// Record mode: the sink's event source, if it has one.
    fn events(&mut self) -> Option<&mut dyn EventSource> {
        match &mut self.backend {
            Backend::Record { sink, .. } => sink.events(),
            _ => None,
        }
    }

    /// Polls the sink's event source (see `crate::event`).
    pub(crate) fn poll_events(&mut self, at: PollPoint) -> Result<usize, LogError> {
        match self.events() {
            Some(e) => Ok(e.poll(at)?),
            None => Ok(0),
        }
    }

    /// When the sink's event source must be polled next at the latest.
    pub(crate) fn events_deadline(&mut self) -> Option<std::time::Instant> {
        self.events().and_then(|e| e.deadline())
    }

    /// The fd the sink's event source wakes a WAIT on.
    pub(crate) fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        self.events().and_then(|e| e.wait_fd())
    }

    /// Replay: waits for the next entry to be known. If the primary turns
    /// out to be lost, the failover plan runs here and the journal leaves
    /// replay mode: callers check [`Journal::mode`] afterwards.
    pub(crate) fn settle(&mut self) -> Result<(), LogError> {
        self.peek().map(|_| ())
    }

    fn with(backend: Backend, gate: Box<dyn OutputGate>) -> Journal {
        Journal {
            backend,
            stop: None,
            ordinal: 0,
            gate,
            stats: JournalStats::default(),
            scratch: Vec::with_capacity(4096),
            standby: Standby {
                plan: None,
                last_seq: 0,
            },
            mid_exit: false,
            went_live: false,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        match self.backend {
            Backend::Live => Mode::Live,
            Backend::Record { .. } => Mode::Record,
            Backend::Replay { .. } => Mode::Replay,
        }
    }

    /// Record: appends an entry holding a copy of `payload` (an output
    /// record), returns its sequence number (0 when not recording).
    pub(crate) fn append(
        &mut self,
        kind: Kind,
        ordinal: u64,
        payload: &[u8],
    ) -> Result<u64, LogError> {
        let Backend::Record { sink } = &mut self.backend else {
            return Ok(0);
        };
        let seq = sink.append(kind, ordinal, payload)?;
        self.stats.entries += 1;
        self.stats.payload_bytes += payload.len() as u64;
        Ok(seq)
    }

    /// Record: claim, write in place, commit (see [`LogSink::claim`]);
    /// `None` when `write` abandoned the entry or when not recording.
    pub(crate) fn claim(
        &mut self,
        kind: Kind,
        ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogError> {
        let Backend::Record { sink } = &mut self.backend else {
            return Ok(None);
        };
        let mut len = 0;
        let seq = sink.claim(kind, ordinal, max_len, &mut |buf| {
            let n = write(buf)?;
            len = n;
            Some(n)
        })?;
        if seq.is_some() {
            self.stats.entries += 1;
            self.stats.payload_bytes += len as u64;
        }
        Ok(seq)
    }

    /// Largest payload an entry may carry (record: the sink's limit).
    pub(crate) fn max_payload_len(&self) -> usize {
        match &self.backend {
            Backend::Record { sink } => sink.max_payload_len(),
            _ => ftvm_wire::MAX_PAYLOAD_LEN,
        }
    }

    /// Live mode: a buffer of `len` bytes for an input (old contents).
    pub(crate) fn scratch(&mut self, len: usize) -> &mut [u8] {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        &mut self.scratch[..len]
    }

    /// Replay: the next entry, waiting while the source has none yet; `None`
    /// once the log has ended — or once the primary was lost and the
    /// failover plan took the VM live (the mode is then no longer replay).
    /// The entry is lent by the source until [`Journal::consume`].
    pub(crate) fn peek(&mut self) -> Result<Option<EntryRef<'_>>, LogError> {
        if let Some(reason) = self.wait_for_entry()? {
            self.fail_over(reason)?;
            return Ok(None);
        }
        match &mut self.backend {
            Backend::Replay {
                source,
                ready: true,
                ..
            } => Ok(source.peek()),
            _ => Ok(None),
        }
    }

    /// Readies the next entry; `Some(reason)` when the primary is lost and
    /// nothing is left to replay.
    fn wait_for_entry(&mut self) -> Result<Option<String>, LogError> {
        let Backend::Replay {
            source,
            ready,
            ended,
        } = &mut self.backend
        else {
            return Ok(None);
        };
        let mut spins = 0u32;
        while !*ready && !*ended {
            match source.poll()? {
                SourcePoll::Ready => {
                    let Some(e) = source.peek() else {
                        return Err(LogSourceError::Channel(
                            "the log source said an entry is ready but lent none".into(),
                        )
                        .into());
                    };
                    if !crate::log::is_vmm_kind(e.header.kind) {
                        return Err(LogError::ForeignKind {
                            seq: e.header.seq,
                            ordinal: e.header.exit_ordinal,
                            kind: e.header.kind,
                        });
                    }
                    *ready = true;
                }
                SourcePoll::Pending => {
                    // Acquire: pairs with the Release store of the stop requester.
                    if self
                        .stop
                        .as_ref()
                        .is_some_and(|f| f.load(std::sync::atomic::Ordering::Acquire))
                    {
                        return Err(LogError::StopRequested {
                            ordinal: self.ordinal,
                        });
                    }
                    spins += 1;
                    if spins < 1000 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                SourcePoll::End => *ended = true,
                SourcePoll::Lost { reason } => {
                    *ended = true;
                    return Ok(Some(reason));
                }
            }
        }
        Ok(None)
    }

    /// Replay: the entry `peek` lent was applied; the source moves on.
    pub(crate) fn consume(&mut self) {
        let Backend::Replay { source, ready, .. } = &mut self.backend else {
            return;
        };
        if !std::mem::take(ready) {
            return;
        }
        if let Some(e) = source.peek() {
            self.standby.last_seq = e.header.seq;
            self.stats.entries += 1;
            self.stats.payload_bytes += e.payload.len() as u64;
        }
        source.consume();
    }

    /// Replay: true if the next entry is `kind` (and `port`, for inputs) at
    /// `ordinal`.
    pub(crate) fn next_is(
        &mut self,
        kind: Kind,
        port: Option<u16>,
        ordinal: u64,
    ) -> Result<bool, LogError> {
        Ok(match self.peek()? {
            Some(e) => {
                e.header.kind == kind
                    && e.header.exit_ordinal == ordinal
                    && port.is_none_or(|p| {
                        e.payload.len() >= INPUT_PREFIX_LEN && input_port(e.payload) == Some(p)
                    })
            }
            None => false,
        })
    }

    /// Replay: the next entry, which must be `kind` (`port`) at `ordinal`,
    /// lent until [`Journal::consume`].
    pub(crate) fn expect(
        &mut self,
        kind: Kind,
        port: Option<u16>,
        ordinal: u64,
        what: impl FnOnce() -> String,
    ) -> Result<EntryRef<'_>, LogError> {
        if self.next_is(kind, port, ordinal)? {
            return Ok(self.peek()?.expect("peeked entry"));
        }
        let expected = what();
        Err(match self.peek()? {
            Some(e) => Divergence::Entry {
                ordinal,
                expected,
                found: describe(&e),
            },
            None => Divergence::LogEnded { ordinal, expected },
        }
        .into())
    }

    /// Replay, at the end of an exit: no entry may remain for this exit.
    pub(crate) fn finish_exit(&mut self, ordinal: u64) -> Result<(), LogError> {
        if self.mode() != Mode::Replay {
            return Ok(());
        }
        if let Some(e) = self.peek()?
            && e.header.exit_ordinal <= ordinal
        {
            return Err(Divergence::Entry {
                ordinal,
                expected: format!("no further entry before exit {}", ordinal + 1),
                found: describe(&e),
            }
            .into());
        }
        Ok(())
    }

    /// Replay: true once the log has ended and every entry was consumed.
    /// False when the wait for the next entry ended in going live (the
    /// primary was lost before it sent any entry: the VM runs on).
    pub(crate) fn log_drained(&mut self) -> Result<bool, LogError> {
        if self.mode() != Mode::Replay {
            return Ok(false);
        }
        let ended = self.peek()?.is_none();
        Ok(ended && self.mode() == Mode::Replay)
    }

    pub(crate) fn gate(&mut self, seq: Option<u64>, kind: Kind, release: Release) {
        self.stats.outputs += 1;
        self.gate.submit(seq, kind, release);
    }

    /// Replay: an output checked against the primary's entry `seq`.
    pub(crate) fn replayed_output(&mut self, seq: u64, kind: Kind, release: Release) {
        self.gate.replayed(seq, kind, release);
    }

    pub(crate) fn flush(&mut self) -> Result<(), LogError> {
        if let Backend::Record { sink, .. } = &mut self.backend {
            sink.flush()?;
        }
        Ok(())
    }

    /// Record: sequence number the next entry will get (the sink's count,
    /// the only one).
    pub(crate) fn next_seq(&self) -> u64 {
        match &self.backend {
            Backend::Record { sink } => sink.next_seq(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::device::{DeviceError, ExitCtx, ExitRequests};
    use crate::log::{LogFileReader, SharedLog};
    use crate::memory::GuestMemory;
    use crate::output::ImmediateGate;

    fn ctx<'a>(
        mem: &'a GuestMemory,
        j: &'a mut Journal,
        r: &'a mut ExitRequests,
        ordinal: u64,
    ) -> ExitCtx<'a> {
        ExitCtx {
            mem,
            journal: j,
            ordinal,
            requests: r,
        }
    }

    /// Exit 1: clock input; exit 2: console output; exit 3: a poll with
    /// nothing; exit 4: a poll with a packet.
    fn workload(
        j: &mut Journal,
        mem: &GuestMemory,
        host: u64,
    ) -> Result<Vec<Vec<u8>>, DeviceError> {
        let mut r = ExitRequests::default();
        let mut got = Vec::new();
        let owned = |b: &[u8]| Ok(b.to_vec());
        got.push(ctx(mem, j, &mut r, 1).input(
            Kind::Clock,
            0x20,
            8,
            |b| {
                b.copy_from_slice(&host.to_le_bytes());
                Ok(8)
            },
            owned,
        )?);
        ctx(mem, j, &mut r, 2).output(Kind::Console, 0x10, b"hi\n", || {})?;
        let none =
            ctx(mem, j, &mut r, 3).poll_input(Kind::PacketRx, 0x40, 64, |_| Ok(None), owned)?;
        assert_eq!(none, None);
        let some = ctx(mem, j, &mut r, 4).poll_input(
            Kind::PacketRx,
            0x40,
            64,
            |b| {
                b[..3].copy_from_slice(b"pkt");
                Ok(Some(3))
            },
            owned,
        )?;
        got.push(some.unwrap_or_default());
        for o in 1..=4 {
            j.finish_exit(o)?;
        }
        Ok(got)
    }

    fn recorded() -> Vec<u8> {
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let log = SharedLog::default();
        let mut j = Journal::record(Box::new(log.clone()), Box::new(ImmediateGate));
        workload(&mut j, &mem, 42).unwrap();
        assert_eq!(j.next_seq(), 4);
        log.bytes()
    }

    fn replayer(bytes: &[u8]) -> Journal {
        let src = LogFileReader::from_bytes(Path::new("mem"), bytes).unwrap();
        Journal::replay(Box::new(src), Box::new(ImmediateGate))
    }

    #[test]
    fn replay_returns_the_logged_values_without_asking_the_host() {
        let bytes = recorded();
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let mut j = replayer(&bytes);
        let got = workload(&mut j, &mem, 7).unwrap();
        assert_eq!(got, vec![42u64.to_le_bytes().to_vec(), b"pkt".to_vec()]);
        assert_eq!(j.stats.entries, 3);
        assert!(j.log_drained().unwrap());
    }

    #[test]
    fn outputs_go_through_the_gate_and_are_checked_on_replay() {
        let released = Arc::new(AtomicUsize::new(0));
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let log = SharedLog::default();
        let mut j = Journal::record(Box::new(log.clone()), Box::new(ImmediateGate));
        let mut r = ExitRequests::default();
        let n = Arc::clone(&released);
        ctx(&mem, &mut j, &mut r, 5)
            .output(Kind::NetTx, 0x41, b"abc", move || {
                // Relaxed: a counter read after the join point of the test.
                n.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
        assert_eq!(released.load(Ordering::Relaxed), 1);
        let bytes = log.bytes();

        let mut j = replayer(&bytes);
        let e = ctx(&mem, &mut j, &mut r, 5)
            .output(Kind::NetTx, 0x41, b"abd", || {})
            .unwrap_err();
        match e {
            DeviceError::Log(LogError::Divergence(Divergence::Output {
                ordinal,
                len,
                log_len,
                ..
            })) => {
                assert_eq!((ordinal, len, log_len), (5, 3, 3));
            }
            other => panic!("{other}"),
        }
        let mut j = replayer(&bytes);
        ctx(&mem, &mut j, &mut r, 5)
            .output(Kind::NetTx, 0x41, b"abc", || {
                panic!("replay must not release")
            })
            .unwrap();
    }

    #[test]
    fn mismatches_name_the_exit_and_both_sides() {
        let bytes = recorded();
        let mem = GuestMemory::new(4 * 4096).unwrap();
        let mut r = ExitRequests::default();

        // The replaying guest asks for random bytes where the log has a clock value.
        let mut j = replayer(&bytes);
        let e = ctx(&mem, &mut j, &mut r, 1)
            .input(Kind::Random, 0x21, 8, |_| Ok(8), |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "divergence at exit 1: expected random input on port 0x21, the log has clock seq 1 at exit 1 (port 0x20 42 ns)"
        );

        // The replaying guest skips exit 1's input: the entry is left over.
        let mut j = replayer(&bytes);
        let e = j.finish_exit(1).unwrap_err().to_string();
        assert!(
            e.starts_with("divergence at exit 1: expected no further entry"),
            "{e}"
        );

        // The log ends where an input is needed.
        let mut j = replayer(&crate::log::MemoryLog::new().bytes);
        let e = ctx(&mem, &mut j, &mut r, 9)
            .input(Kind::Clock, 0x20, 8, |_| Ok(8), |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "divergence at exit 9: expected clock input on port 0x20, the log has ended"
        );
    }

    struct NeverReady;

    impl LogSource for NeverReady {
        fn poll(&mut self) -> Result<SourcePoll, crate::log::LogSourceError> {
            Ok(SourcePoll::Pending)
        }
        fn peek(&mut self) -> Option<EntryRef<'_>> {
            None
        }
        fn consume(&mut self) {}
    }

    #[test]
    fn a_stop_request_ends_a_wait_for_the_log() {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut j = Journal::replay(Box::new(NeverReady), Box::new(ImmediateGate));
        j.set_stop(stop);
        j.ordinal = 12;
        let e = j.peek().unwrap_err().to_string();
        assert_eq!(
            e,
            "stop requested at exit 12 while waiting for the primary's next log entry"
        );
    }
}

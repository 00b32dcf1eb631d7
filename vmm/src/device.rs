//! The host-side device interface: a device owns a port range, handles `out`
//! and `in` exits, and reaches guest memory and the record/replay engine
//! through the [`ExitCtx`] of the exit it handles.
//!
//! Devices are mode-agnostic: the same code runs in record, replay and live
//! mode. Everything nondeterministic goes through [`ExitCtx::input`] or
//! [`ExitCtx::poll_input`]; everything leaving the VM through
//! [`ExitCtx::output`]. See `docs/guest-abi.md` §7.

use std::ops::RangeInclusive;
use std::os::fd::RawFd;

use ftvm_wire::Kind;

use crate::journal::{Divergence, Journal, LogError, Mode};
use crate::memory::{GuestMemory, GuestMemoryError};
use crate::payload::{INPUT_PREFIX_LEN, OutputRecord, put_input_prefix};

/// A device could not handle an exit.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The guest named memory outside guest memory or a bad descriptor.
    #[error(transparent)]
    Memory(#[from] GuestMemoryError),
    /// Logging or replay failed (includes divergence).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The guest's request is malformed.
    #[error("bad request on port {port:#x}: {detail}")]
    BadRequest {
        /// Port.
        port: u16,
        /// What was wrong, with the values.
        detail: String,
    },
    /// The port has no handler in this direction or size.
    #[error("port {port:#x} does not support {dir} of {size} bytes")]
    Unsupported {
        /// Port.
        port: u16,
        /// "in" or "out".
        dir: &'static str,
        /// Access size.
        size: usize,
    },
    /// A host resource failed (socket, file).
    #[error("{what}")]
    Host {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<Divergence> for DeviceError {
    fn from(d: Divergence) -> DeviceError {
        DeviceError::Log(LogError::Divergence(d))
    }
}

/// What an exit asks the VM loop to do after the device returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExitRequests {
    /// The guest asked to stop with this exit code.
    pub(crate) exit_code: Option<u32>,
    /// The guest reported a fault with this vector.
    pub(crate) fault_vector: Option<u32>,
    /// WAIT with this timeout in µs.
    pub(crate) wait_us: Option<u32>,
    /// TIMER programmed with this period in µs.
    pub(crate) timer_us: Option<u32>,
}

/// The context of one exit, handed to the device that handles it.
pub struct ExitCtx<'a> {
    pub(crate) mem: &'a GuestMemory,
    pub(crate) journal: &'a mut Journal,
    pub(crate) ordinal: u64,
    pub(crate) requests: &'a mut ExitRequests,
}

impl std::fmt::Debug for ExitCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitCtx")
            .field("ordinal", &self.ordinal)
            .field("mode", &self.journal.mode())
            .finish()
    }
}

impl<'a> ExitCtx<'a> {
    /// Exit ordinal of this exit.
    pub fn ordinal(&self) -> u64 {
        self.ordinal
    }

    /// The mode (for diagnostics; device behaviour must not depend on it).
    pub fn mode(&self) -> Mode {
        self.journal.mode()
    }

    /// Guest memory.
    pub fn mem(&self) -> &'a GuestMemory {
        self.mem
    }

    /// The largest `max_len` an input may claim here.
    pub fn max_input_len(&self) -> usize {
        self.journal.max_payload_len() - INPUT_PREFIX_LEN
    }

    /// A nondeterministic value of at most `max_len` bytes. Record/live:
    /// `produce` obtains it from the host, writing it straight into the log
    /// entry (record: the sink's claim, e.g. the channel's log ring; live: a
    /// reused buffer) and returning its length; replay: the logged bytes are
    /// used (`produce` is not run), after checking kind, port and ordinal.
    /// In every mode `apply` then gets the bytes — lent, never copied out —
    /// and applies them to guest memory with the same code; its result is
    /// returned.
    pub fn input<R>(
        &mut self,
        kind: Kind,
        port: u16,
        max_len: usize,
        produce: impl FnOnce(&mut [u8]) -> Result<usize, DeviceError>,
        apply: impl FnOnce(&[u8]) -> Result<R, DeviceError>,
    ) -> Result<R, DeviceError> {
        let got = self.poll_input_inner(
            kind,
            port,
            true,
            max_len,
            |buf| produce(buf).map(Some),
            apply,
        )?;
        got.ok_or_else(|| DeviceError::BadRequest {
            port,
            detail: format!("{kind} input produced nothing"),
        })
    }

    /// Like [`ExitCtx::input`] for values that may be absent (a poll of a
    /// socket): `produce` returns `Ok(None)` when there is nothing, and then
    /// nothing is logged, `apply` is not run and `None` returned. Replay
    /// applies an entry exactly when the log has a `kind` entry for `port` at
    /// this exit.
    pub fn poll_input<R>(
        &mut self,
        kind: Kind,
        port: u16,
        max_len: usize,
        produce: impl FnOnce(&mut [u8]) -> Result<Option<usize>, DeviceError>,
        apply: impl FnOnce(&[u8]) -> Result<R, DeviceError>,
    ) -> Result<Option<R>, DeviceError> {
        self.poll_input_inner(kind, port, false, max_len, produce, apply)
    }

    fn poll_input_inner<R>(
        &mut self,
        kind: Kind,
        port: u16,
        required: bool,
        max_len: usize,
        produce: impl FnOnce(&mut [u8]) -> Result<Option<usize>, DeviceError>,
        apply: impl FnOnce(&[u8]) -> Result<R, DeviceError>,
    ) -> Result<Option<R>, DeviceError> {
        let ordinal = self.ordinal;
        // A lost primary may take the VM live right here (`crate::failover`).
        self.journal.settle()?;
        match self.journal.mode() {
            Mode::Replay => {
                if !required && !self.journal.next_is(kind, Some(port), ordinal)? {
                    return Ok(None);
                }
                let e = self.journal.expect(kind, Some(port), ordinal, || {
                    format!("{kind} input on port {port:#x}")
                })?;
                let r = match e.payload.get(INPUT_PREFIX_LEN..) {
                    Some(data) => apply(data),
                    None => Err(Divergence::Entry {
                        ordinal,
                        expected: format!("{kind} input on port {port:#x}"),
                        found: crate::journal::describe(&e),
                    }
                    .into()),
                };
                self.journal.consume();
                r.map(Some)
            }
            Mode::Live => {
                let buf = self.journal.scratch(max_len);
                match produce(buf)? {
                    None => Ok(None),
                    Some(n) => {
                        let data = buf
                            .get(..n)
                            .ok_or_else(|| overlong(kind, port, max_len, n))?;
                        apply(data).map(Some)
                    }
                }
            }
            Mode::Record => {
                let (mut produce, mut apply) = (Some(produce), Some(apply));
                let mut out: Option<Result<R, DeviceError>> = None;
                let committed =
                    self.journal
                        .claim(kind, ordinal, INPUT_PREFIX_LEN + max_len, &mut |buf| {
                            let (produce, apply) = (produce.take()?, apply.take()?);
                            let (prefix, data) = buf.split_at_mut(INPUT_PREFIX_LEN);
                            put_input_prefix(prefix, port);
                            let r = match produce(data) {
                                Ok(None) => return None,
                                Ok(Some(n)) => match data.get(..n) {
                                    Some(data) => apply(data).map(|r| (r, n)),
                                    None => Err(overlong(kind, port, max_len, n)),
                                },
                                Err(e) => Err(e),
                            };
                            match r {
                                Ok((r, n)) => {
                                    out = Some(Ok(r));
                                    Some(INPUT_PREFIX_LEN + n)
                                }
                                // Not logged: the VM stops with the error.
                                Err(e) => {
                                    out = Some(Err(e));
                                    None
                                }
                            }
                        });
                committed?;
                out.transpose()
            }
        }
    }

    /// An output leaving the VM. Record: logs an OUTPUT entry (length and
    /// digest) and hands `release` to the output gate; live: releases at
    /// once; replay: checks kind, port, length and digest against the
    /// primary's entry and hands `release` to the gate's
    /// [`OutputGate::replayed`](crate::OutputGate::replayed), which never
    /// runs it while replaying (a standby keeps a few for failover).
    pub fn output(
        &mut self,
        kind: Kind,
        port: u16,
        bytes: &[u8],
        release: impl FnOnce() + Send + 'static,
    ) -> Result<(), DeviceError> {
        debug_assert!(kind.is_output(), "{kind} is not an output kind");
        let ordinal = self.ordinal;
        let rec = OutputRecord::of(port, bytes);
        // A lost primary may take the VM live right here (`crate::failover`).
        self.journal.settle()?;
        match self.journal.mode() {
            Mode::Live => self.journal.gate(None, kind, Box::new(release)),
            Mode::Record => {
                let seq = self.journal.append(kind, ordinal, &rec.to_bytes())?;
                self.journal.gate(Some(seq), kind, Box::new(release));
            }
            Mode::Replay => {
                let e = self.journal.expect(kind, Some(port), ordinal, || {
                    format!("{kind} output on port {port:#x} of {} bytes", bytes.len())
                })?;
                let seq = e.header.seq;
                let logged =
                    OutputRecord::from_bytes(e.payload).ok_or_else(|| Divergence::Entry {
                        ordinal,
                        expected: format!("{kind} output record"),
                        found: crate::journal::describe(&e),
                    })?;
                self.journal.consume();
                if logged != rec {
                    return Err(Divergence::Output {
                        ordinal,
                        kind,
                        port,
                        len: rec.len,
                        digest: rec.digest,
                        log_len: logged.len,
                        log_digest: logged.digest,
                    }
                    .into());
                }
                self.journal.replayed_output(seq, kind, Box::new(release));
            }
        }
        Ok(())
    }

    pub(crate) fn request_exit(&mut self, code: u32) {
        self.requests.exit_code = Some(code);
    }

    pub(crate) fn request_fault(&mut self, vector: u32) {
        self.requests.fault_vector = Some(vector);
    }

    pub(crate) fn request_wait(&mut self, timeout_us: u32) {
        self.requests.wait_us = Some(timeout_us);
    }

    pub(crate) fn request_timer(&mut self, period_us: u32) {
        self.requests.timer_us = Some(period_us);
    }
}

/// A device's `produce` said it wrote more than it was given.
fn overlong(kind: Kind, port: u16, max_len: usize, n: usize) -> DeviceError {
    DeviceError::BadRequest {
        port,
        detail: format!("{kind} input of {n} bytes exceeds the {max_len} claimed"),
    }
}

/// A device model on port I/O. (`Any`: state transfer finds the devices
/// with state by their type, `vm/snapshot.rs`.)
pub trait Device: Send + std::any::Any {
    /// Short name for messages.
    fn name(&self) -> &'static str;

    /// Ports this device owns (must not overlap another device's).
    fn ports(&self) -> RangeInclusive<u16>;

    /// An `out` exit: `data` holds the 1, 2 or 4 bytes written (little-endian).
    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError>;

    /// An `in` exit: fill `data` (1, 2 or 4 bytes). Default: unsupported.
    fn io_in(
        &mut self,
        ctx: &mut ExitCtx<'_>,
        port: u16,
        data: &mut [u8],
    ) -> Result<(), DeviceError> {
        let _ = ctx;
        Err(DeviceError::Unsupported {
            port,
            dir: "in",
            size: data.len(),
        })
    }

    /// Called once per pass of a WAIT exit (in every mode): deliver what is
    /// pending through `ctx.poll_input` and return true if something was
    /// delivered. Default: nothing to deliver.
    fn poll(&mut self, ctx: &mut ExitCtx<'_>) -> Result<bool, DeviceError> {
        let _ = ctx;
        Ok(false)
    }

    /// A host fd that becomes readable when `poll` would deliver; the WAIT
    /// port sleeps on it (record and live mode).
    fn wait_fd(&self) -> Option<RawFd> {
        None
    }
}

/// Reads the 32-bit value of an `out`, or names the bad access size.
pub fn out_u32(port: u16, data: &[u8]) -> Result<u32, DeviceError> {
    match <[u8; 4]>::try_from(data) {
        Ok(b) => Ok(u32::from_le_bytes(b)),
        Err(_) => Err(DeviceError::Unsupported {
            port,
            dir: "out",
            size: data.len(),
        }),
    }
}

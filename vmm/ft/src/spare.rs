//! A spare: a VM waiting, not running, for a live side to transfer its
//! state (issue 9, `docs/transfer.md`). Each attempt is one TCP connection
//! carrying one transfer stream (`docs/protocol.md` §6). A refused attempt
//! — a cut stream, garbage, a page beyond guest memory, another guest or
//! version, a digest mismatch — is reported with what was wrong and the
//! spare keeps waiting for the next one; the sender's VM is not affected.
//!
//! The live side's half is [`offer_state`]: it tries the spares in order
//! and transfers to the first that takes the state whole.
//!
//! [`join_as_backup`] is the spare's whole wait: after an accepted
//! transfer the same connection carries the pair's channel, and the spare
//! replays the live side's log from the join exit (`crate::rejoin` is the
//! live side's half).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ftvm_vmm::transfer::{PrecopyConfig, ReceiveReport, SendReport, receive, send_live};
use ftvm_vmm::{ExitBoundary, Vm, VmControl};

/// How often a waiting spare checks `give_up` between connections.
const POLL: Duration = Duration::from_millis(50);

/// What ended a wait with no state received.
#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    /// The listener failed.
    #[error("spare on {addr}: accepting a transfer")]
    Accept {
        /// The listening address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The VM could not take the live side's log (it was not built to replay).
    #[error("attaching the live side's log to the spare's VM")]
    Attach {
        /// Why.
        #[source]
        source: ftvm_vmm::VmError,
    },
    /// `give_up` returned true (a signal, a deadline).
    #[error("spare on {addr}: stopped waiting after {refused} refused attempts")]
    GaveUp {
        /// The listening address.
        addr: String,
        /// Attempts refused before.
        refused: u64,
    },
}

/// An accepted transfer: `vm` holds the sender's state at the join point.
#[derive(Debug)]
pub struct Joined {
    /// The receiver's report (join exit ordinal, digest, bytes).
    pub report: ReceiveReport,
    /// The sender's connection, still open.
    pub stream: TcpStream,
    /// The sender's address.
    pub peer: SocketAddr,
    /// Attempts refused before this one.
    pub refused: u64,
}

/// Waits on `listener` until one transfer attempt is received into `vm`
/// whole and with the sender's digest. A connection that sends nothing for
/// `stall` is cut and refused like a bad stream. Every refused attempt is
/// passed to `on_refused` (the peer and the error naming what was wrong:
/// a [`ftvm_vmm::transfer::ReceiveStateError`], or the connection's own I/O error).
pub fn wait_for_state(
    listener: &TcpListener,
    vm: &mut Vm,
    stall: Duration,
    give_up: &dyn Fn() -> bool,
    mut on_refused: impl FnMut(SocketAddr, &(dyn std::error::Error + 'static)),
) -> Result<Joined, SpareError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let accept_err = |source| SpareError::Accept {
        addr: addr.clone(),
        source,
    };
    listener.set_nonblocking(true).map_err(accept_err)?;
    let mut refused = 0;
    loop {
        if give_up() {
            return Err(SpareError::GaveUp { addr, refused });
        }
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(accept_err(e)),
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(stall)))
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = setup {
            // The connection, not the listener, failed: the next one may do.
            refused += 1;
            on_refused(peer, &e);
            continue;
        }
        match receive(vm, &stream) {
            Ok(report) => {
                return Ok(Joined {
                    report,
                    stream,
                    peer,
                    refused,
                });
            }
            Err(e) => {
                refused += 1;
                on_refused(peer, &e);
            }
        }
    }
}

/// A spare that became a backup: the state it took and the pair it is in.
#[derive(Debug)]
pub struct Backing {
    /// The receiver's report (join exit ordinal, next seq, digest, bytes).
    pub report: ReceiveReport,
    /// The live side's address.
    pub peer: SocketAddr,
    /// The live side's Hello: VM name and the generation the pair runs at.
    pub hello: ftvm_wire::control::Hello,
    /// Replay counters.
    pub stats: std::sync::Arc<crate::SourceStats>,
    /// Tells the primary why the backup stops.
    pub stopper: crate::Stopper,
    /// Attempts refused before (transfers and handshakes).
    pub refused: u64,
}

/// The spare's whole wait: [`wait_for_state`] into `vm`, then the pair's
/// channel over the same TCP connection (the live side handshakes on it
/// right after the transfer; `docs/reprotect.md`), attached to `vm` as its
/// log source with the standby gate and `plan`. A handshake that fails
/// (another image, other settings) is refused like a bad transfer, and the
/// spare waits for the next attempt.
#[allow(clippy::too_many_arguments)]
pub fn join_as_backup(
    settings: &ftvm_tuning::Settings,
    listener: &TcpListener,
    vm: &mut Vm,
    image: &[u8],
    opts: &crate::BackupOptions,
    plan: crate::StandbyPlan,
    give_up: &dyn Fn() -> bool,
    mut on_refused: impl FnMut(SocketAddr, &(dyn std::error::Error + 'static)),
) -> Result<Backing, SpareError> {
    let mut refused = 0;
    loop {
        let joined = wait_for_state(listener, vm, STALL, give_up, &mut on_refused)?;
        refused += joined.refused;
        let peer = joined.peer;
        let _ = joined.stream.set_read_timeout(None);
        let t = match ftvm_channel::transport::tcp::TcpTransport::from_stream(
            joined.stream,
            settings.channel.socket_buffer_bytes,
        ) {
            Ok(t) => t,
            Err(e) => {
                refused += 1;
                on_refused(peer, &e);
                continue;
            }
        };
        let mut tcp = settings.clone();
        tcp.channel.transport = ftvm_tuning::TransportKind::Tcp;
        match crate::pair::backup_end(&tcp, Box::new(t), image, opts, joined.report.next_seq) {
            Ok(end) => {
                let (hello, stats, stopper) =
                    (end.hello.clone(), end.stats.clone(), end.stopper.clone());
                end.attach(vm, Some(plan))
                    .map_err(|source| SpareError::Attach { source })?;
                return Ok(Backing {
                    report: joined.report,
                    peer,
                    hello,
                    stats,
                    stopper,
                    refused,
                });
            }
            Err(e) => {
                refused += 1;
                on_refused(peer, &e);
            }
        }
    }
}

/// The log source of a spare's VM until a live side joins
/// ([`join_as_backup`] replaces it): build the VM with
/// `RunMode::Replay(Box::new(Unattached))`.
#[derive(Debug, Default)]
pub struct Unattached;

impl ftvm_vmm::LogSource for Unattached {
    fn poll(&mut self) -> Result<ftvm_vmm::SourcePoll, ftvm_vmm::LogSourceError> {
        Err(ftvm_vmm::LogSourceError::Channel(
            "the spare has no live side to replay yet".into(),
        ))
    }
    fn peek(&mut self) -> Option<ftvm_vmm::log::EntryRef<'_>> {
        None
    }
    fn consume(&mut self) {}
}

/// A transfer connection that sends nothing for this long is cut.
const STALL: Duration = Duration::from_secs(5);

/// A spare's key at the arbiter (`docs/arbiter.md`: a key per spare under
/// the VM's prefix), so a live side finds it without a static list. The
/// key is removed when this is dropped (a SIGKILLed spare leaves its key:
/// the live side then meets a refused connection and tries the next one).
pub struct SpareRegistration {
    arbiter: std::sync::Arc<dyn ftvm_arbiter::Arbiter>,
    vm: String,
    addr: String,
}

impl std::fmt::Debug for SpareRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpareRegistration")
            .field("arbiter", &self.arbiter.url())
            .field("vm", &self.vm)
            .field("addr", &self.addr)
            .finish()
    }
}

impl SpareRegistration {
    /// Registers `addr` (where this spare waits) as a spare of `vm`.
    pub fn register(
        arbiter: std::sync::Arc<dyn ftvm_arbiter::Arbiter>,
        vm: &str,
        addr: &str,
    ) -> Result<SpareRegistration, ftvm_arbiter::ArbiterError> {
        arbiter.register_spare(vm, addr)?;
        Ok(SpareRegistration {
            arbiter,
            vm: vm.to_string(),
            addr: addr.to_string(),
        })
    }

    /// The registered address.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for SpareRegistration {
    fn drop(&mut self) {
        // Best effort: an arbiter that is down keeps a stale key, which
        // costs the live side one refused connection.
        let _ = self.arbiter.unregister_spare(&self.vm, &self.addr);
    }
}

/// No spare took the state; the live VM runs on unprotected.
#[derive(Debug, thiserror::Error)]
#[error("no spare took the state ({} tried): {}", tried.len(), tried.join("; "))]
pub struct OfferError {
    /// Each spare tried, with what went wrong (`ADDR: why`).
    pub tried: Vec<String>,
}

/// A transfer a spare took.
#[derive(Debug)]
pub struct Offered {
    /// The sender's report (join ordinal, digest, pause, bytes).
    pub report: SendReport,
    /// The connection to the spare, still open.
    pub stream: TcpStream,
    /// The spare's address, as given.
    pub spare: String,
    /// Spares tried before, each with what went wrong.
    pub failed: Vec<String>,
}

/// Transfers the running VM behind `control` to the first of `spares`
/// (`host:port`) that takes it: connect (within `connect_timeout`), live
/// pre-copy, join. A spare that refuses the connection, stalls longer than
/// `stall` or cuts the stream is skipped with what went wrong, and the next
/// one is tried; the VM keeps running throughout. `on_join(spare)` makes
/// the action run at the join exit of the attempt to `spare` (start
/// logging to it). If it ran and the attempt failed afterwards (the stream
/// cut after the join), the caller's sink sees the lost peer. Each
/// connection gets socket buffers of `socket_buffer_bytes` (the channel's:
/// the connection becomes the pair's channel), so what the sender counts as
/// sent is not megabytes ahead of what the spare has.
pub fn offer_state<F>(
    control: &VmControl,
    spares: &[String],
    connect_timeout: Duration,
    stall: Duration,
    socket_buffer_bytes: usize,
    cfg: &PrecopyConfig,
    mut on_join: impl FnMut(&str) -> F,
) -> Result<Offered, OfferError>
where
    F: FnOnce(&mut ExitBoundary<'_>) + Send + 'static,
{
    let mut failed = Vec::new();
    for (n, spare) in spares.iter().enumerate() {
        let stream = match connect(spare, connect_timeout, stall, socket_buffer_bytes) {
            Ok(s) => s,
            Err(why) => {
                failed.push(format!("{spare}: {why}"));
                continue;
            }
        };
        let cfg = PrecopyConfig {
            attempt: cfg.attempt + n as u64,
            ..cfg.clone()
        };
        match send_live(control, stream, &cfg, on_join(spare)) {
            Ok((report, stream)) => {
                return Ok(Offered {
                    report,
                    stream,
                    spare: spare.clone(),
                    failed,
                });
            }
            Err(e) => failed.push(format!("{spare}: {}", ftvm_vmm::error_chain(&e))),
        }
    }
    Err(OfferError { tried: failed })
}

fn connect(
    spare: &str,
    timeout: Duration,
    stall: Duration,
    buffer_bytes: usize,
) -> Result<TcpStream, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = spare
        .to_socket_addrs()
        .map_err(|e| format!("not an address: {e}"))?
        .collect();
    let mut last = "resolves to no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                s.set_write_timeout(Some(stall))
                    .and_then(|()| s.set_nodelay(true))
                    .and_then(|()| {
                        ftvm_channel::transport::tcp::set_socket_buffers(&s, buffer_bytes)
                    })
                    .map_err(|e| format!("connected to {a}, then: {e}"))?;
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    Err(last)
}

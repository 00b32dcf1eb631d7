//! One connection as both ends see it: the transport, the reassembly buffer,
//! a queue of control frames to send, traffic timestamps for liveness, and
//! the handshake.

use std::time::{Duration, Instant};

use ftvm_wire::control::{Control, Hello, Role};
use ftvm_wire::{Kind, VERSION};

use crate::error::ChannelError;
use crate::rx::FrameReader;
use crate::transport::{Interest, Transport, TransportError};

/// What a side announces in its Hello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HelloParams {
    /// Fingerprint of the settings both ends must share (`Settings::fingerprint`).
    pub settings_fingerprint: u64,
    /// The text behind the fingerprint (`Settings::fingerprint_text`), so a
    /// mismatch names the keys that differ; empty for tools that have none.
    pub settings_text: String,
    /// Digest of the guest image (0 for channel tools).
    pub image_digest: u64,
    /// Primary: seq of its first entry. Backup: seq it expects, or 0 to adopt the primary's.
    pub next_seq: u64,
    /// Primary: the generation the pair runs at. Backup: 0 (it adopts the primary's).
    pub generation: u64,
    /// Name of the protected VM. Backup: empty to adopt the primary's.
    pub vm: String,
    /// Guest name (`--guest`); empty for channel tools.
    pub guest: String,
    /// Guest argument (`--arg`).
    pub guest_arg: u64,
}

impl HelloParams {
    /// The Hello of a channel end with `settings` and nothing else (channel
    /// tools; a VMM end adds its guest, VM and generation, `ftvm_ft::hello`).
    pub fn of_settings(settings: &ftvm_tuning::Settings) -> HelloParams {
        HelloParams {
            settings_fingerprint: settings.fingerprint(),
            settings_text: settings.fingerprint_text(),
            ..HelloParams::default()
        }
    }
}

/// Traffic counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes handed to the transport.
    pub bytes_out: u64,
    /// Bytes received from the transport.
    pub bytes_in: u64,
    /// `send` calls that moved bytes.
    pub sends: u64,
    /// Ticks sent.
    pub ticks_out: u64,
    /// Control frames received (ACKs, ticks).
    pub control_in: u64,
}

#[derive(Debug)]
pub(crate) struct Link {
    pub t: Box<dyn Transport>,
    pub rx: FrameReader,
    ctrl: Vec<u8>,
    ctrl_sent: usize,
    pub last_rx: Instant,
    pub last_tx: Instant,
    pub peer: String,
    pub stats: LinkStats,
}

impl Link {
    pub fn new(t: Box<dyn Transport>) -> Link {
        let now = Instant::now();
        Link {
            peer: t.peer(),
            t,
            rx: FrameReader::new(),
            ctrl: Vec::with_capacity(4096),
            ctrl_sent: 0,
            last_rx: now,
            last_tx: now,
            stats: LinkStats::default(),
        }
    }

    /// Queues a control frame; it leaves with the next `flush_control`.
    pub fn queue(&mut self, c: Control) {
        // Our own frames are built within their limits (names and texts are
        // checked before a Hello is made, reasons are cut to length), so
        // encoding cannot fail; a frame that did would simply not be queued
        // (`append_frame` leaves the buffer as it was). Written in place: an
        // ACK, Tick or Released costs no allocation.
        let _ = c.append_frame(&mut self.ctrl);
        if c.kind() == Kind::Tick {
            self.stats.ticks_out += 1;
        }
    }

    /// True while control bytes wait to be sent.
    pub fn control_pending(&self) -> bool {
        self.ctrl_sent < self.ctrl.len()
    }

    /// Sends queued control bytes; returns bytes sent.
    pub fn flush_control(&mut self, now: Instant) -> Result<usize, TransportError> {
        if !self.control_pending() {
            return Ok(0);
        }
        let n = self.t.send(&[&self.ctrl[self.ctrl_sent..]])?;
        self.ctrl_sent += n;
        if self.ctrl_sent == self.ctrl.len() {
            self.ctrl.clear();
            self.ctrl_sent = 0;
        }
        self.note_sent(n, now);
        Ok(n)
    }

    pub fn send(&mut self, bufs: &[&[u8]], now: Instant) -> Result<usize, TransportError> {
        let n = self.t.send(bufs)?;
        self.note_sent(n, now);
        Ok(n)
    }

    fn note_sent(&mut self, n: usize, now: Instant) {
        if n > 0 {
            self.last_tx = now;
            self.stats.bytes_out += n as u64;
            self.stats.sends += 1;
        }
    }

    /// One `recv` into the reassembly buffer.
    pub fn fill(&mut self, now: Instant) -> Result<usize, TransportError> {
        let n = self.rx.fill(self.t.as_mut())?;
        if n > 0 {
            self.last_rx = now;
            self.stats.bytes_in += n as u64;
        }
        Ok(n)
    }

    /// Blocks up to `timeout` until the peer sends, or — when `sending` (bytes
    /// of ours wait to go out) — until there is room to send.
    pub fn wait(&mut self, sending: bool, timeout: Duration) -> Result<(), TransportError> {
        let interest = if sending || self.control_pending() {
            Interest::Both
        } else {
            Interest::Readable
        };
        self.t.wait(interest, timeout)
    }

    /// Time since the peer was last heard from.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_rx)
    }

    /// Exchanges Hellos and checks the peer's against ours. Frames that
    /// follow the peer's Hello stay buffered for the caller.
    pub fn handshake(
        &mut self,
        role: Role,
        ours: HelloParams,
        timeout: Duration,
    ) -> Result<Hello, ChannelError> {
        let hello = Hello {
            role,
            version: VERSION,
            settings_fingerprint: ours.settings_fingerprint,
            image_digest: ours.image_digest,
            next_seq: ours.next_seq,
            generation: ours.generation,
            guest_arg: ours.guest_arg,
            vm: ours.vm,
            guest: ours.guest,
            settings: ours.settings_text,
        };
        if let Err(e) = hello.to_bytes() {
            return Err(ChannelError::Handshake {
                peer: self.peer.clone(),
                what: format!("our own hello cannot be sent: {e}"),
            });
        }
        self.queue(Control::Hello(hello.clone()));
        let start = Instant::now();
        let refuse = |peer: &str, what: String| ChannelError::Handshake {
            peer: peer.to_string(),
            what,
        };
        let transport_err = |source| ChannelError::Transport {
            what: "handshake",
            last_sent: 0,
            last_acked: 0,
            last_received: 0,
            source,
        };
        loop {
            let now = Instant::now();
            self.flush_control(now).map_err(transport_err)?;
            let got = self.fill(now).map_err(transport_err)?;
            match self.rx.next_frame() {
                Ok(Some((offset, frame))) => {
                    if frame.header.kind != Kind::Hello {
                        return Err(refuse(
                            &self.peer,
                            format!(
                                "first frame is {} at offset {offset}, expected hello",
                                frame.header.kind
                            ),
                        ));
                    }
                    let theirs = Hello::from_bytes(frame.payload)
                        .map_err(|source| ChannelError::Control { offset, source })?;
                    check_hello(&self.peer, &hello, &theirs)?;
                    // Our Hello must be out before the caller starts polling.
                    while self.control_pending() {
                        self.flush_control(Instant::now()).map_err(transport_err)?;
                        if start.elapsed() > timeout {
                            return Err(refuse(&self.peer, "could not send hello in time".into()));
                        }
                    }
                    return Ok(theirs);
                }
                Ok(None) => {}
                Err(bad) => {
                    return Err(ChannelError::Corrupt {
                        offset: bad.offset,
                        expected_seq: 0,
                        source: bad.error,
                    });
                }
            }
            if start.elapsed() > timeout {
                return Err(refuse(
                    &self.peer,
                    format!("no hello within {} ms", timeout.as_millis()),
                ));
            }
            if got == 0 {
                // Handshakes are rare: do not burn a core waiting for one.
                self.t
                    .wait(Interest::Readable, Duration::from_micros(200))
                    .map_err(transport_err)?;
            }
        }
    }
}

fn check_hello(peer: &str, ours: &Hello, theirs: &Hello) -> Result<(), ChannelError> {
    let refuse = |what: String| {
        Err(ChannelError::Handshake {
            peer: peer.to_string(),
            what,
        })
    };
    if theirs.version != VERSION {
        return refuse(format!(
            "peer speaks format version {}, this build speaks {}",
            theirs.version, VERSION
        ));
    }
    if theirs.role == ours.role {
        return refuse(format!("both ends are {:?}", ours.role));
    }
    if theirs.guest != ours.guest {
        return refuse(format!(
            "guest differs: peer runs {:?}, ours {:?}",
            theirs.guest, ours.guest
        ));
    }
    if theirs.guest_arg != ours.guest_arg {
        return refuse(format!(
            "guest argument differs: peer --arg {}, ours --arg {}",
            theirs.guest_arg, ours.guest_arg
        ));
    }
    if theirs.image_digest != ours.image_digest {
        return refuse(format!(
            "guest image differs: peer {:#018x}, ours {:#018x} (another build of guest {:?})",
            theirs.image_digest, ours.image_digest, ours.guest
        ));
    }
    if !theirs.vm.is_empty() && !ours.vm.is_empty() && theirs.vm != ours.vm {
        return refuse(format!(
            "VM name differs: peer protects {:?}, ours {:?}",
            theirs.vm, ours.vm
        ));
    }
    if theirs.settings_fingerprint != ours.settings_fingerprint {
        return refuse(settings_mismatch(ours, theirs));
    }
    if ours.role == Role::Primary && theirs.next_seq != 0 && theirs.next_seq != ours.next_seq {
        return refuse(format!(
            "backup expects seq {}, primary starts at seq {}",
            theirs.next_seq, ours.next_seq
        ));
    }
    Ok(())
}

/// Names the settings keys that differ between two Hellos' settings texts
/// (`key=value` lines), or both fingerprints when a text is missing.
fn settings_mismatch(ours: &Hello, theirs: &Hello) -> String {
    fn pairs(text: &str) -> Vec<(&str, &str)> {
        text.lines().filter_map(|l| l.split_once('=')).collect()
    }
    let (mine, peer) = (pairs(&ours.settings), pairs(&theirs.settings));
    let mut diffs = Vec::new();
    for (k, v) in &mine {
        match peer.iter().find(|(pk, _)| pk == k) {
            Some((_, pv)) if pv != v => diffs.push(format!("{k} (peer {pv}, ours {v})")),
            None => diffs.push(format!("{k} (peer: not set, ours {v})")),
            _ => {}
        }
    }
    for (k, v) in &peer {
        if !mine.iter().any(|(mk, _)| mk == k) {
            diffs.push(format!("{k} (peer {v}, ours: not set)"));
        }
    }
    if diffs.is_empty() {
        format!(
            "settings fingerprint differs: peer {:#018x}, ours {:#018x} (the [vmm] settings or channel.transport differ)",
            theirs.settings_fingerprint, ours.settings_fingerprint
        )
    } else {
        format!("settings both ends must share differ: {}", diffs.join(", "))
    }
}

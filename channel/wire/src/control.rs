//! Typed payloads of the control frames (seq 0, never log entries).
//!
//! All fields little-endian, fixed size; a payload of the wrong size is a
//! [`ControlError`] naming the kind and both sizes.

use crate::encode;
use crate::frame::{Header, Kind, frame_len};

/// A control payload that does not match its kind's layout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The payload size is not the kind's fixed size.
    #[error("{kind} payload of {len} bytes, expected {expected}")]
    BadSize {
        /// The frame kind.
        kind: Kind,
        /// Payload bytes found.
        len: usize,
        /// Payload bytes expected.
        expected: usize,
    },
    /// A field holds a value with no meaning.
    #[error("{kind} field {field} has invalid value {value}")]
    BadField {
        /// The frame kind.
        kind: Kind,
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
    },
}

fn u64_at(p: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&p[i * 8..i * 8 + 8]);
    u64::from_le_bytes(a)
}

fn check(kind: Kind, p: &[u8], expected: usize) -> Result<(), ControlError> {
    if p.len() != expected {
        return Err(ControlError::BadSize {
            kind,
            len: p.len(),
            expected,
        });
    }
    Ok(())
}

/// Which end of a channel sent a Hello.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The recording side (primary VMM or `ftvm channel source`).
    #[default]
    Primary = 1,
    /// The replaying side (backup VMM or `ftvm channel sink`).
    Backup = 2,
}

/// Longest VM or guest name in a Hello.
pub const MAX_NAME_LEN: usize = 64;
/// Longest settings text in a Hello.
pub const MAX_SETTINGS_TEXT_LEN: usize = 16 << 10;
/// Longest reason text in a Stop.
pub const MAX_REASON_LEN: usize = 1024;

/// Handshake: first frame in each direction.
///
/// Layout (little-endian): `0 role u8 | 1 version u8 | 2..8 reserved 0 |
/// 8 settings_fingerprint u64 | 16 image_digest u64 | 24 next_seq u64 |
/// 32 generation u64 | 40 guest_arg u64 | 48 vm_len u16 | 50 guest_len u16 |
/// 52 settings_len u32 | 56 vm, guest, settings (UTF-8, back to back)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// Sender's role.
    pub role: Role,
    /// Format version the sender speaks (also checked in the header).
    pub version: u8,
    /// Fingerprint of the settings both ends must agree on.
    pub settings_fingerprint: u64,
    /// Digest of the guest image (0 when no guest runs, e.g. channel tools).
    pub image_digest: u64,
    /// Sequence number of the next log entry the sender will send (primary),
    /// or expects (backup).
    pub next_seq: u64,
    /// Primary: the generation the pair runs at (won at the arbiter); backup: 0.
    pub generation: u64,
    /// The guest's argument (`--arg`), which both ends must share.
    pub guest_arg: u64,
    /// Name of the protected VM (the arbiter's key); empty for channel tools.
    /// A backup may send it empty to adopt the primary's.
    pub vm: String,
    /// Name of the guest (`--guest`); empty for channel tools.
    pub guest: String,
    /// The fingerprinted settings as `key = value` lines
    /// (`Settings::fingerprint_text`), so a mismatch can name the keys.
    pub settings: String,
}

impl Hello {
    /// Size of the fixed part of the payload.
    pub const FIXED_LEN: usize = 56;

    /// Payload size of this Hello.
    pub fn len(&self) -> usize {
        Self::FIXED_LEN + self.vm.len() + self.guest.len() + self.settings.len()
    }

    /// Never empty (the fixed part is always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Encodes the payload; `Err` names a field that is too long.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ControlError> {
        let too_long = |field: &'static str, len: usize| ControlError::BadField {
            kind: Kind::Hello,
            field,
            value: len as u64,
        };
        if self.vm.len() > MAX_NAME_LEN {
            return Err(too_long("vm_len", self.vm.len()));
        }
        if self.guest.len() > MAX_NAME_LEN {
            return Err(too_long("guest_len", self.guest.len()));
        }
        if self.settings.len() > MAX_SETTINGS_TEXT_LEN {
            return Err(too_long("settings_len", self.settings.len()));
        }
        let mut b = vec![0u8; Self::FIXED_LEN];
        b[0] = self.role as u8;
        b[1] = self.version;
        b[8..16].copy_from_slice(&self.settings_fingerprint.to_le_bytes());
        b[16..24].copy_from_slice(&self.image_digest.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.generation.to_le_bytes());
        b[40..48].copy_from_slice(&self.guest_arg.to_le_bytes());
        b[48..50].copy_from_slice(&(self.vm.len() as u16).to_le_bytes());
        b[50..52].copy_from_slice(&(self.guest.len() as u16).to_le_bytes());
        b[52..56].copy_from_slice(&(self.settings.len() as u32).to_le_bytes());
        b.extend_from_slice(self.vm.as_bytes());
        b.extend_from_slice(self.guest.as_bytes());
        b.extend_from_slice(self.settings.as_bytes());
        Ok(b)
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Hello, ControlError> {
        if p.len() < Self::FIXED_LEN {
            return Err(ControlError::BadSize {
                kind: Kind::Hello,
                len: p.len(),
                expected: Self::FIXED_LEN,
            });
        }
        let bad = |field: &'static str, value: u64| ControlError::BadField {
            kind: Kind::Hello,
            field,
            value,
        };
        let role = match p[0] {
            1 => Role::Primary,
            2 => Role::Backup,
            v => return Err(bad("role", u64::from(v))),
        };
        if p[2..8].iter().any(|b| *b != 0) {
            return Err(bad("reserved", u64_at(p, 0) >> 16));
        }
        let vm_len = usize::from(u16::from_le_bytes([p[48], p[49]]));
        let guest_len = usize::from(u16::from_le_bytes([p[50], p[51]]));
        let settings_len = u32::from_le_bytes([p[52], p[53], p[54], p[55]]) as usize;
        if vm_len > MAX_NAME_LEN {
            return Err(bad("vm_len", vm_len as u64));
        }
        if guest_len > MAX_NAME_LEN {
            return Err(bad("guest_len", guest_len as u64));
        }
        if settings_len > MAX_SETTINGS_TEXT_LEN {
            return Err(bad("settings_len", settings_len as u64));
        }
        let expected = Self::FIXED_LEN + vm_len + guest_len + settings_len;
        check(Kind::Hello, p, expected)?;
        let text = |field: &'static str, at: usize, len: usize| {
            std::str::from_utf8(&p[at..at + len])
                .map(str::to_owned)
                .map_err(|e| bad(field, e.valid_up_to() as u64))
        };
        let at = Self::FIXED_LEN;
        Ok(Hello {
            role,
            version: p[1],
            settings_fingerprint: u64_at(p, 1),
            image_digest: u64_at(p, 2),
            next_seq: u64_at(p, 3),
            generation: u64_at(p, 4),
            guest_arg: u64_at(p, 5),
            vm: text("vm", at, vm_len)?,
            guest: text("guest", at + vm_len, guest_len)?,
            settings: text("settings", at + vm_len + guest_len, settings_len)?,
        })
    }
}

/// Cumulative acknowledgement, backup to primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// Highest sequence number received contiguously and validated.
    pub acked_seq: u64,
    /// Highest sequence number the backup has replayed (applied).
    pub replayed_seq: u64,
    /// Exit ordinal the backup's replay has reached.
    pub replay_ordinal: u64,
    /// `time_ns` of the newest primary tick the backup had received when it
    /// sent this ACK (0: none yet). Renews the primary's ACK lease when the
    /// log is idle (docs/protocol.md §3, "Lease").
    pub echo_ns: u64,
}

impl Ack {
    /// Payload size.
    pub const LEN: usize = 32;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.acked_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.replayed_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.replay_ordinal.to_le_bytes());
        b[24..32].copy_from_slice(&self.echo_ns.to_le_bytes());
        b
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Ack, ControlError> {
        check(Kind::Ack, p, Self::LEN)?;
        let a = Ack {
            acked_seq: u64_at(p, 0),
            replayed_seq: u64_at(p, 1),
            replay_ordinal: u64_at(p, 2),
            echo_ns: u64_at(p, 3),
        };
        if a.replayed_seq > a.acked_seq {
            return Err(ControlError::BadField {
                kind: Kind::Ack,
                field: "replayed_seq",
                value: a.replayed_seq,
            });
        }
        Ok(a)
    }
}

/// Liveness on an otherwise idle direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Highest log-entry sequence number the sender has sent (primary) or
    /// ACKed (backup) so far.
    pub last_seq: u64,
    /// Primary: its monotonic clock in nanoseconds since the connection began
    /// (never 0). Backup: the `time_ns` of the newest primary tick it has
    /// received (the echo that renews the primary's ACK lease), 0 if none.
    pub time_ns: u64,
}

impl Tick {
    /// Payload size.
    pub const LEN: usize = 16;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.last_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.time_ns.to_le_bytes());
        b
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Tick, ControlError> {
        check(Kind::Tick, p, Self::LEN)?;
        Ok(Tick {
            last_seq: u64_at(p, 0),
            time_ns: u64_at(p, 1),
        })
    }
}

/// Orderly end of a stream: nothing follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Goodbye {
    /// Last log-entry sequence number sent (primary) or ACKed (backup).
    pub last_seq: u64,
}

impl Goodbye {
    /// Payload size.
    pub const LEN: usize = 8;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        self.last_seq.to_le_bytes()
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Goodbye, ControlError> {
        check(Kind::Goodbye, p, Self::LEN)?;
        Ok(Goodbye {
            last_seq: u64_at(p, 0),
        })
    }
}

/// Why a backup stopped replaying ([`Stop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StopCause {
    /// Replay diverged from the primary's log.
    Diverged = 1,
    /// An operator asked it to stop (SIGINT/SIGTERM).
    Requested = 2,
    /// Any other error of the backup.
    Failed = 3,
}

impl StopCause {
    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            StopCause::Diverged => "diverged",
            StopCause::Requested => "stop requested",
            StopCause::Failed => "failed",
        }
    }
}

/// Backup to primary: the backup stopped replaying and will ACK nothing
/// more; the connection closes after it. The primary treats the backup as
/// lost at once (it never goes on as a zombie that ACKs without replaying).
///
/// Layout: `0 last_seq u64 | 8 cause u8 | 9..12 reserved 0 | 12 reason_len u32 | 16 reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// Highest seq the backup replayed.
    pub last_seq: u64,
    /// Why it stopped.
    pub cause: StopCause,
    /// The backup's own message (UTF-8, at most [`MAX_REASON_LEN`] bytes).
    pub reason: String,
}

impl Stop {
    /// Size of the fixed part.
    pub const FIXED_LEN: usize = 16;

    /// Encodes the payload (an over-long reason is cut at a char boundary).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut cut = self.reason.len().min(MAX_REASON_LEN);
        while !self.reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &self.reason.as_bytes()[..cut];
        let mut b = vec![0u8; Self::FIXED_LEN];
        b[0..8].copy_from_slice(&self.last_seq.to_le_bytes());
        b[8] = self.cause as u8;
        b[12..16].copy_from_slice(&(reason.len() as u32).to_le_bytes());
        b.extend_from_slice(reason);
        b
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Stop, ControlError> {
        if p.len() < Self::FIXED_LEN {
            return Err(ControlError::BadSize {
                kind: Kind::Stop,
                len: p.len(),
                expected: Self::FIXED_LEN,
            });
        }
        let bad = |field: &'static str, value: u64| ControlError::BadField {
            kind: Kind::Stop,
            field,
            value,
        };
        let cause = match p[8] {
            1 => StopCause::Diverged,
            2 => StopCause::Requested,
            3 => StopCause::Failed,
            v => return Err(bad("cause", u64::from(v))),
        };
        if p[9..12].iter().any(|b| *b != 0) {
            return Err(bad("reserved", u64::from(p[9])));
        }
        let len = u32::from_le_bytes([p[12], p[13], p[14], p[15]]) as usize;
        if len > MAX_REASON_LEN {
            return Err(bad("reason_len", len as u64));
        }
        check(Kind::Stop, p, Self::FIXED_LEN + len)?;
        let reason = std::str::from_utf8(&p[Self::FIXED_LEN..])
            .map_err(|e| bad("reason", e.valid_up_to() as u64))?
            .to_owned();
        Ok(Stop {
            last_seq: u64_at(p, 0),
            cause,
            reason,
        })
    }
}

/// Primary to backup: every output whose entry has `seq <= released_seq` has
/// been released (the packet sent, the shared-disk write done). A backup
/// that goes live re-issues the shared-disk writes after it and may re-send
/// the replies after it (docs/failover.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Highest seq whose output was released.
    pub released_seq: u64,
}

impl Released {
    /// Payload size.
    pub const LEN: usize = 8;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        self.released_seq.to_le_bytes()
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Released, ControlError> {
        check(Kind::Released, p, Self::LEN)?;
        Ok(Released {
            released_seq: u64_at(p, 0),
        })
    }
}

/// A decoded control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Handshake.
    Hello(Hello),
    /// Acknowledgement.
    Ack(Ack),
    /// Liveness.
    Tick(Tick),
    /// End of stream.
    Goodbye(Goodbye),
    /// The backup stopped replaying.
    Stop(Stop),
    /// The primary's released-through watermark.
    Released(Released),
}

impl Control {
    /// The frame kind of this control message.
    pub fn kind(&self) -> Kind {
        match self {
            Control::Hello(_) => Kind::Hello,
            Control::Ack(_) => Kind::Ack,
            Control::Tick(_) => Kind::Tick,
            Control::Goodbye(_) => Kind::Goodbye,
            Control::Stop(_) => Kind::Stop,
            Control::Released(_) => Kind::Released,
        }
    }

    /// Parses the payload of a control frame of `kind`; `None` if `kind` is not control.
    pub fn parse(kind: Kind, payload: &[u8]) -> Option<Result<Control, ControlError>> {
        Some(match kind {
            Kind::Hello => Hello::from_bytes(payload).map(Control::Hello),
            Kind::Ack => Ack::from_bytes(payload).map(Control::Ack),
            Kind::Tick => Tick::from_bytes(payload).map(Control::Tick),
            Kind::Goodbye => Goodbye::from_bytes(payload).map(Control::Goodbye),
            Kind::Stop => Stop::from_bytes(payload).map(Control::Stop),
            Kind::Released => Released::from_bytes(payload).map(Control::Released),
            _ => return None,
        })
    }

    /// The payload bytes of this control frame.
    pub fn payload(&self) -> Result<Vec<u8>, ControlError> {
        Ok(match self {
            Control::Hello(h) => h.to_bytes()?,
            Control::Ack(a) => a.to_bytes().to_vec(),
            Control::Tick(t) => t.to_bytes().to_vec(),
            Control::Goodbye(g) => g.to_bytes().to_vec(),
            Control::Stop(s) => s.to_bytes(),
            Control::Released(r) => r.to_bytes().to_vec(),
        })
    }

    /// Encodes the whole control frame into a new vector.
    pub fn to_frame(&self) -> Result<Vec<u8>, ControlError> {
        let mut v = Vec::new();
        self.append_frame(&mut v)?;
        Ok(v)
    }

    /// Appends the whole control frame to `out`; returns its length. The
    /// fixed-size kinds (Ack, Tick, Goodbye, Released) are encoded straight
    /// into `out`, so a sender that reuses its buffer does not allocate per
    /// frame. On error `out` is left as it was.
    pub fn append_frame(&self, out: &mut Vec<u8>) -> Result<usize, ControlError> {
        let kind = self.kind();
        match self {
            Control::Ack(a) => append_encoded(out, kind, &a.to_bytes()),
            Control::Tick(t) => append_encoded(out, kind, &t.to_bytes()),
            Control::Goodbye(g) => append_encoded(out, kind, &g.to_bytes()),
            Control::Released(r) => append_encoded(out, kind, &r.to_bytes()),
            Control::Hello(_) | Control::Stop(_) => append_encoded(out, kind, &self.payload()?),
        }
    }
}

/// Encodes a control frame of `kind` carrying `payload` at the end of `out`.
fn append_encoded(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) -> Result<usize, ControlError> {
    let start = out.len();
    out.resize(start + frame_len(payload.len()), 0);
    encode(
        &mut out[start..],
        &Header::new(kind, 0, 0, payload.len()),
        payload,
    )
    .map_err(|_| {
        out.truncate(start);
        ControlError::BadSize {
            kind,
            len: payload.len(),
            expected: MAX_CONTROL_PAYLOAD_LEN,
        }
    })
}

/// The largest control payload (a Hello with the longest names and settings text).
pub const MAX_CONTROL_PAYLOAD_LEN: usize =
    Hello::FIXED_LEN + 2 * MAX_NAME_LEN + MAX_SETTINGS_TEXT_LEN;
/// The largest control frame, for sizing buffers.
pub const MAX_CONTROL_FRAME_LEN: usize = frame_len(MAX_CONTROL_PAYLOAD_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;

    fn hello() -> Hello {
        Hello {
            role: Role::Backup,
            version: 2,
            settings_fingerprint: 0xdead_beef,
            image_digest: 7,
            next_seq: 1,
            generation: 4,
            guest_arg: 9,
            vm: "kv-a".into(),
            guest: "kv".into(),
            settings: "vmm.mem_mib = 64\n".into(),
        }
    }

    #[test]
    fn control_round_trip() {
        let all = [
            Control::Hello(hello()),
            Control::Ack(Ack {
                acked_seq: 10,
                replayed_seq: 9,
                replay_ordinal: 100,
                echo_ns: 5,
            }),
            Control::Tick(Tick {
                last_seq: 3,
                time_ns: 4,
            }),
            Control::Goodbye(Goodbye { last_seq: 99 }),
            Control::Stop(Stop {
                last_seq: 12,
                cause: StopCause::Diverged,
                reason: "divergence at exit 7: ü".into(),
            }),
            Control::Released(Released { released_seq: 77 }),
        ];
        for c in all {
            let f = c.to_frame().unwrap();
            assert!(f.len() <= MAX_CONTROL_FRAME_LEN);
            let (frame, _) = decode(&f).unwrap();
            let back = Control::parse(frame.header.kind, frame.payload)
                .unwrap()
                .unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn bad_control_payloads_are_named() {
        let e = Ack::from_bytes(&[0; 5]).unwrap_err();
        assert_eq!(e.to_string(), "ack payload of 5 bytes, expected 32");
        let mut a = Ack {
            acked_seq: 1,
            replayed_seq: 2,
            replay_ordinal: 0,
            echo_ns: 0,
        }
        .to_bytes();
        assert!(Ack::from_bytes(&a).is_err());
        a[8] = 1;
        assert!(Ack::from_bytes(&a).is_ok());
        let mut h = hello().to_bytes().unwrap();
        h[0] = 9;
        let e = Hello::from_bytes(&h).unwrap_err().to_string();
        assert_eq!(e, "hello field role has invalid value 9");
        // A name length pointing past the end is refused, naming the sizes.
        let mut h = hello().to_bytes().unwrap();
        h[48] = 60;
        let e = Hello::from_bytes(&h).unwrap_err().to_string();
        assert!(e.starts_with("hello payload of"), "{e}");
        let mut h = hello().to_bytes().unwrap();
        h[48] = 200;
        let e = Hello::from_bytes(&h).unwrap_err().to_string();
        assert_eq!(e, "hello field vm_len has invalid value 200");
        let long = Hello {
            vm: "x".repeat(MAX_NAME_LEN + 1),
            ..hello()
        };
        assert!(long.to_bytes().is_err());
        let mut s = Stop {
            last_seq: 1,
            cause: StopCause::Requested,
            reason: String::new(),
        }
        .to_bytes();
        s[8] = 0;
        let e = Stop::from_bytes(&s).unwrap_err().to_string();
        assert_eq!(e, "stop field cause has invalid value 0");
    }

    #[test]
    fn an_over_long_stop_reason_is_cut_at_a_char_boundary() {
        let s = Stop {
            last_seq: 1,
            cause: StopCause::Failed,
            reason: "é".repeat(MAX_REASON_LEN),
        };
        let back = Stop::from_bytes(&s.to_bytes()).unwrap();
        assert!(back.reason.len() <= MAX_REASON_LEN);
        assert!(back.reason.chars().all(|c| c == 'é'));
    }
}

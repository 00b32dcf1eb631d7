//! Typed payloads of the control frames (seq 0, never log entries).
//!
//! All fields little-endian, fixed size; a payload of the wrong size is a
//! [`ControlError`] naming the kind and both sizes.

use crate::frame::{Header, Kind, frame_len};
use crate::{EncodeError, encode};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The recording side (primary VMM or `ftvm channel source`).
    Primary = 1,
    /// The replaying side (backup VMM or `ftvm channel sink`).
    Backup = 2,
}

/// Handshake: first frame in each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl Hello {
    /// Payload size.
    pub const LEN: usize = 32;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.role as u8;
        b[1] = self.version;
        b[8..16].copy_from_slice(&self.settings_fingerprint.to_le_bytes());
        b[16..24].copy_from_slice(&self.image_digest.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_seq.to_le_bytes());
        b
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Hello, ControlError> {
        check(Kind::Hello, p, Self::LEN)?;
        let role = match p[0] {
            1 => Role::Primary,
            2 => Role::Backup,
            v => {
                return Err(ControlError::BadField {
                    kind: Kind::Hello,
                    field: "role",
                    value: u64::from(v),
                });
            }
        };
        if p[2..8].iter().any(|b| *b != 0) {
            return Err(ControlError::BadField {
                kind: Kind::Hello,
                field: "reserved",
                value: u64_at(p, 0) >> 16,
            });
        }
        Ok(Hello {
            role,
            version: p[1],
            settings_fingerprint: u64_at(p, 1),
            image_digest: u64_at(p, 2),
            next_seq: u64_at(p, 3),
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
}

impl Ack {
    /// Payload size.
    pub const LEN: usize = 24;

    /// Encodes the payload.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.acked_seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.replayed_seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.replay_ordinal.to_le_bytes());
        b
    }

    /// Decodes the payload.
    pub fn from_bytes(p: &[u8]) -> Result<Ack, ControlError> {
        check(Kind::Ack, p, Self::LEN)?;
        let a = Ack {
            acked_seq: u64_at(p, 0),
            replayed_seq: u64_at(p, 1),
            replay_ordinal: u64_at(p, 2),
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
    /// Sender's monotonic clock in nanoseconds (diagnostics only).
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

/// A decoded control frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Handshake.
    Hello(Hello),
    /// Acknowledgement.
    Ack(Ack),
    /// Liveness.
    Tick(Tick),
    /// End of stream.
    Goodbye(Goodbye),
}

impl Control {
    /// The frame kind of this control message.
    pub fn kind(&self) -> Kind {
        match self {
            Control::Hello(_) => Kind::Hello,
            Control::Ack(_) => Kind::Ack,
            Control::Tick(_) => Kind::Tick,
            Control::Goodbye(_) => Kind::Goodbye,
        }
    }

    /// Parses the payload of a control frame of `kind`; `None` if `kind` is not control.
    pub fn parse(kind: Kind, payload: &[u8]) -> Option<Result<Control, ControlError>> {
        Some(match kind {
            Kind::Hello => Hello::from_bytes(payload).map(Control::Hello),
            Kind::Ack => Ack::from_bytes(payload).map(Control::Ack),
            Kind::Tick => Tick::from_bytes(payload).map(Control::Tick),
            Kind::Goodbye => Goodbye::from_bytes(payload).map(Control::Goodbye),
            _ => return None,
        })
    }

    /// Encodes the whole control frame into `buf`, returning its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let mut tmp = [0u8; Hello::LEN];
        let payload: &[u8] = match self {
            Control::Hello(h) => {
                tmp = h.to_bytes();
                &tmp
            }
            Control::Ack(a) => {
                tmp[..Ack::LEN].copy_from_slice(&a.to_bytes());
                &tmp[..Ack::LEN]
            }
            Control::Tick(t) => {
                tmp[..Tick::LEN].copy_from_slice(&t.to_bytes());
                &tmp[..Tick::LEN]
            }
            Control::Goodbye(g) => {
                tmp[..Goodbye::LEN].copy_from_slice(&g.to_bytes());
                &tmp[..Goodbye::LEN]
            }
        };
        encode(buf, &Header::new(self.kind(), 0, 0, payload.len()), payload)
    }

    /// Encodes the whole control frame into a new vector.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut v = vec![0u8; frame_len(Hello::LEN)];
        // Control payloads are fixed and small: encoding cannot fail.
        let n = self.encode(&mut v).unwrap_or(0);
        v.truncate(n);
        v
    }
}

/// The largest control frame, for sizing buffers.
pub const MAX_CONTROL_FRAME_LEN: usize = frame_len(Hello::LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;

    #[test]
    fn control_round_trip() {
        let all = [
            Control::Hello(Hello {
                role: Role::Backup,
                version: 1,
                settings_fingerprint: 0xdead_beef,
                image_digest: 7,
                next_seq: 1,
            }),
            Control::Ack(Ack {
                acked_seq: 10,
                replayed_seq: 9,
                replay_ordinal: 100,
            }),
            Control::Tick(Tick {
                last_seq: 3,
                time_ns: 4,
            }),
            Control::Goodbye(Goodbye { last_seq: 99 }),
        ];
        for c in all {
            let f = c.to_frame();
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
        assert_eq!(e.to_string(), "ack payload of 5 bytes, expected 24");
        let mut a = Ack {
            acked_seq: 1,
            replayed_seq: 2,
            replay_ordinal: 0,
        }
        .to_bytes();
        assert!(Ack::from_bytes(&a).is_err());
        a[8] = 1;
        assert!(Ack::from_bytes(&a).is_ok());
        let mut h = [0u8; Hello::LEN];
        h[0] = 9;
        assert!(
            Hello::from_bytes(&h)
                .unwrap_err()
                .to_string()
                .contains("role")
        );
    }
}

//! The producer side of the log: the vCPU thread appends entries to the log
//! ring in place (claim, write, seal, commit) and gets their sequence numbers.

use ftvm_ring::log::{Claim, ClaimError, Consumer, Producer};
use ftvm_wire::{HEADER_LEN, Header, Kind, MAX_PAYLOAD_LEN, frame_len, seal};

/// Why an entry was not appended. `Full` is flow control, not a failure:
/// the caller lets the channel drain and tries again (the primary pauses).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The log ring has no room for the entry now.
    #[error("log ring full: entry needs {needed} bytes, {free} free")]
    Full {
        /// Bytes the entry needs.
        needed: usize,
        /// Bytes free now.
        free: usize,
    },
    /// The entry can never fit (payload over the wire maximum or half the ring).
    #[error("entry of {len} payload bytes exceeds the maximum {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Maximum payload length.
        max: usize,
    },
    /// Control kinds are written by the channel itself, never appended.
    #[error("kind {kind} is a control frame and cannot be appended to the log")]
    ControlKind {
        /// The refused kind.
        kind: Kind,
    },
}

/// Appends log entries with contiguous sequence numbers.
#[derive(Debug)]
pub struct Appender {
    producer: Producer,
    next_seq: u64,
}

/// An entry being written in place; [`EntryClaim::commit`] publishes it.
/// Dropping it abandons the entry (its sequence number is not used).
#[derive(Debug)]
pub struct EntryClaim<'a> {
    claim: Claim<'a>,
    header: Header,
    next_seq: &'a mut u64,
}

impl Appender {
    pub(crate) fn new(producer: Producer, first_seq: u64) -> Appender {
        Appender {
            producer,
            next_seq: first_seq,
        }
    }

    /// A log ring of `capacity` bytes with no backup yet: the appender (first
    /// seq 1) and the consumer a [`crate::Primary::establish_on`] ships from
    /// once a backup joins (until then, whoever holds it drains it).
    pub fn unshipped(capacity: usize) -> Result<(Appender, Consumer), crate::ChannelError> {
        let (producer, consumer) = ftvm_ring::log::with_capacity(capacity)?;
        Ok((Appender::new(producer, 1), consumer))
    }

    /// Sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Largest payload an entry may carry on this ring.
    pub fn max_payload_len(&self) -> usize {
        (self.producer.max_record_len() - HEADER_LEN).min(MAX_PAYLOAD_LEN)
    }

    /// Reserves an entry of `payload_len` bytes for in-place writing.
    pub fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        payload_len: usize,
    ) -> Result<EntryClaim<'_>, AppendError> {
        if kind.is_control() || kind == Kind::Invalid {
            return Err(AppendError::ControlKind { kind });
        }
        let max = self.max_payload_len();
        if payload_len > max {
            return Err(AppendError::TooLarge {
                len: payload_len,
                max,
            });
        }
        let header = Header::new(kind, self.next_seq, exit_ordinal, payload_len);
        let claim = match self.producer.claim(frame_len(payload_len)) {
            Ok(c) => c,
            Err(ClaimError::Full { needed, free }) => {
                return Err(AppendError::Full { needed, free });
            }
            Err(ClaimError::TooLarge { .. } | ClaimError::BadLength { .. }) => {
                return Err(AppendError::TooLarge {
                    len: payload_len,
                    max,
                });
            }
        };
        Ok(EntryClaim {
            claim,
            header,
            next_seq: &mut self.next_seq,
        })
    }

    /// Appends an entry with a copy of `payload`; returns its sequence number.
    pub fn append(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        payload: &[u8],
    ) -> Result<u64, AppendError> {
        let mut c = self.claim(kind, exit_ordinal, payload.len())?;
        c.payload().copy_from_slice(payload);
        Ok(c.commit())
    }
}

impl EntryClaim<'_> {
    /// The entry's payload bytes, to be written in full before `commit`.
    pub fn payload(&mut self) -> &mut [u8] {
        let len = self.header.payload_len as usize;
        &mut self.claim.buf()[HEADER_LEN..HEADER_LEN + len]
    }

    /// The sequence number this entry will carry.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// Publishes the entry with only the first `payload_len` bytes of the
    /// claimed payload (an entry claimed at its largest size, written
    /// shorter); returns its seq. A length over the claimed one is refused
    /// and the claim is abandoned.
    pub fn commit_len(mut self, payload_len: usize) -> Result<u64, AppendError> {
        let claimed = self.header.payload_len as usize;
        if payload_len > claimed || self.claim.truncate(frame_len(payload_len)).is_err() {
            return Err(AppendError::TooLarge {
                len: payload_len,
                max: claimed,
            });
        }
        self.header = Header::new(
            self.header.kind,
            self.header.seq,
            self.header.exit_ordinal,
            payload_len,
        );
        Ok(self.commit())
    }

    /// Seals the frame (header, pad, CRC) and publishes it; returns its seq.
    pub fn commit(mut self) -> u64 {
        // The claim is exactly frame_len(payload_len) bytes and the header was
        // validated in `Appender::claim`, so sealing cannot fail.
        let sealed = seal(self.claim.buf(), &self.header);
        debug_assert!(sealed.is_ok(), "{sealed:?}");
        self.claim.commit();
        *self.next_seq += 1;
        self.header.seq
    }
}

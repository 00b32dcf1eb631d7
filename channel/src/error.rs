//! The channel's error type: every variant names the values a user needs to
//! find the fault (sequence numbers, offsets, timeouts, fingerprints).

use ftvm_wire::{DecodeError, Kind, control::ControlError};

use crate::transport::TransportError;

/// Why a channel endpoint stopped. Errors are fatal for the connection.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The transport failed or the peer closed it.
    #[error("{what} (last seq sent {last_sent}, acked {last_acked}, received {last_received})")]
    Transport {
        /// What the channel was doing.
        what: &'static str,
        /// Highest entry seq sent (primary) or 0.
        last_sent: u64,
        /// Highest entry seq ACKed (primary: received ACK; backup: sent ACK).
        last_acked: u64,
        /// Highest entry seq received (backup) or 0.
        last_received: u64,
        /// The transport error.
        source: TransportError,
    },
    /// A frame failed validation; nothing from it on was delivered.
    #[error("corrupt frame at stream offset {offset}, expected seq {expected_seq}")]
    Corrupt {
        /// Byte offset of the frame in the connection's stream.
        offset: u64,
        /// The sequence number the receiver expected next.
        expected_seq: u64,
        /// Decoder's verdict (reason, header seq).
        source: DecodeError,
    },
    /// A log entry out of sequence (gap or repeat).
    #[error(
        "sequence error at stream offset {offset}: expected seq {expected}, found {found} ({kind})"
    )]
    Sequence {
        /// Byte offset of the frame.
        offset: u64,
        /// Expected sequence number.
        expected: u64,
        /// Found sequence number.
        found: u64,
        /// Kind of the offending frame.
        kind: Kind,
    },
    /// A control payload that does not parse.
    #[error("bad control frame at stream offset {offset}")]
    Control {
        /// Byte offset of the frame.
        offset: u64,
        /// Parser's verdict.
        source: ControlError,
    },
    /// The peer broke the protocol (a frame that has no business here).
    #[error("protocol violation by {peer}: {what}")]
    Protocol {
        /// Peer address.
        peer: String,
        /// What happened, with values.
        what: String,
    },
    /// The handshake failed: version, role, fingerprint or image mismatch, or no Hello in time.
    #[error("handshake with {peer} refused: {what}")]
    Handshake {
        /// Peer address.
        peer: String,
        /// What differs, naming both values.
        what: String,
    },
    /// No traffic from the peer for longer than `peer_timeout_ms`.
    #[error(
        "peer {peer} lost: silent for {silent_ms} ms (peer_timeout_ms {timeout_ms}); last seq sent {last_sent}, acked {last_acked}, received {last_received}"
    )]
    PeerTimeout {
        /// Peer address.
        peer: String,
        /// How long the peer has been silent.
        silent_ms: u64,
        /// The configured timeout.
        timeout_ms: u64,
        /// Highest entry seq sent.
        last_sent: u64,
        /// Highest entry seq ACKed.
        last_acked: u64,
        /// Highest entry seq received.
        last_received: u64,
    },
    /// The backup stopped replaying and said so (divergence, a stop
    /// request, an error): it will ACK nothing more.
    #[error("backup {peer} stopped replaying ({cause}) after seq {last_seq}; its reason: {reason}")]
    PeerStopped {
        /// Peer address.
        peer: String,
        /// Why, in a word.
        cause: &'static str,
        /// Highest seq it replayed.
        last_seq: u64,
        /// The backup's own message.
        reason: String,
    },
    /// The capture file could not be written.
    #[error("writing the capture file: {0}")]
    Capture(std::io::Error),
    /// The log ring could not be created.
    #[error("log ring")]
    Ring(#[from] ftvm_ring::RingError),
}

impl ChannelError {
    /// True for an orderly close by the peer (not a failure of either side).
    pub fn is_closed(&self) -> bool {
        matches!(
            self,
            ChannelError::Transport {
                source: TransportError::Closed,
                ..
            }
        )
    }
}

/// An error and its `source()` chain as one line (`outer: inner: ...`).
/// Errors here keep their cause in `source()` and never repeat it in their
/// own message, so each cause is said once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(err), |e| e.source());
    causes.map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

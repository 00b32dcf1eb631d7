//! Receive path shared by both ends: reassembles frames from the transport's
//! byte stream, validates each one (CRC, version, kind, length) and tracks the
//! stream offset so errors can name where the bad frame began.

use ftvm_wire::{Frame, MAX_FRAME_LEN, decode};

use crate::transport::{Transport, TransportError};

/// Bytes read from the transport per `recv` call at most.
const READ_CHUNK: usize = 256 << 10;

/// A reassembly buffer over one connection's incoming bytes.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// The last `fill` returned less than it asked for.
    drained: bool,
}

/// A frame that failed to decode, with its stream offset.
#[derive(Debug)]
pub(crate) struct BadFrame {
    pub offset: u64,
    pub error: ftvm_wire::DecodeError,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader {
            buf: vec![0; MAX_FRAME_LEN + READ_CHUNK],
            start: 0,
            end: 0,
            offset: 0,
            drained: false,
        }
    }

    /// Reads what the transport has (one `recv`); returns bytes read.
    pub fn fill(&mut self, t: &mut dyn Transport) -> Result<usize, TransportError> {
        if self.buf.len() - self.end < READ_CHUNK {
            // Keep room for a whole maximum frame plus a read chunk.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = (self.buf.len() - self.end).min(READ_CHUNK);
        let n = t.recv(&mut self.buf[self.end..self.end + want])?;
        self.end += n;
        self.drained = n < want;
        Ok(n)
    }

    /// True when the last `fill` got less than it asked for: the transport
    /// had nothing more at that moment, so another `recv` now would only
    /// return nothing (a wasted system call on tcp).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Length of the next frame if its length word has arrived and is plausible.
    pub fn peek_len(&self) -> Option<usize> {
        ftvm_wire::peek_frame_len(&self.buf[self.start..self.end])
            .ok()
            .flatten()
    }

    /// The error for a connection that ended with a partial frame buffered.
    pub fn truncated_at_close(&self) -> Option<BadFrame> {
        if self.start == self.end {
            return None;
        }
        match decode(&self.buf[self.start..self.end]) {
            Err(error) => Some(BadFrame {
                offset: self.offset,
                error: error.at_offset(self.offset),
            }),
            Ok(_) => None,
        }
    }

    /// Decodes the next complete frame, if any. `Ok(None)`: need more bytes.
    /// After an `Err` the reader must not be used again.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Frame<'_>)>, BadFrame> {
        let offset = self.offset;
        match decode(&self.buf[self.start..self.end]) {
            Ok((frame, len)) => {
                self.start += len;
                self.offset += len as u64;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some((offset, frame)))
            }
            Err(e) if e.is_truncated() => Ok(None),
            Err(error) => Err(BadFrame {
                offset,
                error: error.at_offset(offset),
            }),
        }
    }
}

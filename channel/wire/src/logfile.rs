//! The log file: what `--capture` / `--record-log` write and `ftvm log inspect`
//! reads. A 16-byte file header, then frames exactly as shipped.
//!
//! ```text
//! 0  8 bytes  magic  "FTVMLOG\0"
//! 8  u32      wire format version of the frames that follow
//! 12 u32      reserved, 0
//! 16 frames ...
//! ```

use crate::{DecodeError, Frame, VERSION, decode};

/// File magic.
pub const FILE_MAGIC: [u8; 8] = *b"FTVMLOG\0";
/// File header size.
pub const FILE_HEADER_LEN: usize = 16;

/// The file header for this build's format version.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&u32::from(VERSION).to_le_bytes());
    h
}

/// A log file that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogFileError {
    /// Shorter than the file header.
    #[error("log file is {len} bytes, shorter than its {need}-byte header")]
    TooShort {
        /// File length.
        len: usize,
        /// Header length.
        need: usize,
    },
    /// Not an ftvm log file.
    #[error("not an ftvm log file: magic {found:02x?} at offset 0")]
    BadMagic {
        /// First 8 bytes.
        found: [u8; 8],
    },
    /// Written by a format version this build cannot read.
    #[error("log file format version {found} at offset 8, this build reads version {supported}")]
    UnknownVersion {
        /// Version found.
        found: u32,
        /// Version supported.
        supported: u8,
    },
    /// A frame failed to decode (carries offset and seq).
    #[error("bad frame: {0}")]
    Frame(DecodeError),
    /// The file could not be read (streaming reader).
    #[error("reading at offset {offset}: {kind}: {message}")]
    Io {
        /// Offset of what was being read.
        offset: u64,
        /// The OS error's kind.
        kind: std::io::ErrorKind,
        /// The OS error.
        message: String,
    },
    /// Entry sequence numbers are not contiguous.
    #[error("sequence gap at offset {offset}: expected seq {expected}, found {found}")]
    SeqGap {
        /// Offset of the frame.
        offset: u64,
        /// Expected sequence number.
        expected: u64,
        /// Found sequence number.
        found: u64,
    },
}

/// Iterates the frames of a log file held in memory, checking each frame and
/// the continuity of entry sequence numbers. Stops after the first error.
#[derive(Debug)]
pub struct LogReader<'a> {
    data: &'a [u8],
    pos: usize,
    next_seq: Option<u64>,
    failed: bool,
}

impl<'a> LogReader<'a> {
    /// Checks the file header and positions at the first frame.
    pub fn new(data: &'a [u8]) -> Result<LogReader<'a>, LogFileError> {
        if data.len() < FILE_HEADER_LEN {
            return Err(LogFileError::TooShort {
                len: data.len(),
                need: FILE_HEADER_LEN,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&data[..8]);
        if magic != FILE_MAGIC {
            return Err(LogFileError::BadMagic { found: magic });
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if version != u32::from(VERSION) {
            return Err(LogFileError::UnknownVersion {
                found: version,
                supported: VERSION,
            });
        }
        Ok(LogReader {
            data,
            pos: FILE_HEADER_LEN,
            next_seq: None,
            failed: false,
        })
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }
}

impl<'a> Iterator for LogReader<'a> {
    /// Each frame with its byte offset in the file.
    type Item = Result<(u64, Frame<'a>), LogFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let offset = self.pos as u64;
        let item = admit(&mut self.next_seq, offset, decode(&self.data[self.pos..])).map(
            |(frame, len)| {
                self.pos += len;
                (offset, frame)
            },
        );
        self.failed = item.is_err();
        Some(item)
    }
}

/// What both readers check of the frame decoded at `offset`: it decoded,
/// and entry seqs are contiguous (`next_seq` is the one expected next).
fn admit<'a>(
    next_seq: &mut Option<u64>,
    offset: u64,
    decoded: Result<(Frame<'a>, usize), DecodeError>,
) -> Result<(Frame<'a>, usize), LogFileError> {
    let (frame, len) = decoded.map_err(|e| LogFileError::Frame(e.at_offset(offset)))?;
    if frame.header.kind.is_control() {
        return Ok((frame, len));
    }
    let seq = frame.header.seq;
    if let Some(expected) = *next_seq
        && seq != expected
    {
        return Err(LogFileError::SeqGap {
            offset,
            expected,
            found: seq,
        });
    }
    // Wrapping: after seq u64::MAX nothing is contiguous, and no entry has
    // seq 0 (`decode` refuses it), so any next entry is a gap. (`seq + 1`
    // panicked here: fuzz target log_file.)
    *next_seq = Some(seq.wrapping_add(1));
    Ok((frame, len))
}

/// Reads the frames of a log file from a byte stream (a file of any size,
/// a pipe) with at most one frame ([`crate::MAX_FRAME_LEN`]) in memory,
/// checking each frame and the continuity of entry sequence numbers like
/// [`LogReader`]. Stops after the first error.
#[derive(Debug)]
pub struct LogStream<R> {
    r: R,
    buf: Vec<u8>,
    offset: u64,
    next_seq: Option<u64>,
    failed: bool,
}

impl<R: std::io::Read> LogStream<R> {
    /// Reads and checks the file header.
    pub fn new(mut r: R) -> Result<LogStream<R>, LogFileError> {
        let mut head = Vec::with_capacity(FILE_HEADER_LEN);
        fill(&mut r, &mut head, FILE_HEADER_LEN, 0)?;
        // The header checks of the in-memory reader, on the first 16 bytes.
        LogReader::new(&head)?;
        Ok(LogStream {
            r,
            buf: Vec::new(),
            offset: FILE_HEADER_LEN as u64,
            next_seq: None,
            failed: false,
        })
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame with its offset; `None` at the end of the stream.
    pub fn next_frame(&mut self) -> Option<Result<(u64, Frame<'_>), LogFileError>> {
        if self.failed {
            return None;
        }
        let offset = self.offset;
        self.buf.clear();
        match self.read_frame(offset) {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let item = admit(&mut self.next_seq, offset, decode(&self.buf)).map(|(frame, len)| {
            self.offset += len as u64;
            (offset, frame)
        });
        self.failed = item.is_err();
        Some(item)
    }

    /// The frame the last [`LogStream::next_frame`] returned, read again
    /// from the stream's buffer without a second check (`None` before the
    /// first frame, at the end and after an error).
    pub fn current(&self) -> Option<Frame<'_>> {
        if self.failed {
            return None;
        }
        crate::raw::frame(&self.buf)
    }

    /// Reads one frame's bytes into `buf` (false: clean end of stream). A
    /// short frame is left short for `decode` to name.
    fn read_frame(&mut self, offset: u64) -> Result<bool, LogFileError> {
        if fill(&mut self.r, &mut self.buf, 4, offset)? == 0 {
            return Ok(false);
        }
        let len = match crate::peek_frame_len(&self.buf) {
            Ok(Some(len)) => len,
            // Too short for the length word: `decode` names the truncation.
            Ok(None) => return Ok(true),
            Err(e) => return Err(LogFileError::Frame(e.at_offset(offset))),
        };
        fill(&mut self.r, &mut self.buf, len, offset)?;
        Ok(true)
    }
}

/// Reads from `r` until `buf` holds `want` bytes or the stream ends;
/// returns the bytes read.
fn fill(
    r: &mut impl std::io::Read,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
) -> Result<usize, LogFileError> {
    let start = buf.len();
    let mut chunk = [0u8; 8192];
    while buf.len() < want {
        let n = (want - buf.len()).min(chunk.len());
        match r.read(&mut chunk[..n]) {
            Ok(0) => break,
            Ok(got) => buf.extend_from_slice(&chunk[..got]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(LogFileError::Io {
                    offset: offset + buf.len() as u64,
                    kind: e.kind(),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(buf.len() - start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Header, Kind, encode, frame_len};

    fn file(seqs: &[u64]) -> Vec<u8> {
        let mut v = file_header().to_vec();
        for &s in seqs {
            let mut b = vec![0u8; frame_len(3)];
            encode(
                &mut b,
                &Header::new(Kind::PortIn, s, s.wrapping_mul(2), 3),
                b"abc",
            )
            .unwrap();
            v.extend_from_slice(&b);
        }
        v
    }

    #[test]
    fn reads_back_every_frame_with_offsets() {
        let f = file(&[1, 2, 3]);
        let got: Vec<_> = LogReader::new(&f).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, 16);
        assert_eq!(got[1].0, 16 + 48);
        assert_eq!(got[2].1.header.exit_ordinal, 6);
    }

    #[test]
    fn truncation_and_gaps_are_named() {
        let f = file(&[1, 2, 3]);
        let cut = &f[..f.len() - 5];
        let errs: Vec<_> = LogReader::new(cut)
            .unwrap()
            .filter_map(|r| r.err())
            .collect();
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(msg.contains("offset 112") && msg.contains("seq 3"), "{msg}");

        let f = file(&[1, 3]);
        let e = LogReader::new(&f).unwrap().nth(1).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "sequence gap at offset 64: expected seq 2, found 3"
        );
        assert!(LogReader::new(b"FTVMLOG\0\x09\0\0\0\0\0\0\0").is_err());

        // Found by the log_file fuzz target: an entry with the largest seq panicked
        // (overflow) instead of making whatever follows a gap.
        let f = file(&[u64::MAX, 1]);
        let got: Vec<_> = LogReader::new(&f).unwrap().collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert_eq!(
            got[1].as_ref().unwrap_err().to_string(),
            "sequence gap at offset 64: expected seq 0, found 1"
        );
        assert!(LogReader::new(b"nope").is_err());
    }

    #[test]
    fn the_stream_reader_reads_what_the_memory_reader_reads() {
        let f = file(&[1, 2, 3]);
        let mut st = LogStream::new(&f[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(item) = st.next_frame() {
            let (off, fr) = item.unwrap();
            seen.push((off, fr.header.seq));
        }
        assert_eq!(seen, vec![(16, 1), (64, 2), (112, 3)]);
        // Cut, gap and a bad header: the same errors as in memory.
        let cut = &f[..f.len() - 5];
        let mut st = LogStream::new(cut).unwrap();
        let errs: Vec<_> = std::iter::from_fn(|| st.next_frame().map(|r| r.err()))
            .flatten()
            .collect();
        let mem: Vec<_> = LogReader::new(cut)
            .unwrap()
            .filter_map(|r| r.err())
            .collect();
        assert_eq!(errs, mem);
        let f = file(&[1, 3]);
        let mut st = LogStream::new(&f[..]).unwrap();
        st.next_frame().unwrap().unwrap();
        assert_eq!(
            st.next_frame().unwrap().unwrap_err().to_string(),
            "sequence gap at offset 64: expected seq 2, found 3"
        );
        assert!(LogStream::new(&b"FTVMLOG\0\x09\0\0\0\0\0\0\0"[..]).is_err());
        // An endless stream of zeros: refused at the first frame, not read on.
        use std::io::Read as _;
        let mut zeros = std::io::repeat(0).take(1 << 30);
        let mut head = file_header().to_vec();
        head.extend(std::iter::repeat_n(0u8, 64));
        let mut st = LogStream::new(std::io::Read::chain(&head[..], &mut zeros)).unwrap();
        let e = st.next_frame().unwrap().unwrap_err().to_string();
        assert!(
            e.contains("bad frame length 0") && e.contains("offset 16"),
            "{e}"
        );
        assert!(st.next_frame().is_none());
    }
}

//! Where log entries go (record) and come from (replay).
//!
//! [`LogSink`] and [`LogSource`] are the seam between the VMM and the logging
//! channel: the VMM assigns sequence numbers (contiguous from 1) and exit
//! ordinals; a sink stores or ships frames; a source hands them back in order.
//! This module implements both over a log file (`ftvm_wire::logfile` format:
//! the 16-byte file header, then frames); crate `ftvm-ft` implements them
//! over the logging channel.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ftvm_wire::logfile::{LogFileError, LogReader, file_header};
use ftvm_wire::{EncodeError, HEADER_LEN, Header, Kind, frame_len, seal};

/// One log entry, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The frame header (kind, seq, exit ordinal, payload length).
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Appending an entry failed.
#[derive(Debug, thiserror::Error)]
pub enum LogSinkError {
    /// Writing the log file failed.
    #[error("writing log {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The entry could not be encoded (e.g. payload too large).
    #[error("encoding log entry seq {seq}")]
    Encode {
        /// Sequence number of the entry.
        seq: u64,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// A writer filled more payload bytes than it claimed.
    #[error("entry seq {seq} ({kind}) was written {written} bytes long, {claimed} were claimed")]
    Overlong {
        /// Sequence number of the entry.
        seq: u64,
        /// Its kind.
        kind: Kind,
        /// Bytes claimed.
        claimed: usize,
        /// Bytes the writer said it wrote.
        written: usize,
    },
    /// The channel behind the sink is gone (for channel-backed sinks).
    #[error("log channel closed: {0}")]
    Closed(String),
}

/// Reading the next entry failed.
#[derive(Debug, thiserror::Error)]
pub enum LogSourceError {
    /// Reading the log file failed.
    #[error("reading log {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The log is corrupt or truncated (names offset and seq).
    #[error("log {path}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong, with the offset.
        #[source]
        source: LogFileError,
    },
    /// The channel behind the source failed (for channel-backed sources).
    #[error("log channel: {0}")]
    Channel(String),
}

/// Record side: receives every log entry in order, and owns its sequence
/// numbers (contiguous from 1).
///
/// The VMM calls [`LogSink::claim`] on the vCPU thread at an exit: the sink
/// reserves room for the entry where it will keep it (the channel's log
/// ring, a file buffer), the device writes the input straight into it, and
/// the sink seals and commits it. The sink must keep entries in order and
/// may buffer. `flush` is called when the VM stops.
pub trait LogSink: Send {
    /// Claim, write in place, commit: reserves an entry of `kind` at
    /// `exit_ordinal` with room for `max_len` payload bytes and hands them to
    /// `write`, which fills the first `n` and returns `Some(n)` to commit
    /// them, or `None` to abandon the entry (nothing is logged and no seq is
    /// used). Returns the committed entry's seq. `write` runs exactly once
    /// unless the reservation itself fails.
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError>;
    /// The seq the next committed entry gets.
    fn next_seq(&self) -> u64;
    /// Largest payload a claim may ask for (the wire's maximum unless the
    /// sink keeps entries in something smaller, like a log ring).
    fn max_payload_len(&self) -> usize {
        ftvm_wire::MAX_PAYLOAD_LEN
    }
    /// Pushes out anything buffered.
    fn flush(&mut self) -> Result<(), LogSinkError>;
    /// Work the VM must drive from the vCPU thread for this sink (a channel
    /// run inline), polled at every exit and WAIT pass. Default: none.
    fn events(&mut self) -> Option<&mut dyn crate::event::EventSource> {
        None
    }
    /// Appends an entry holding a copy of `payload`; returns its seq.
    fn append(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        payload: &[u8],
    ) -> Result<u64, LogSinkError> {
        let seq = self.claim(kind, exit_ordinal, payload.len(), &mut |buf| {
            buf[..payload.len()].copy_from_slice(payload);
            Some(payload.len())
        })?;
        Ok(seq.unwrap_or_default())
    }
}

/// The claim of `max_len` bytes of `kind` was written `written` bytes long.
fn overlong(seq: u64, kind: Kind, max_len: usize, written: usize) -> LogSinkError {
    LogSinkError::Overlong {
        seq,
        kind,
        claimed: max_len,
        written,
    }
}

/// A buffer-backed claim for the file and memory sinks: lets `write` fill
/// up to `header.payload_len` payload bytes of `scratch` (grown to the
/// largest claim, never zeroed again: no allocation or memset per entry)
/// and seals the frame; returns its bytes, `None` when nothing is committed.
fn claim_in_scratch<'s>(
    scratch: &'s mut Vec<u8>,
    header: Header,
    write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
) -> Result<Option<&'s [u8]>, LogSinkError> {
    let (seq, kind, max_len) = (header.seq, header.kind, header.payload_len as usize);
    let room = frame_len(max_len);
    if scratch.len() < room {
        scratch.resize(room, 0);
    }
    let Some(n) = write(&mut scratch[HEADER_LEN..HEADER_LEN + max_len]) else {
        return Ok(None);
    };
    if n > max_len {
        return Err(overlong(seq, kind, max_len, n));
    }
    let header = Header::new(kind, seq, header.exit_ordinal, n);
    let frame = &mut scratch[..frame_len(n)];
    seal(frame, &header).map_err(|source| LogSinkError::Encode { seq, source })?;
    Ok(Some(frame))
}

/// One log entry, lent by a [`LogSource`] out of its receive buffer, replay
/// ring or file buffer until [`LogSource::consume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The frame header (kind, seq, exit ordinal, payload length).
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
}

impl EntryRef<'_> {
    /// An owned copy.
    pub fn to_entry(&self) -> LogEntry {
        LogEntry {
            header: self.header,
            payload: self.payload.to_vec(),
        }
    }
}

impl LogEntry {
    /// The entry, borrowed.
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            header: self.header,
            payload: &self.payload,
        }
    }
}

impl<'a> From<ftvm_wire::Frame<'a>> for EntryRef<'a> {
    fn from(f: ftvm_wire::Frame<'a>) -> EntryRef<'a> {
        EntryRef {
            header: f.header,
            payload: f.payload,
        }
    }
}

/// What a [`LogSource`] has next.
#[derive(Debug)]
pub enum SourcePoll {
    /// An entry is ready: [`LogSource::peek`] lends it (control frames are
    /// not returned).
    Ready,
    /// Nothing yet; more may come (the replayer polls again).
    Pending,
    /// The log has ended; nothing more will come.
    End,
    /// The primary is lost (its channel broke, went silent or sent a corrupt
    /// frame): every entry received before was returned, nothing more will
    /// come. A VM with a failover plan goes live here (`crate::failover`).
    Lost {
        /// What happened, with the values (seqs, offset, timeout).
        reason: String,
    },
}

/// Replay side: yields the primary's entries in order, lent, never copied
/// out.
///
/// The replayer calls `poll` until it says [`SourcePoll::Ready`] (`poll`
/// may block for a while or return [`SourcePoll::Pending`]; it is called
/// again after a spin hint), reads the entry with `peek` — the same entry
/// on every call — and calls `consume` once it has applied it. A source
/// never lends a corrupt entry: `poll` returns an error naming the offset or
/// sequence number instead. Frames checked on receipt are read back with
/// the wire's `raw` accessors, not checked twice.
pub trait LogSource: Send {
    /// Readies the next entry (`Ready` at once while one is ready).
    fn poll(&mut self) -> Result<SourcePoll, LogSourceError>;
    /// The ready entry (`None` unless the last `poll` said `Ready`).
    fn peek(&mut self) -> Option<EntryRef<'_>>;
    /// The replayer applied the ready entry: the next `poll` readies the
    /// one after it.
    fn consume(&mut self);
}

/// A [`LogSink`] writing a log file.
#[derive(Debug)]
pub struct LogFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    bytes: u64,
    next_seq: u64,
}

impl LogFileWriter {
    /// Creates (truncates) `path` and writes the file header.
    pub fn create(path: &Path) -> Result<LogFileWriter, LogSinkError> {
        let io = |source| LogSinkError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&file_header()).map_err(io)?;
        Ok(LogFileWriter {
            path: path.to_path_buf(),
            out,
            buf: Vec::new(),
            bytes: file_header().len() as u64,
            next_seq: 1,
        })
    }

    /// Bytes written so far (header included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl LogSink for LogFileWriter {
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        let seq = self.next_seq;
        let header = Header::new(kind, seq, exit_ordinal, max_len);
        let Some(frame) = claim_in_scratch(&mut self.buf, header, write)? else {
            return Ok(None);
        };
        self.out
            .write_all(frame)
            .map_err(|source| LogSinkError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += frame.len() as u64;
        self.next_seq += 1;
        Ok(Some(seq))
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        self.out.flush().map_err(|source| LogSinkError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A [`LogSink`] keeping frames in memory (tests, benchmarks).
#[derive(Debug)]
pub struct MemoryLog {
    /// File header followed by frames: the bytes of a log file.
    pub bytes: Vec<u8>,
    scratch: Vec<u8>,
    next_seq: u64,
}

impl Default for MemoryLog {
    fn default() -> MemoryLog {
        MemoryLog::new()
    }
}

impl MemoryLog {
    /// An empty log holding the file header.
    pub fn new() -> MemoryLog {
        MemoryLog::with_capacity(0)
    }

    /// An empty log with room for `bytes` of frames before it grows.
    pub fn with_capacity(bytes: usize) -> MemoryLog {
        let mut log = Vec::with_capacity(file_header().len() + bytes);
        log.extend_from_slice(&file_header());
        MemoryLog {
            bytes: log,
            scratch: Vec::new(),
            next_seq: 1,
        }
    }
}

impl LogSink for MemoryLog {
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        let seq = self.next_seq;
        let header = Header::new(kind, seq, exit_ordinal, max_len);
        let Some(frame) = claim_in_scratch(&mut self.scratch, header, write)? else {
            return Ok(None);
        };
        self.bytes.extend_from_slice(frame);
        self.next_seq += 1;
        Ok(Some(seq))
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        Ok(())
    }
}

/// A [`MemoryLog`] shared with whoever reads it while (or after) a VM
/// writes it (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct SharedLog(pub std::sync::Arc<std::sync::Mutex<MemoryLog>>);

impl SharedLog {
    /// The log's bytes so far (a log file).
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLog> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LogSink for SharedLog {
    fn claim(
        &mut self,
        kind: Kind,
        exit_ordinal: u64,
        max_len: usize,
        write: &mut dyn FnMut(&mut [u8]) -> Option<usize>,
    ) -> Result<Option<u64>, LogSinkError> {
        self.lock().claim(kind, exit_ordinal, max_len, write)
    }

    fn next_seq(&self) -> u64 {
        self.lock().next_seq()
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        Ok(())
    }
}

/// A [`LogSource`] over a log file: streamed from disk ([`LogFileReader::open`],
/// one frame in memory at a time) or parsed from bytes
/// ([`LogFileReader::from_bytes`]). Entries before the first corrupt frame
/// are replayed; the corruption is then reported with its offset.
pub struct LogFileReader {
    path: PathBuf,
    frames: Frames,
    /// `peek` has an entry (the last `poll` said `Ready`).
    ready: bool,
}

enum Frames {
    Memory {
        /// The file's bytes.
        data: Vec<u8>,
        /// Where each checked entry frame starts, in order.
        starts: std::collections::VecDeque<usize>,
        error: Option<LogFileError>,
    },
    Stream(Box<ftvm_wire::logfile::LogStream<std::io::BufReader<std::fs::File>>>),
}

impl std::fmt::Debug for LogFileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFileReader")
            .field("path", &self.path)
            .field("streamed", &matches!(self.frames, Frames::Stream(_)))
            .finish()
    }
}

impl LogFileReader {
    /// Opens the file and checks its header; frames are read as replay
    /// needs them.
    pub fn open(path: &Path) -> Result<LogFileReader, LogSourceError> {
        let file = std::fs::File::open(path).map_err(|source| LogSourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stream =
            ftvm_wire::logfile::LogStream::new(std::io::BufReader::with_capacity(1 << 16, file))
                .map_err(|source| LogSourceError::Corrupt {
                    path: path.to_path_buf(),
                    source,
                })?;
        Ok(LogFileReader {
            path: path.to_path_buf(),
            frames: Frames::Stream(Box::new(stream)),
            ready: false,
        })
    }

    /// Checks log-file bytes (`path` is only used in messages); the entries
    /// are lent out of one copy of them.
    pub fn from_bytes(path: &Path, data: &[u8]) -> Result<LogFileReader, LogSourceError> {
        let reader = LogReader::new(data).map_err(|source| LogSourceError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        let mut starts = std::collections::VecDeque::new();
        let mut error = None;
        for item in reader {
            match item {
                Ok((_, frame)) if frame.header.kind.is_control() => {}
                // Cannot truncate: offsets of an in-memory slice.
                Ok((offset, _)) => starts.push_back(offset as usize),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        Ok(LogFileReader {
            path: path.to_path_buf(),
            frames: Frames::Memory {
                data: data.to_vec(),
                starts,
                error,
            },
            ready: false,
        })
    }

    /// Entries not yet consumed (parsed from bytes; `None` when streamed).
    pub fn remaining(&self) -> Option<usize> {
        match &self.frames {
            Frames::Memory { starts, .. } => Some(starts.len()),
            Frames::Stream(_) => None,
        }
    }
}

impl LogSource for LogFileReader {
    fn poll(&mut self) -> Result<SourcePoll, LogSourceError> {
        if self.ready {
            return Ok(SourcePoll::Ready);
        }
        let corrupt = |path: &Path, source| LogSourceError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        match &mut self.frames {
            Frames::Memory { starts, error, .. } => {
                if !starts.is_empty() {
                    self.ready = true;
                    return Ok(SourcePoll::Ready);
                }
                match error.take() {
                    Some(source) => Err(corrupt(&self.path, source)),
                    None => Ok(SourcePoll::End),
                }
            }
            Frames::Stream(stream) => loop {
                match stream.next_frame() {
                    None => return Ok(SourcePoll::End),
                    Some(Err(source)) => return Err(corrupt(&self.path, source)),
                    Some(Ok((_, frame))) if frame.header.kind.is_control() => {}
                    Some(Ok(_)) => {
                        self.ready = true;
                        return Ok(SourcePoll::Ready);
                    }
                }
            },
        }
    }

    fn peek(&mut self) -> Option<EntryRef<'_>> {
        if !self.ready {
            return None;
        }
        // Both frames were checked when `poll` readied them: read raw.
        let frame = match &self.frames {
            Frames::Memory { data, starts, .. } => ftvm_wire::raw::frame(&data[*starts.front()?..]),
            Frames::Stream(stream) => stream.current(),
        };
        frame.map(EntryRef::from)
    }

    fn consume(&mut self) {
        if std::mem::take(&mut self.ready)
            && let Frames::Memory { starts, .. } = &mut self.frames
        {
            starts.pop_front();
        }
    }
}

/// Kinds a VMM log may contain (everything else is rejected by the replayer).
pub fn is_vmm_kind(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Checkpoint
            | Kind::PortIn
            | Kind::MmioRead
            | Kind::PacketRx
            | Kind::DiskRead
            | Kind::Clock
            | Kind::Random
            | Kind::Interrupt
            | Kind::NetTx
            | Kind::DiskWrite
            | Kind::Console
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MemoryLog {
        let mut log = MemoryLog::new();
        for seq in 1..=3u64 {
            assert_eq!(
                log.append(Kind::Clock, seq * 10, &[seq as u8; 12]).unwrap(),
                seq
            );
        }
        log
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut w = LogFileWriter::create(&path).unwrap();
        assert_eq!(w.append(Kind::Random, 4, b"abc").unwrap(), 1);
        // A claim written shorter than claimed, and one abandoned.
        let seq = w
            .claim(Kind::Random, 5, 64, &mut |buf| {
                buf[..2].copy_from_slice(b"de");
                Some(2)
            })
            .unwrap();
        assert_eq!(seq, Some(2));
        assert_eq!(w.claim(Kind::Random, 6, 8, &mut |_| None).unwrap(), None);
        assert_eq!(w.next_seq(), 3);
        w.flush().unwrap();
        let mut r = LogFileReader::open(&path).unwrap();
        for (ordinal, payload) in [(4, &b"abc"[..]), (5, b"de")] {
            assert!(matches!(r.poll().unwrap(), SourcePoll::Ready));
            // Lent again, unchanged, until consumed.
            assert!(matches!(r.poll().unwrap(), SourcePoll::Ready));
            let e = r.peek().unwrap();
            assert_eq!((e.header.exit_ordinal, e.payload), (ordinal, payload));
            r.consume();
        }
        assert!(matches!(r.poll().unwrap(), SourcePoll::End));
        assert!(r.peek().is_none());
    }

    #[test]
    fn truncation_is_reported_after_the_good_prefix() {
        let log = sample();
        let cut = &log.bytes[..log.bytes.len() - 3];
        let mut r = LogFileReader::from_bytes(Path::new("t.log"), cut).unwrap();
        assert_eq!(r.remaining(), Some(2));
        for seq in 1..=2 {
            assert!(matches!(r.poll().unwrap(), SourcePoll::Ready));
            assert_eq!(r.peek().unwrap().header.seq, seq);
            r.consume();
        }
        let e = crate::error_chain(&r.poll().unwrap_err());
        assert!(e.contains("t.log") && e.contains("offset 128"), "{e}");
    }

    #[test]
    fn bad_header_is_reported() {
        let e = LogFileReader::from_bytes(Path::new("x"), b"not a log file at all").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.starts_with("log x: not an ftvm log file"), "{e}");
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[test]
    fn an_overlong_claim_is_refused_and_nothing_is_logged() {
        let mut log = MemoryLog::new();
        let e = log
            .claim(Kind::Clock, 3, 8, &mut |_| Some(9))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "entry seq 1 (clock) was written 9 bytes long, 8 were claimed"
        );
        assert_eq!(log.bytes, file_header());
        assert_eq!(log.append(Kind::Clock, 3, &[1; 8]).unwrap(), 1);
    }
}

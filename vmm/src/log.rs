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
use ftvm_wire::{EncodeError, Header, Kind, encode, frame_len};

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

/// Record side: receives every log entry in order.
///
/// The VMM calls `append` on the vCPU thread at an exit, with `header.seq`
/// contiguous from 1; the sink must keep entries in order and may buffer.
/// `flush` is called when the VM stops.
pub trait LogSink: Send {
    /// Appends one entry.
    fn append(&mut self, header: &Header, payload: &[u8]) -> Result<(), LogSinkError>;
    /// Pushes out anything buffered.
    fn flush(&mut self) -> Result<(), LogSinkError>;
    /// Work the VM must drive from the vCPU thread for this sink (a channel
    /// run inline), polled at every exit and WAIT pass. Default: none.
    fn events(&mut self) -> Option<&mut dyn crate::event::EventSource> {
        None
    }
}

/// What a [`LogSource`] has next.
#[derive(Debug)]
pub enum SourcePoll {
    /// The next entry (control frames are not returned).
    Entry(LogEntry),
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

/// Replay side: yields the primary's entries in order.
///
/// `poll_entry` may block for a while or return [`SourcePoll::Pending`]; the
/// replayer calls it again after a spin hint. A source never returns a corrupt
/// entry: it returns an error naming the offset or sequence number instead.
pub trait LogSource: Send {
    /// The next entry, `Pending`, or `End`.
    fn poll_entry(&mut self) -> Result<SourcePoll, LogSourceError>;
}

/// A [`LogSink`] writing a log file.
#[derive(Debug)]
pub struct LogFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    bytes: u64,
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
        })
    }

    /// Bytes written so far (header included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl LogSink for LogFileWriter {
    fn append(&mut self, header: &Header, payload: &[u8]) -> Result<(), LogSinkError> {
        let len = frame_len(payload.len());
        self.buf.clear();
        self.buf.resize(len, 0);
        encode(&mut self.buf, header, payload).map_err(|source| LogSinkError::Encode {
            seq: header.seq,
            source,
        })?;
        self.out
            .write_all(&self.buf)
            .map_err(|source| LogSinkError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.bytes += len as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogSinkError> {
        self.out.flush().map_err(|source| LogSinkError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A [`LogSink`] keeping frames in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct MemoryLog {
    /// File header followed by frames: the bytes of a log file.
    pub bytes: Vec<u8>,
}

impl MemoryLog {
    /// An empty log holding the file header.
    pub fn new() -> MemoryLog {
        MemoryLog {
            bytes: file_header().to_vec(),
        }
    }
}

impl LogSink for MemoryLog {
    fn append(&mut self, header: &Header, payload: &[u8]) -> Result<(), LogSinkError> {
        let start = self.bytes.len();
        self.bytes.resize(start + frame_len(payload.len()), 0);
        encode(&mut self.bytes[start..], header, payload).map_err(|source| {
            self.bytes.truncate(start);
            LogSinkError::Encode {
                seq: header.seq,
                source,
            }
        })?;
        Ok(())
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
}

enum Frames {
    Memory {
        entries: std::vec::IntoIter<LogEntry>,
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
        })
    }

    /// Parses log-file bytes (`path` is only used in messages).
    pub fn from_bytes(path: &Path, data: &[u8]) -> Result<LogFileReader, LogSourceError> {
        let reader = LogReader::new(data).map_err(|source| LogSourceError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        let mut entries = Vec::new();
        let mut error = None;
        for item in reader {
            match item {
                Ok((_, frame)) if frame.header.kind.is_control() => {}
                Ok((_, frame)) => entries.push(LogEntry {
                    header: frame.header,
                    payload: frame.payload.to_vec(),
                }),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        Ok(LogFileReader {
            path: path.to_path_buf(),
            frames: Frames::Memory {
                entries: entries.into_iter(),
                error,
            },
        })
    }

    /// Entries not yet returned (parsed from bytes; `None` when streamed).
    pub fn remaining(&self) -> Option<usize> {
        match &self.frames {
            Frames::Memory { entries, .. } => Some(entries.len()),
            Frames::Stream(_) => None,
        }
    }
}

impl LogSource for LogFileReader {
    fn poll_entry(&mut self) -> Result<SourcePoll, LogSourceError> {
        let corrupt = |path: &Path, source| LogSourceError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        match &mut self.frames {
            Frames::Memory { entries, error } => {
                if let Some(e) = entries.next() {
                    return Ok(SourcePoll::Entry(e));
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
                    Some(Ok((_, frame))) => {
                        return Ok(SourcePoll::Entry(LogEntry {
                            header: frame.header,
                            payload: frame.payload.to_vec(),
                        }));
                    }
                }
            },
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
            log.append(
                &Header::new(Kind::Clock, seq, seq * 10, 12),
                &[seq as u8; 12],
            )
            .unwrap();
        }
        log
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut w = LogFileWriter::create(&path).unwrap();
        w.append(&Header::new(Kind::Random, 1, 4, 3), b"abc")
            .unwrap();
        w.flush().unwrap();
        let mut r = LogFileReader::open(&path).unwrap();
        match r.poll_entry().unwrap() {
            SourcePoll::Entry(e) => {
                assert_eq!(e.header.exit_ordinal, 4);
                assert_eq!(e.payload, b"abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(r.poll_entry().unwrap(), SourcePoll::End));
    }

    #[test]
    fn truncation_is_reported_after_the_good_prefix() {
        let log = sample();
        let cut = &log.bytes[..log.bytes.len() - 3];
        let mut r = LogFileReader::from_bytes(Path::new("t.log"), cut).unwrap();
        assert_eq!(r.remaining(), Some(2));
        r.poll_entry().unwrap();
        r.poll_entry().unwrap();
        let e = crate::error_chain(&r.poll_entry().unwrap_err());
        assert!(e.contains("t.log") && e.contains("offset 128"), "{e}");
    }

    #[test]
    fn bad_header_is_reported() {
        let e = LogFileReader::from_bytes(Path::new("x"), b"not a log file at all").unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.starts_with("log x: not an ftvm log file"), "{e}");
    }
}

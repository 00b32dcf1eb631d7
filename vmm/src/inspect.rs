//! `ftvm log inspect`: a log file (a `--capture` of the channel or a
//! `--record-log` of the VMM) decoded as a stream, one entry per line (or
//! JSON Lines), then a summary per kind. Stops at the first bad frame with
//! an error naming offset, the seq its (unverified) header claims and the
//! reason, and says when a VMM log ends without its final checkpoint (a
//! recording that did not stop in order).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ftvm_wire::logfile::{LogFileError, LogStream};
use ftvm_wire::{Frame, Kind};

/// How to print.
#[derive(Clone, Copy, Debug, Default)]
pub struct InspectFormat {
    /// One JSON object per entry (JSON Lines), then a summary object.
    pub json: bool,
    /// Only the summary.
    pub summary: bool,
}

/// The file could not be inspected to its end.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Opening it failed.
    #[error("opening log file {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Its header is not an ftvm log file's.
    #[error("log file {}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: LogFileError,
    },
    /// A frame is bad (after `entries` good ones).
    #[error("log file {} is bad after {entries} good entries", path.display())]
    Frame {
        /// The file.
        path: PathBuf,
        /// Good entries before it.
        entries: u64,
        /// What is wrong, with offset and seq.
        source: LogFileError,
    },
}

fn describe(frame: &Frame<'_>) -> String {
    match frame.header.kind {
        Kind::Opaque | Kind::OpaqueOutput => format!("{} opaque bytes", frame.payload.len()),
        k => crate::describe_entry(k, frame.payload),
    }
}

/// Prints the log file at `path` to `out` in `format`. A closed `out`
/// (`| head`) ends the listing quietly.
pub fn inspect(
    path: &Path,
    format: InspectFormat,
    out: &mut impl Write,
) -> Result<(), InspectError> {
    let file = std::fs::File::open(path).map_err(|source| InspectError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader =
        LogStream::new(std::io::BufReader::with_capacity(1 << 16, file)).map_err(|source| {
            InspectError::Header {
                path: path.to_path_buf(),
                source,
            }
        })?;
    let mut per_kind: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let (mut entries, mut outputs, mut first, mut last) = (0u64, 0u64, None, 0u64);
    let mut failure = None;
    // The last checkpoint seen: is it the final one?
    let (mut vmm_log, mut ended_final) = (false, false);
    while let Some(item) = reader.next_frame() {
        let (offset, frame) = match item {
            Ok(x) => x,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let h = frame.header;
        entries += 1;
        vmm_log |= crate::log::is_vmm_kind(h.kind);
        if h.kind == Kind::Checkpoint {
            ended_final =
                crate::CheckpointRecord::from_bytes(frame.payload).is_some_and(|c| c.is_final);
        } else if !h.kind.is_control() {
            ended_final = false;
        }
        outputs += u64::from(h.kind.is_output());
        first.get_or_insert(h.seq);
        last = h.seq;
        let slot = per_kind.entry(h.kind.name()).or_default();
        slot.0 += 1;
        slot.1 += frame.bytes.len() as u64;
        if format.summary {
            continue;
        }
        let line = if format.json {
            serde_json::json!({
                "offset": offset,
                "seq": h.seq,
                "kind": h.kind.name(),
                "output": h.kind.is_output(),
                "exit_ordinal": h.exit_ordinal,
                "payload_len": h.payload_len,
                "frame_len": frame.bytes.len(),
                "detail": describe(&frame),
            })
            .to_string()
        } else {
            format!(
                "{offset:>10}  seq {:>8}  exit {:>10}  {:<13} {:>6} B{}  {}",
                h.seq,
                h.exit_ordinal,
                h.kind.name(),
                h.payload_len,
                if h.kind.is_output() { "  OUTPUT" } else { "" },
                describe(&frame)
            )
        };
        if writeln!(out, "{line}").is_err() {
            // A closed pipe (`| head`) ends the listing quietly.
            return Ok(());
        }
    }
    let bytes = reader.offset();
    // A VMM log without its final checkpoint: the primary did not stop in
    // order (killed, lost its backup and its generation, or still running).
    let unfinished = failure.is_none() && vmm_log && !ended_final;
    if format.json {
        let kinds: serde_json::Map<String, serde_json::Value> = per_kind
            .iter()
            .map(|(k, (n, b))| (k.to_string(), serde_json::json!({"entries": n, "bytes": b})))
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"summary": {"file_bytes": bytes, "entries": entries, "outputs": outputs,
                "first_seq": first, "last_seq": last, "kinds": kinds, "complete": failure.is_none(),
                "final_checkpoint": ended_final}})
        );
    } else {
        let _ = writeln!(
            out,
            "{}: {bytes} bytes, {entries} entries ({outputs} outputs), seq {}..={last}",
            path.display(),
            first.unwrap_or(0)
        );
        for (k, (n, b)) in &per_kind {
            let _ = writeln!(out, "  {k:<13} {n:>10} entries {b:>12} bytes");
        }
        if unfinished {
            let _ = writeln!(
                out,
                "  ends without the final checkpoint after seq {last}: the recording did not stop in order (killed, or still running); a replay stops there with LogEnded"
            );
        }
    }
    let _ = out.flush();
    match failure {
        Some(source) => Err(InspectError::Frame {
            path: path.to_path_buf(),
            entries,
            source,
        }),
        None => Ok(()),
    }
}

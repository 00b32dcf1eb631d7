//! `ftvm log inspect FILE [--json]`: decodes a log file (a `--capture` of
//! the channel or a `--record-log` of the VMM) as a stream, one entry per
//! line; stops at the first bad frame with an error naming offset, the seq
//! its (unverified) header claims and reason, and says when a VMM log ends
//! without its final checkpoint (a primary that did not stop in order).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use ftvm_tuning::Settings;
use ftvm_wire::logfile::LogStream;
use ftvm_wire::{Frame, Kind};

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Decode a log file and print every entry.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The log file.
    pub file: PathBuf,
    /// One JSON object per entry (JSON Lines), then a summary object.
    #[arg(long)]
    pub json: bool,
    /// Print only the summary.
    #[arg(long)]
    pub summary: bool,
}

pub fn run(cmd: LogCommand, _settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Inspect(a) => inspect(&a),
    }
}

fn describe(frame: &Frame<'_>) -> String {
    match frame.header.kind {
        Kind::Opaque | Kind::OpaqueOutput => format!("{} opaque bytes", frame.payload.len()),
        k => ftvm_vmm::describe_entry(k, frame.payload),
    }
}

fn inspect(a: &InspectArgs) -> anyhow::Result<()> {
    let file = std::fs::File::open(&a.file)
        .with_context(|| format!("opening log file {}", a.file.display()))?;
    let mut reader = LogStream::new(std::io::BufReader::with_capacity(1 << 16, file))
        .with_context(|| format!("log file {}", a.file.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
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
        vmm_log |= ftvm_vmm::log::is_vmm_kind(h.kind);
        if h.kind == Kind::Checkpoint {
            ended_final =
                ftvm_vmm::CheckpointRecord::from_bytes(frame.payload).is_some_and(|c| c.is_final);
        } else if !h.kind.is_control() {
            ended_final = false;
        }
        outputs += u64::from(h.kind.is_output());
        first.get_or_insert(h.seq);
        last = h.seq;
        let slot = per_kind.entry(h.kind.name()).or_default();
        slot.0 += 1;
        slot.1 += frame.bytes.len() as u64;
        if a.summary {
            continue;
        }
        let line = if a.json {
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
    if a.json {
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
            a.file.display(),
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
        Some(e) => Err(anyhow::Error::from(e).context(format!(
            "log file {} is bad after {entries} good entries",
            a.file.display()
        ))),
        None => Ok(()),
    }
}

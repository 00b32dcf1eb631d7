//! `ftvm log inspect FILE [--json]`: decodes a log file (a `--capture` of
//! the channel or a `--record-log` of the VMM) as a stream, one entry per
//! line; stops at the first bad frame with an error naming offset, the seq
//! its (unverified) header claims and reason, and says when a VMM log ends
//! without its final checkpoint (a primary that did not stop in order).

use std::path::PathBuf;

use ftvm_tuning::Settings;

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
        LogCommand::Inspect(a) => {
            let format = ftvm_vmm::inspect::InspectFormat {
                json: a.json,
                summary: a.summary,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            ftvm_vmm::inspect::inspect(&a.file, format, &mut out)?;
            Ok(())
        }
    }
}

//! `ftvm log inspect`.
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Decode a log file (in progress).
    Inspect,
}

pub fn run(cmd: LogCommand, _settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        LogCommand::Inspect => anyhow::bail!("ftvm log inspect is not built yet"),
    }
}

//! `ftvm primary`, `ftvm replay` (owned by the VMM work).
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum VmmCommand {
    /// Run a guest in record mode (in progress).
    Primary,
}

pub fn run(cmd: VmmCommand, _settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        VmmCommand::Primary => anyhow::bail!("ftvm primary is not built yet"),
    }
}

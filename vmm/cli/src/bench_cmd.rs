//! `ftvm bench ...` (owned by the benchmark work).
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Channel benchmark (in progress).
    Channel,
}

pub fn run(cmd: BenchCommand, _settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Channel => anyhow::bail!("ftvm bench channel is not built yet"),
    }
}

//! `ftvm channel source|sink`.
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum ChannelCommand {
    /// The backup end on its own (in progress).
    Sink,
}

pub fn run(cmd: ChannelCommand, _settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        ChannelCommand::Sink => anyhow::bail!("ftvm channel sink is not built yet"),
    }
}

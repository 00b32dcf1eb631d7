//! `ftvm client ...` (owned by the kv client work).
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long)]
    server: String,
}

pub fn run(args: ClientArgs, _settings: &Settings) -> anyhow::Result<()> {
    anyhow::bail!("ftvm client --server {} is not built yet", args.server)
}

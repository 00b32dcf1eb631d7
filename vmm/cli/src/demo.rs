//! `ftvm demo`.
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs, _settings: &Settings) -> anyhow::Result<()> {
    anyhow::bail!("demo is not built yet")
}

//! `ftvm bench vmm`: live vs record mode with the kv guest (owned by the VMM work).
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct BenchVmmArgs {
    /// Client operations per mode.
    #[arg(long, default_value_t = 10_000)]
    pub ops: u64,
}

pub fn run(args: BenchVmmArgs, _settings: &Settings) -> anyhow::Result<()> {
    anyhow::bail!("ftvm bench vmm --ops {} is not built yet", args.ops)
}

//! `ftvm bench ...` (owned by the benchmark work).
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Channel benchmark (in progress).
    Channel,
    /// VMM benchmark: live vs record mode with the kv guest.
    Vmm(crate::bench_vmm::BenchVmmArgs),
}

pub fn run(cmd: BenchCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Channel => anyhow::bail!("ftvm bench channel is not built yet"),
        BenchCommand::Vmm(a) => crate::bench_vmm::run(a, settings),
    }
}

//! The `ftvm` binary: argument parsing and wiring only (the composition root).
//! Each command group lives in its own module; the work is in the library crates.

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

mod channel_cmd;
mod client_cmd;
mod ft_cmd;
mod log_cmd;
mod rdma_cmd;
mod vmm_cmd;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// ftvm: fault-tolerant virtual machines (record/replay over a logging channel).
#[derive(Debug, Parser)]
#[command(name = "ftvm", version, about, propagate_version = true)]
struct Cli {
    /// Settings profile: a name shipped in tuning/profiles (latency, throughput,
    /// balanced, rdma-rack) or a path to a TOML file.
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    /// Override one setting, e.g. `--set channel.batch_bytes=4096` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Who owns the block device's disk (`--disk FILE`): `shared` (one
    /// disk; only the primary writes, after the backup's ACK) or `local`
    /// (each side its own copy: `ftvm primary`, `ftvm backup`, `ftvm
    /// replay` each take --disk with their copy). Sets vmm.disk_mode, which
    /// both ends of a pair must share (the handshake refuses a mismatch).
    #[arg(long, global = true, value_name = "MODE", value_parser = ["shared", "local"])]
    disk_mode: Option<String>,
    /// Log output on stderr: `human` (`ftvm primary: …` lines) or `json`
    /// (one JSON object per event, with a `ftvm::state` event at every
    /// protection or phase change).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local demonstration with embedded defaults (no setup needed).
    Demo(ftvm_bench::demo::DemoArgs),
    /// Logging-channel tools: a standalone source (primary end) and sink (backup end).
    #[command(subcommand)]
    Channel(channel_cmd::ChannelCommand),
    /// Log-file tools.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(ftvm_bench::cli::BenchCommand),
    /// RDMA tools: `ftvm rdma probe` lists devices, ports and GIDs.
    #[command(subcommand)]
    Rdma(rdma_cmd::RdmaCommand),
    /// Client of the kv reference guest.
    Client(client_cmd::ClientArgs),
    /// Run the backup VMM: wait for a primary and replay its log as it arrives.
    Backup(ft_cmd::BackupArgs),
    /// Print the status of a primary or backup started with `--status ADDR`.
    Status(ft_cmd::StatusArgs),
    #[command(flatten)]
    Vmm(vmm_cmd::VmmCommand),
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    let format = ftvm_ft::events::LogFormat::parse(&cli.log_format).unwrap_or_default();
    ftvm_ft::events::install(format);
    if let Some(mode) = &cli.disk_mode {
        cli.sets.push(format!("vmm.disk_mode={mode}"));
    }
    let result = ftvm_tuning::Settings::load(cli.profile.as_deref(), &cli.sets)
        .map_err(anyhow::Error::from)
        .and_then(|settings| match cli.command {
            Command::Demo(a) => ftvm_bench::demo::run(a, &settings),
            Command::Channel(c) => channel_cmd::run(c, &settings),
            Command::Log(c) => log_cmd::run(c, &settings),
            Command::Bench(c) => ftvm_bench::cli::run(c, &settings),
            Command::Rdma(c) => rdma_cmd::run(c, &settings),
            Command::Client(a) => client_cmd::run(a, &settings),
            Command::Backup(a) => ft_cmd::run_backup(a, &settings).map(|o| {
                println!("state digest {:016x} at exit {}", o.state.digest, o.exits);
            }),
            Command::Status(a) => ft_cmd::status(a),
            Command::Vmm(c) => vmm_cmd::run(c, &settings),
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if format == ftvm_ft::events::LogFormat::Json => {
            tracing::error!(target: ftvm_ft::events::NOTICE, side = "ftvm", "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ftvm: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `ftvm bench transfer`: argument parsing only; the scenarios are
//! `ftvm_bench::transfer`.
use std::path::PathBuf;

use anyhow::bail;
use ftvm_bench::transfer::{Stream, TransferOptions, list_transfer, run_transfer};
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct BenchTransferArgs {
    /// Print the scenario table and exit.
    #[arg(long)]
    pub list: bool,
    /// Run only scenarios whose name contains SUBSTR (idle-64, kv-64, idle-512, kv-512).
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,
    /// Transfers per scenario (medians over these).
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Byte stream: tcp (loopback) or pipe (in-process).
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "pipe"])]
    pub stream: String,
    /// kv ops per load burst (bursts run back to back during a scenario).
    #[arg(long, default_value_t = 5_000)]
    pub burst_ops: u64,
    /// kv clients of the load.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Pre-copy: dirty-page rounds after the full copy, at most.
    #[arg(long, default_value_t = 16)]
    pub max_rounds: u32,
    /// Pre-copy: stop and copy once a round would send at most this many pages.
    #[arg(long, default_value_t = 256)]
    pub stop_pages: usize,
    /// Nice value of the receiving thread (it stands for another host).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub receiver_nice: i32,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

pub fn run(a: BenchTransferArgs, settings: &Settings) -> anyhow::Result<()> {
    if a.list {
        print!("{}", list_transfer());
        return Ok(());
    }
    if a.runs == 0 || a.runs > 1000 {
        bail!("--runs {}: expected 1..=1000", a.runs);
    }
    if a.clients == 0 {
        bail!("--clients 0: expected at least 1");
    }
    let opts = TransferOptions {
        filter: a.filter,
        runs: a.runs,
        stream: if a.stream == "pipe" {
            Stream::Pipe
        } else {
            Stream::Tcp
        },
        burst_ops: a.burst_ops.max(100),
        clients: a.clients,
        max_rounds: a.max_rounds,
        stop_pages: a.stop_pages,
        receiver_nice: a.receiver_nice.clamp(-20, 19),
        report: a.report,
    };
    run_transfer(&opts, settings).map(drop)
}

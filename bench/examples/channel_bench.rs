//! Runs the channel benchmark without the `ftvm` binary (and without building
//! the VMM): `cargo run --release -p ftvm-bench --example channel_bench -- TRANSPORT [SCENARIO-FILTER] [ENTRIES]`.
//! The full option set is `ftvm bench channel --help`.

use std::time::Duration;

use ftvm_bench::{ChannelOptions, Role};
use ftvm_tuning::{Settings, TransportKind};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let transports = match args.first().map(String::as_str).unwrap_or("all") {
        "tcp" => vec![TransportKind::Tcp],
        "uring" => vec![TransportKind::Uring],
        "shm" => vec![TransportKind::Shm],
        "rdma" => vec![TransportKind::Rdma],
        "all" => TransportKind::ALL.to_vec(),
        other => anyhow::bail!("transport {other:?}: expected tcp, uring, shm, rdma or all"),
    };
    let profile = std::env::var("FTVM_PROFILE").ok();
    let sets: Vec<String> = std::env::var("FTVM_SET")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let settings = Settings::load(profile.as_deref(), &sets)?;
    let opts = ChannelOptions {
        transports,
        filter: args.get(1).cloned(),
        entries: args
            .get(2)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(20_000),
        duration: Duration::from_secs(3),
        payloads: vec![
            std::env::var("FTVM_PAYLOAD")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(64),
        ],
        rate: 20_000,
        stream_bytes: 256 << 20,
        output_every: 10,
        report: None,
        hgrm: None,
        plot: None,
        role: Role::Local,
    };
    ftvm_bench::run(&opts, &settings).map(drop)
}

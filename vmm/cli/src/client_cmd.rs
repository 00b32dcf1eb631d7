//! `ftvm client ...`: single kv requests and the self-checking load generator
//! (`ftvm_kvproto::client`, `ftvm_kvproto::load`). Parsing and printing only.
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use ftvm_kvproto::Op;
use ftvm_kvproto::client::KvClient;
use ftvm_kvproto::load::{LoadConfig, LoadReport, run_load};
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address (the `--service` address of `ftvm primary`).
    #[arg(long)]
    server: String,
    /// Per-attempt timeout in milliseconds before the same request is resent.
    #[arg(long, global = true, default_value_t = 200)]
    timeout_ms: u64,
    /// Sends per request before giving up.
    #[arg(long, global = true, default_value_t = 25)]
    attempts: u32,
    /// Client id for single requests (default: derived from the time and pid).
    #[arg(long)]
    client_id: Option<u64>,
    /// Request number of a single request (reuse one to see a retry answered
    /// from the server's client table).
    #[arg(long, default_value_t = 1)]
    request_no: u64,
    #[command(subcommand)]
    op: ClientOp,
}

#[derive(Debug, clap::Subcommand)]
enum ClientOp {
    /// Set KEY to VALUE.
    Put {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// Read KEY.
    Get { key: String },
    /// Append VALUE to KEY; prints the result.
    Append { key: String, value: String },
    /// Set KEY to NEW if it holds OLD.
    Cas {
        key: String,
        old: String,
        new: String,
    },
    /// Self-checking load: C clients, N operations, closed or open loop.
    Load(LoadArgs),
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// Client ids.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Operations in total.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Open loop at this many ops/s (latency from the intended send time);
    /// default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Private keys per client.
    #[arg(long, default_value_t = 8)]
    keys: u32,
    /// Seed of the op generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load threads (each busy-polls its own socket).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Longest value written by one op (bytes).
    #[arg(long, default_value_t = 32)]
    max_value_len: usize,
}

fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("--server {server}: not an address"))?
        .next()
        .with_context(|| format!("--server {server}: resolves to no address"))
}

pub fn run(args: ClientArgs, _settings: &Settings) -> anyhow::Result<()> {
    let server = resolve(&args.server)?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let (op, key, value, new) = match args.op {
        ClientOp::Load(l) => return run_load_cmd(server, timeout, args.attempts, l),
        ClientOp::Put { key, value } => (Op::Put, key, value, String::new()),
        ClientOp::Get { key } => (Op::Get, key, String::new(), String::new()),
        ClientOp::Append { key, value } => (Op::Append, key, value, String::new()),
        ClientOp::Cas { key, old, new } => (Op::Cas, key, old, new),
    };
    let client_id = args.client_id.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 40)
    });
    let mut client = KvClient::new(server, client_id, args.request_no, timeout, args.attempts)?;
    let reply = client.call(op, key.as_bytes(), value.as_bytes(), new.as_bytes())?;
    println!(
        "{} {} client {:#x} request {} ({} attempt{}) value {:?}",
        op.name(),
        reply.status.name(),
        reply.client_id,
        reply.request_no,
        reply.attempts,
        if reply.attempts == 1 { "" } else { "s" },
        String::from_utf8_lossy(&reply.value),
    );
    Ok(())
}

fn run_load_cmd(
    server: SocketAddr,
    timeout: Duration,
    attempts: u32,
    l: LoadArgs,
) -> anyhow::Result<()> {
    let mut cfg = LoadConfig::new(server);
    cfg.clients = l.clients;
    cfg.ops = l.ops;
    cfg.rate = l.rate;
    cfg.timeout = timeout;
    cfg.max_attempts = attempts;
    cfg.keys = l.keys;
    cfg.seed = l.seed;
    cfg.threads = l.threads;
    cfg.max_value_len = l.max_value_len;
    let report = run_load(&cfg)?;
    print_report(&cfg, &report);
    if report.errors > 0 {
        anyhow::bail!(
            "{} of {} replies disagreed with the model; first: {}",
            report.errors,
            report.ops,
            report.first_errors.first().map_or("", String::as_str)
        );
    }
    Ok(())
}

fn print_report(cfg: &LoadConfig, r: &LoadReport) {
    let mode = match cfg.rate {
        Some(rate) => format!("open loop at {rate} ops/s"),
        None => "closed loop".to_string(),
    };
    println!(
        "load: {} clients on {} thread(s), {} ops, {mode}, server {}",
        cfg.clients, cfg.threads, r.ops, cfg.server
    );
    println!(
        "  {:>10.0} ops/s  elapsed {:.3} s  retries {}  duplicate replies {}  errors {}",
        r.ops_per_sec(),
        r.elapsed.as_secs_f64(),
        r.retries,
        r.duplicate_replies,
        r.errors
    );
    println!(
        "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        r.latency_us(0.5),
        r.latency_us(0.9),
        r.latency_us(0.99),
        r.latency_us(0.999),
        r.max_us()
    );
    println!(
        "  ops  PUT {}  GET {}  APPEND {}  CAS {}",
        r.per_op[0], r.per_op[1], r.per_op[2], r.per_op[3]
    );
    for e in &r.first_errors {
        println!("  error: {e}");
    }
}

//! `ftvm client ...`: single kv requests and the self-checking load generator
//! (`ftvm_kvproto::client`, `ftvm_kvproto::load`). Parsing and printing only.
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use ftvm_kvproto::Op;
use ftvm_kvproto::client::KvClient;
use ftvm_kvproto::load::{LoadConfig, OpMix, run_load};
use ftvm_tuning::Settings;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// Server address (the `--service` address of `ftvm primary`); several,
    /// comma-separated (the primary's and the backup's): a request that
    /// times out is resent to the next one.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    server: String,
    /// Per-attempt timeout in milliseconds before the same request is resent.
    #[arg(long, global = true, default_value_t = 200)]
    timeout_ms: u64,
    /// Sends per request before giving up.
    #[arg(long, global = true, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..))]
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
    /// Only APPENDs of unique tokens, then a read-back of every key that
    /// counts acknowledged writes lost or applied twice.
    #[arg(long)]
    append_only: bool,
    /// Read back every key at the end and compare with the model.
    #[arg(long)]
    check: bool,
}

fn resolve(servers: &str) -> anyhow::Result<Vec<SocketAddr>> {
    servers
        .split(',')
        .map(|server| {
            server
                .to_socket_addrs()
                .with_context(|| format!("--server {server}: not an address"))?
                .next()
                .with_context(|| format!("--server {server}: resolves to no address"))
        })
        .collect()
}

pub fn run(args: ClientArgs, _settings: &Settings) -> anyhow::Result<()> {
    let servers = resolve(&args.server)?;
    let (server, fallbacks) = (servers[0], &servers[1..]);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let (op, key, value, new) = match args.op {
        ClientOp::Load(l) => return run_load_cmd(&servers, timeout, args.attempts, l),
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
    let mut client = KvClient::new(server, client_id, args.request_no, timeout, args.attempts)?
        .with_fallbacks(fallbacks);
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
    // The server refused the request: say so in the exit status too.
    if matches!(
        reply.status,
        ftvm_kvproto::Status::Full | ftvm_kvproto::Status::BadRequest
    ) {
        anyhow::bail!(
            "{} refused by the server: {}",
            op.name(),
            reply.status.name()
        );
    }
    Ok(())
}

fn run_load_cmd(
    servers: &[SocketAddr],
    timeout: Duration,
    attempts: u32,
    l: LoadArgs,
) -> anyhow::Result<()> {
    let mut cfg = LoadConfig::new(servers[0]);
    cfg.fallbacks = servers[1..].to_vec();
    cfg.mix = if l.append_only {
        OpMix::AppendOnly
    } else {
        OpMix::Mixed
    };
    cfg.final_check = l.check || l.append_only;
    cfg.clients = l.clients;
    cfg.ops = l.ops;
    cfg.rate = l.rate;
    cfg.timeout = timeout;
    cfg.max_attempts = attempts;
    cfg.keys = l.keys;
    cfg.seed = l.seed;
    cfg.threads = l.threads;
    cfg.max_value_len = l.max_value_len;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    cfg.progress = Some(done.clone());
    let progress = ftvm_bench::progress::Progress::follow("load", cfg.ops, done);
    let report = run_load(&cfg);
    progress.finish();
    let report = report?;
    print!("{}", report.render(&cfg));
    report.verdict()?;
    Ok(())
}

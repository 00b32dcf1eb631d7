//! The fault-tolerant pair from the command line: `ftvm backup`, the
//! `--backup` path of `ftvm primary`, and `ftvm status`.

use std::time::Duration;

use anyhow::Context;
use ftvm_ft::node::{BackupNode, PairConfig};
use ftvm_ft::rejoin::SpareSources;
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::{RunOutcome, VmConfig};

/// Where the pair's generations are decided, and under which name.
#[derive(Debug, Clone, clap::Args)]
pub struct PairArgs {
    /// Arbiter deciding generations: `file:DIR` (one host or a shared NFS
    /// directory) or `etcd:http://HOST:PORT[,...]`. Default: a per-user
    /// runtime directory on this host (printed at start).
    #[arg(long, value_name = "URL")]
    pub arbiter: Option<String>,
    /// Name of the protected VM at the arbiter (default: derived from the
    /// guest and the primary's service address; a backup adopts the primary's).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// A floating service address this side adds to `--service-dev` while it
    /// is live (announced by gratuitous ARP) and removes when it stops or loses.
    #[arg(long, value_name = "IP/PREFIX", requires = "service_dev")]
    pub service_ip: Option<String>,
    /// The device the floating service address lives on.
    #[arg(long, value_name = "DEV", requires = "service_ip")]
    pub service_dev: Option<String>,
}

impl PairArgs {
    /// The pair's arbiter, name and floating address.
    pub fn config(&self) -> anyhow::Result<PairConfig> {
        let floating = match (&self.service_ip, &self.service_dev) {
            (Some(ip), Some(dev)) => Some(ftvm_ft::FloatingIp::parse(ip, dev)?),
            _ => None,
        };
        Ok(PairConfig {
            arbiter: self.arbiter.clone(),
            vm: self.vm.clone(),
            floating,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Embedded guest (must be the primary's: the handshake compares image digests).
    #[arg(long)]
    pub guest: String,
    /// Address to wait for the primary on: host:port (tcp, uring) or a name (shm).
    #[arg(long)]
    pub listen: String,
    /// Transport: tcp, shm or uring (default: the settings' channel.transport).
    #[arg(long)]
    pub transport: Option<TransportKind>,
    /// Guest argument (must be the primary's).
    #[arg(long, default_value_t = 0)]
    pub arg: u64,
    /// UDP address this backup serves once live (bound at start). Without
    /// it (and without --service-ip) the backup cannot serve after failover.
    #[arg(long, value_name = "ADDR")]
    pub service: Option<String>,
    /// The shared disk (the primary's --disk): writes the primary had not
    /// confirmed are re-issued at go-live. --disk-mode local: this side's own copy.
    #[arg(long, value_name = "FILE")]
    pub disk: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub pair: PairArgs,
    /// Do not re-send, at go-live, the replies whose release by the
    /// primary was not confirmed (clients then wait for their retry).
    #[arg(long)]
    pub no_resend: bool,
    /// Serve status (JSON) on this TCP address (`ftvm status ADDR`).
    #[arg(long)]
    pub status: Option<String>,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (docs/operations.md).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Seconds to wait for a primary.
    #[arg(long, default_value_t = 3600)]
    pub wait_secs: u64,
    /// Wait as a spare: a live side (`ftvm primary --spare ADDR`, or a
    /// backup that went live) transfers its running state to this side,
    /// which then replays its log from there (tcp; `--listen` is the TCP
    /// address). With --vm the spare registers at the arbiter, where
    /// `--find-spares` finds it.
    #[arg(long)]
    pub as_spare: bool,
    /// Once live, take the spare at ADDR (`ftvm backup --as-spare --listen
    /// ADDR`) as the next backup: live state transfer, then protected
    /// again; again whenever that backup is lost.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub spare: Vec<String>,
    /// Once live, also take the spares registered at the arbiter under the VM's name.
    #[arg(long)]
    pub find_spares: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The `--status` address of a primary or backup.
    pub addr: String,
}

pub fn status(a: StatusArgs) -> anyhow::Result<()> {
    let v = ftvm_ft::status::query(&a.addr, Duration::from_secs(2))
        .with_context(|| format!("reading the status of {}", a.addr))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Settings with `channel.transport` replaced by `--transport`, if given.
pub fn with_transport(settings: &Settings, transport: Option<TransportKind>) -> Settings {
    let mut s = settings.clone();
    if let Some(t) = transport {
        s.channel.transport = t;
    }
    s
}

/// `ftvm backup`: the wiring is [`ftvm_ft::node::run_backup`].
pub fn run_backup(a: BackupArgs, settings: &Settings) -> anyhow::Result<RunOutcome> {
    let settings = with_transport(settings, a.transport);
    let mut c = VmConfig::new(&a.guest, &settings.vmm)?;
    c.guest_arg = a.arg;
    c.disk = a.disk;
    c.stop = crate::vmm_cmd::stop_on_signals()?;
    let service = a.service.as_deref();
    let node = BackupNode {
        service: service
            .map(|s| ftvm_ft::node::resolve("--service", s))
            .transpose()?,
        pair: a.pair.config()?,
        settings,
        listen: a.listen,
        resend_replies: !a.no_resend,
        status: a.status,
        metrics: a.metrics,
        wait: Duration::from_secs(a.wait_secs),
        as_spare: a.as_spare,
        spares: SpareSources {
            list: a.spare,
            registered: a.find_spares,
        },
    };
    Ok(ftvm_ft::node::run_backup(c, node)?)
}

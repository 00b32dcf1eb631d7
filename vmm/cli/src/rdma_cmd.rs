//! `ftvm rdma ...`: RDMA tools (argument parsing and printing only; the
//! work is in `ftvm-rdma`).

use std::path::PathBuf;

use anyhow::Context;
use ftvm_tuning::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum RdmaCommand {
    /// List RDMA devices, ports, state, MTU and GIDs (RoCE v2 marked), like
    /// `ibv_devinfo` and `show_gids`, and what the [rdma] settings select.
    /// Reads sysfs; needs no libibverbs. Fails when there is no device.
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The sysfs directory of RDMA devices.
    #[arg(long, value_name = "DIR", default_value = ftvm_rdma::sysfs::SYSFS_ROOT)]
    pub sysfs: PathBuf,
}

fn probe(a: ProbeArgs, settings: &Settings) -> anyhow::Result<()> {
    let devices = ftvm_rdma::sysfs::probe(&a.sysfs)?;
    print!("{}", ftvm_rdma::sysfs::render(&devices));
    let r = &settings.channel.rdma;
    let selected = ftvm_rdma::sysfs::select(&devices, &r.device, r.port, r.gid_index)
        .with_context(|| {
            format!(
                "the settings (rdma.device = {:?}, rdma.port = {}, rdma.gid_index = {}) select no usable port",
                r.device, r.port, r.gid_index
            )
        })?;
    let (dev, port, gid) = selected;
    println!(
        "settings select: {} port {} gid {} ({gid})",
        dev.name, port.number, gid.index
    );
    if a.sysfs != std::path::Path::new(ftvm_rdma::sysfs::SYSFS_ROOT) {
        // libibverbs sees the real devices, not the tree --sysfs names.
        println!(
            "libibverbs: not checked (--sysfs {} is not the system's)",
            a.sysfs.display()
        );
    } else if ftvm_rdma::VERBS_BUILT {
        let mut s = settings.channel.clone();
        s.rdma.nic = ftvm_tuning::RdmaNic::Hardware;
        match ftvm_channel::transport::rdma::probe_available(&s) {
            Ok(()) => println!("libibverbs: {} opens", dev.name),
            Err(e) => anyhow::bail!("libibverbs cannot use {}: {e}", dev.name),
        }
    } else {
        println!(
            "verbs: not in this build (rebuild with `cargo build --release --features rdma` to use the device)"
        );
    }
    Ok(())
}

pub fn run(cmd: RdmaCommand, settings: &Settings) -> anyhow::Result<()> {
    match cmd {
        RdmaCommand::Probe(a) => probe(a, settings),
    }
}

//! What RDMA hardware this host has, read from sysfs without libibverbs
//! (`/sys/class/infiniband/*/ports/*`), like `ibv_devinfo` plus `show_gids`.
//!
//! Every RDMA device the kernel knows (InfiniBand HCAs, RoCE NICs, iWARP,
//! rxe/siw) appears under `/sys/class/infiniband`. The transport checks here
//! first, before any library is loaded, so that a host without a device gets
//! `no RDMA device: /sys/class/infiniband is empty` whatever the build.
//!
//! Per port it reads `state`, `phys_state`, `link_layer`, `rate`, `lid`,
//! `active_mtu` when the kernel has it (otherwise, for RoCE, the MTU is
//! derived from the GID's network device: the largest IB MTU that fits its
//! MTU minus the RoCE v2 headers), and the GID table `gids/N` with
//! `gid_attrs/types/N` (`IB/RoCE v1` or `RoCE v2`) and `gid_attrs/ndevs/N`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// The sysfs directory of RDMA devices.
pub const SYSFS_ROOT: &str = "/sys/class/infiniband";

/// Why probing failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No device at all.
    #[error("no RDMA device: {} is empty{}", root.display(), if *missing { " (it does not exist: no RDMA driver is loaded; on a rack host load the NIC's driver, e.g. mlx5_ib, or see docs/deploy-rdma.md)" } else { "" })]
    NoDevice {
        /// The directory looked at.
        root: PathBuf,
        /// True when the directory does not exist at all.
        missing: bool,
    },
    /// A device or port asked for by name that is not there.
    #[error("RDMA device {wanted:?} not found; devices here: {found}")]
    NoSuchDevice {
        /// The name asked for.
        wanted: String,
        /// The devices present, comma separated.
        found: String,
    },
    /// A port number the device does not have.
    #[error("RDMA device {device} has no port {port} (ports: {ports})")]
    NoSuchPort {
        /// The device.
        device: String,
        /// The port asked for.
        port: u8,
        /// Its ports, comma separated.
        ports: String,
    },
    /// The port is not ACTIVE.
    #[error(
        "RDMA port {device}/{port} is down: state {state}, physical state {phys_state} (check the cable and the switch port; `ftvm rdma probe` shows every port)"
    )]
    PortDown {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// `state` as sysfs has it (`1: DOWN`).
        state: String,
        /// `phys_state` (`3: Disabled`).
        phys_state: String,
    },
    /// No device has an ACTIVE port (when no device was named).
    #[error("no RDMA port is ACTIVE: {ports}")]
    NoActivePort {
        /// Every device/port with its state.
        ports: String,
    },
    /// A GID index the table does not have (or whose entry is empty).
    #[error("RDMA port {device}/{port} has no GID at index {index} (valid: {valid})")]
    NoSuchGid {
        /// The device.
        device: String,
        /// The port.
        port: u8,
        /// The index asked for.
        index: i32,
        /// The valid indices, comma separated.
        valid: String,
    },
    /// A sysfs file that cannot be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The kind of a GID table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GidKind {
    /// InfiniBand (link layer InfiniBand) or RoCE v1 (Ethernet): `IB/RoCE v1`.
    IbOrRoceV1,
    /// RoCE v2: routable over UDP/IP, the one to use on Ethernet racks.
    RoceV2,
    /// The kernel did not say.
    Unknown,
}

/// One non-empty GID table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gid {
    /// Index in the port's table (`rdma.gid_index`).
    pub index: u32,
    /// The 16 bytes.
    pub raw: [u8; 16],
    /// IB / RoCE v1 or RoCE v2.
    pub kind: GidKind,
    /// Network device it belongs to (RoCE), e.g. `ens1f0`.
    pub ndev: Option<String>,
}

impl Gid {
    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`).
    pub fn ipv4(&self) -> Option<std::net::Ipv4Addr> {
        let r = &self.raw;
        (r[..10].iter().all(|&b| b == 0) && r[10] == 0xff && r[11] == 0xff)
            .then(|| std::net::Ipv4Addr::new(r[12], r[13], r[14], r[15]))
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ipv4() {
            Some(ip) => write!(f, "::ffff:{ip}"),
            None => write!(f, "{}", std::net::Ipv6Addr::from(self.raw)),
        }
    }
}

/// Where a port's active MTU came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MtuSource {
    /// sysfs `active_mtu`.
    Sysfs,
    /// Derived from a network device's MTU (RoCE).
    Netdev {
        /// The network device.
        ndev: String,
        /// Its MTU.
        mtu: u32,
    },
}

/// One port of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (1-based).
    pub number: u8,
    /// `4: ACTIVE`, `1: DOWN`, ...
    pub state: String,
    /// `5: LinkUp`, `3: Disabled`, ...
    pub phys_state: String,
    /// `InfiniBand` or `Ethernet`.
    pub link_layer: String,
    /// `100 Gb/sec (4X EDR)`.
    pub rate: String,
    /// The port's LID (InfiniBand; 0 on Ethernet).
    pub lid: u16,
    /// Active MTU in bytes, if known without libibverbs.
    pub active_mtu: Option<(u32, MtuSource)>,
    /// Non-empty GID entries.
    pub gids: Vec<Gid>,
}

impl PortInfo {
    /// True when `state` is ACTIVE.
    pub fn is_active(&self) -> bool {
        self.state.contains("ACTIVE")
    }

    /// True on Ethernet (RoCE).
    pub fn is_ethernet(&self) -> bool {
        self.link_layer == "Ethernet"
    }

    /// The GID `rdma.gid_index` names: `index >= 0` that entry; -1 the first
    /// RoCE v2 GID with an IPv4 address, else the first RoCE v2 GID, else the
    /// first entry (InfiniBand: index 0).
    pub fn choose_gid(&self, index: i32) -> Option<&Gid> {
        if index >= 0 {
            return self
                .gids
                .iter()
                .find(|g| i64::from(g.index) == i64::from(index));
        }
        let v2 = |g: &&Gid| g.kind == GidKind::RoceV2;
        self.gids
            .iter()
            .filter(v2)
            .find(|g| g.ipv4().is_some())
            .or_else(|| self.gids.iter().find(v2))
            .or_else(|| self.gids.first())
    }
}

/// One RDMA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `mlx5_0`.
    pub name: String,
    /// `node_type` (`1: CA`).
    pub node_type: String,
    /// `node_guid`.
    pub node_guid: String,
    /// `fw_ver`.
    pub fw_ver: String,
    /// `hca_type` or `board_id`, whichever exists.
    pub model: String,
    /// NUMA node of the PCI device (`device/numa_node`), if known.
    pub numa_node: Option<i32>,
    /// Its ports.
    pub ports: Vec<PortInfo>,
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn parse_gid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(raw)
}

/// The largest IB MTU whose RoCE v2 packets fit a network device MTU of
/// `netdev_mtu` bytes: payload plus IPv6 40 + UDP 8 + BTH 12 + RETH 16 +
/// ImmDt 4 + ICRC 4 = 84 bytes of headers (so 1500 gives 1024, 4200 gives 4096).
pub fn roce_mtu(netdev_mtu: u32) -> Option<u32> {
    [4096, 2048, 1024, 512, 256]
        .into_iter()
        .find(|&m| m + 84 <= netdev_mtu)
}

fn probe_port(dev_dir: &Path, number: u8, root: &Path) -> PortInfo {
    let dir = dev_dir.join("ports").join(number.to_string());
    let get = |name: &str| read(&dir.join(name)).unwrap_or_default();
    let mut gids = Vec::new();
    if let Ok(entries) = fs::read_dir(dir.join("gids")) {
        let mut indices: Vec<u32> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        indices.sort_unstable();
        for index in indices {
            let Some(raw) =
                read(&dir.join("gids").join(index.to_string())).and_then(|t| parse_gid(&t))
            else {
                continue;
            };
            if raw == [0; 16] {
                continue;
            }
            let kind = match read(&dir.join("gid_attrs/types").join(index.to_string())).as_deref() {
                Some(t) if t.contains("v2") => GidKind::RoceV2,
                Some(t) if t.contains("IB") || t.contains("v1") => GidKind::IbOrRoceV1,
                _ => GidKind::Unknown,
            };
            let ndev = read(&dir.join("gid_attrs/ndevs").join(index.to_string()))
                .filter(|s| !s.is_empty());
            gids.push(Gid {
                index,
                raw,
                kind,
                ndev,
            });
        }
    }
    let link_layer = get("link_layer");
    let active_mtu = read(&dir.join("active_mtu"))
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .map(|m| (m, MtuSource::Sysfs))
        .or_else(|| {
            if link_layer != "Ethernet" {
                return None;
            }
            let ndev = gids.iter().find_map(|g| g.ndev.clone())?;
            // /sys/class/net sits beside /sys/class/infiniband.
            let net = root.parent()?.join("net").join(&ndev).join("mtu");
            let mtu: u32 = read(&net)?.parse().ok()?;
            Some((roce_mtu(mtu)?, MtuSource::Netdev { ndev, mtu }))
        });
    PortInfo {
        number,
        state: get("state"),
        phys_state: get("phys_state"),
        rate: get("rate"),
        lid: u16::from_str_radix(get("lid").trim_start_matches("0x"), 16).unwrap_or(0),
        link_layer,
        active_mtu,
        gids,
    }
}

/// Every device under `root` (normally [`SYSFS_ROOT`]), sorted by name.
///
/// Errors: [`ProbeError::NoDevice`] when there is none.
pub fn probe(root: &Path) -> Result<Vec<DeviceInfo>, ProbeError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProbeError::NoDevice {
                root: root.to_owned(),
                missing: true,
            });
        }
        Err(source) => {
            return Err(ProbeError::Read {
                path: root.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(ProbeError::NoDevice {
            root: root.to_owned(),
            missing: false,
        });
    }
    let mut devices = Vec::new();
    for name in names {
        let dir = root.join(&name);
        let mut ports: Vec<u8> = fs::read_dir(dir.join("ports"))
            .map(|e| {
                e.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        ports.sort_unstable();
        devices.push(DeviceInfo {
            node_type: read(&dir.join("node_type")).unwrap_or_default(),
            node_guid: read(&dir.join("node_guid")).unwrap_or_default(),
            fw_ver: read(&dir.join("fw_ver")).unwrap_or_default(),
            model: read(&dir.join("hca_type"))
                .or_else(|| read(&dir.join("board_id")))
                .unwrap_or_default(),
            numa_node: read(&dir.join("device/numa_node")).and_then(|t| t.parse().ok()),
            ports: ports
                .into_iter()
                .map(|p| probe_port(&dir, p, root))
                .collect(),
            name,
        });
    }
    Ok(devices)
}

/// The device, port and GID the settings name, checked: the device exists,
/// the port exists and is ACTIVE, the GID entry exists.
pub fn select<'a>(
    devices: &'a [DeviceInfo],
    device: &str,
    port: u8,
    gid_index: i32,
) -> Result<(&'a DeviceInfo, &'a PortInfo, &'a Gid), ProbeError> {
    let dev = if device.is_empty() {
        devices
            .iter()
            .find(|d| d.ports.iter().any(|p| p.number == port && p.is_active()))
            .ok_or_else(|| ProbeError::NoActivePort {
                ports: devices
                    .iter()
                    .flat_map(|d| {
                        d.ports
                            .iter()
                            .map(move |p| format!("{}/{} {}", d.name, p.number, p.state))
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
    } else {
        devices
            .iter()
            .find(|d| d.name == device)
            .ok_or_else(|| ProbeError::NoSuchDevice {
                wanted: device.to_owned(),
                found: devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
    };
    let p = dev
        .ports
        .iter()
        .find(|p| p.number == port)
        .ok_or_else(|| ProbeError::NoSuchPort {
            device: dev.name.clone(),
            port,
            ports: dev
                .ports
                .iter()
                .map(|p| p.number.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    if !p.is_active() {
        return Err(ProbeError::PortDown {
            device: dev.name.clone(),
            port,
            state: p.state.clone(),
            phys_state: p.phys_state.clone(),
        });
    }
    let gid = p
        .choose_gid(gid_index)
        .ok_or_else(|| ProbeError::NoSuchGid {
            device: dev.name.clone(),
            port,
            index: gid_index,
            valid: p
                .gids
                .iter()
                .map(|g| g.index.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    Ok((dev, p, gid))
}

/// The report `ftvm rdma probe` prints.
pub fn render(devices: &[DeviceInfo]) -> String {
    let mut out = String::new();
    for d in devices {
        out.push_str(&format!(
            "{}  {}  fw {}  node_guid {}  numa_node {}\n",
            d.name,
            if d.model.is_empty() { "-" } else { &d.model },
            if d.fw_ver.is_empty() { "-" } else { &d.fw_ver },
            if d.node_guid.is_empty() {
                "-"
            } else {
                &d.node_guid
            },
            d.numa_node.map_or("unknown".to_owned(), |n| n.to_string()),
        ));
        for p in &d.ports {
            let mtu = match &p.active_mtu {
                Some((m, MtuSource::Sysfs)) => format!("{m}"),
                Some((m, MtuSource::Netdev { ndev, mtu })) => {
                    format!("{m} (from {ndev} mtu {mtu})")
                }
                None => "unknown (ibv_query_port)".to_owned(),
            };
            out.push_str(&format!(
                "  port {}: {} ({}), {}, rate {}, lid {:#x}, active_mtu {}\n",
                p.number, p.state, p.phys_state, p.link_layer, p.rate, p.lid, mtu
            ));
            for g in &p.gids {
                let kind = match g.kind {
                    GidKind::RoceV2 => "RoCE v2   <- routable (use on Ethernet racks)",
                    GidKind::IbOrRoceV1 if p.is_ethernet() => "RoCE v1",
                    GidKind::IbOrRoceV1 => "IB",
                    GidKind::Unknown => "?",
                };
                out.push_str(&format!(
                    "    gid {:>3}  {:<40} {:<8} {}\n",
                    g.index,
                    g.to_string(),
                    g.ndev.as_deref().unwrap_or("-"),
                    kind
                ));
            }
            if let Some(g) = p.choose_gid(-1) {
                out.push_str(&format!("    rdma.gid_index = -1 picks gid {}\n", g.index));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree of one RoCE NIC with an IPv6 link-local and an IPv4 GID per version.
    pub(crate) fn fake_roce(root: &Path, state: &str) {
        let port = root.join("infiniband/mlx5_0/ports/1");
        for d in ["gids", "gid_attrs/types", "gid_attrs/ndevs"] {
            fs::create_dir_all(port.join(d)).unwrap();
        }
        let w = |p: PathBuf, t: &str| fs::write(p, format!("{t}\n")).unwrap();
        let dev = root.join("infiniband/mlx5_0");
        w(dev.join("node_type"), "1: CA");
        w(dev.join("node_guid"), "0c42:a103:00a5:b8e4");
        w(dev.join("fw_ver"), "16.35.2000");
        w(dev.join("hca_type"), "MT4119");
        fs::create_dir_all(dev.join("device")).unwrap();
        w(dev.join("device/numa_node"), "1");
        w(port.join("state"), state);
        w(port.join("phys_state"), "5: LinkUp");
        w(port.join("link_layer"), "Ethernet");
        w(port.join("rate"), "100 Gb/sec (4X EDR)");
        w(port.join("lid"), "0x0");
        let gids = [
            ("fe80:0000:0000:0000:0e42:a1ff:fea5:b8e4", "IB/RoCE v1"),
            ("fe80:0000:0000:0000:0e42:a1ff:fea5:b8e4", "RoCE v2"),
            ("0000:0000:0000:0000:0000:ffff:0a00:0001", "IB/RoCE v1"),
            ("0000:0000:0000:0000:0000:ffff:0a00:0001", "RoCE v2"),
            ("0000:0000:0000:0000:0000:0000:0000:0000", ""),
        ];
        for (i, (g, t)) in gids.iter().enumerate() {
            w(port.join(format!("gids/{i}")), g);
            w(port.join(format!("gid_attrs/types/{i}")), t);
            w(port.join(format!("gid_attrs/ndevs/{i}")), "ens1f0");
        }
        fs::create_dir_all(root.join("net/ens1f0")).unwrap();
        w(root.join("net/ens1f0/mtu"), "9000");
    }

    #[test]
    fn an_empty_or_missing_root_is_the_no_device_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = probe(&dir.path().join("infiniband")).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "no RDMA device: {}/infiniband is empty (it does not exist",
                dir.path().display()
            )),
            "{err}"
        );
        fs::create_dir(dir.path().join("infiniband")).unwrap();
        let err = probe(&dir.path().join("infiniband")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no RDMA device: {}/infiniband is empty",
                dir.path().display()
            )
        );
    }

    #[test]
    fn a_roce_nic_is_listed_with_its_gids_and_mtu() {
        let dir = tempfile::tempdir().unwrap();
        fake_roce(dir.path(), "4: ACTIVE");
        let devs = probe(&dir.path().join("infiniband")).unwrap();
        assert_eq!(devs.len(), 1);
        let p = &devs[0].ports[0];
        assert_eq!(p.gids.len(), 4, "the empty entry is skipped");
        assert_eq!(
            p.active_mtu,
            Some((
                4096,
                MtuSource::Netdev {
                    ndev: "ens1f0".into(),
                    mtu: 9000
                }
            ))
        );
        assert_eq!(devs[0].numa_node, Some(1));
        // Auto: the IPv4 RoCE v2 GID.
        assert_eq!(p.choose_gid(-1).map(|g| g.index), Some(3));
        assert_eq!(p.choose_gid(1).map(|g| g.kind), Some(GidKind::RoceV2));
        let text = render(&devs);
        assert!(text.contains("gid   3  ::ffff:10.0.0.1"), "{text}");
        assert!(text.contains("RoCE v2   <- routable"), "{text}");
        assert!(
            text.contains("port 1: 4: ACTIVE (5: LinkUp), Ethernet"),
            "{text}"
        );
        assert!(text.contains("rdma.gid_index = -1 picks gid 3"), "{text}");
        let (d, port, gid) = select(&devs, "", 1, -1).unwrap();
        assert_eq!((d.name.as_str(), port.number, gid.index), ("mlx5_0", 1, 3));
    }

    #[test]
    fn selection_errors_name_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        fake_roce(dir.path(), "1: DOWN");
        let devs = probe(&dir.path().join("infiniband")).unwrap();
        let e = select(&devs, "mlx5_0", 1, -1).unwrap_err().to_string();
        assert!(
            e.starts_with("RDMA port mlx5_0/1 is down: state 1: DOWN, physical state 5: LinkUp"),
            "{e}"
        );
        let e = select(&devs, "", 1, -1).unwrap_err().to_string();
        assert_eq!(e, "no RDMA port is ACTIVE: mlx5_0/1 1: DOWN");
        let e = select(&devs, "mlx5_9", 1, -1).unwrap_err().to_string();
        assert_eq!(e, "RDMA device \"mlx5_9\" not found; devices here: mlx5_0");
        let e = select(&devs, "mlx5_0", 2, -1).unwrap_err().to_string();
        assert_eq!(e, "RDMA device mlx5_0 has no port 2 (ports: 1)");
        let dir = tempfile::tempdir().unwrap();
        fake_roce(dir.path(), "4: ACTIVE");
        let devs = probe(&dir.path().join("infiniband")).unwrap();
        let e = select(&devs, "mlx5_0", 1, 4).unwrap_err().to_string();
        assert_eq!(
            e,
            "RDMA port mlx5_0/1 has no GID at index 4 (valid: 0, 1, 2, 3)"
        );
    }

    #[test]
    fn roce_mtu_arithmetic() {
        assert_eq!(roce_mtu(9000), Some(4096));
        assert_eq!(roce_mtu(4200), Some(4096));
        assert_eq!(roce_mtu(1500), Some(1024));
        assert_eq!(roce_mtu(300), None);
    }
}

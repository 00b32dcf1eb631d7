//! The RDMA tools and `--transport rdma` as users run them: on a host
//! without a device every one fails with the no-device error (exit status
//! non-zero, no panic); `ftvm rdma probe` lists a device tree given with
//! `--sysfs`; the bench runs its scenarios on the simulated NIC as `rdma-sim`.

use std::path::Path;
use std::process::{Command, Output};

fn ftvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
        .args(args)
        .output()
        .expect("run ftvm")
}

fn no_device_here() -> bool {
    std::fs::read_dir(ftvm_rdma::sysfs::SYSFS_ROOT).map_or(true, |mut d| d.next().is_none())
}

fn assert_no_device(out: &Output, what: &str) {
    let stderr = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded without a device");
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert!(
        stderr.contains("no RDMA device: /sys/class/infiniband is empty"),
        "{what}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
}

#[test]
fn without_a_device_every_rdma_entry_point_says_so() {
    if !no_device_here() {
        println!(
            "SKIP without_a_device_every_rdma_entry_point_says_so: this host has an RDMA device"
        );
        return;
    }
    assert_no_device(&ftvm(&["rdma", "probe"]), "ftvm rdma probe");
    assert_no_device(
        &ftvm(&[
            "channel",
            "sink",
            "--transport",
            "rdma",
            "--listen",
            "127.0.0.1:0",
        ]),
        "ftvm channel sink --transport rdma",
    );
    assert_no_device(
        &ftvm(&[
            "channel",
            "source",
            "--transport",
            "rdma",
            "--connect",
            "127.0.0.1:9",
        ]),
        "ftvm channel source --transport rdma",
    );
    assert_no_device(
        &ftvm(&["bench", "channel", "--transport", "rdma", "--entries", "10"]),
        "ftvm bench channel --transport rdma",
    );
    assert_no_device(
        &ftvm(&[
            "--profile",
            "rdma-rack",
            "backup",
            "--guest",
            "kv",
            "--listen",
            "127.0.0.1:0",
        ]),
        "ftvm --profile rdma-rack backup",
    );
}

#[test]
fn probe_lists_a_device_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("infiniband");
    let port = root.join("rxe0/ports/1");
    for d in ["gids", "gid_attrs/types", "gid_attrs/ndevs"] {
        std::fs::create_dir_all(port.join(d)).unwrap();
    }
    let w = |p: &Path, t: &str| std::fs::write(p, format!("{t}\n")).unwrap();
    w(&port.join("state"), "4: ACTIVE");
    w(&port.join("phys_state"), "5: LinkUp");
    w(&port.join("link_layer"), "Ethernet");
    w(&port.join("rate"), "10 Gb/sec (1X QDR)");
    w(&port.join("lid"), "0x0");
    w(
        &port.join("gids/0"),
        "0000:0000:0000:0000:0000:ffff:c0a8:0102",
    );
    w(&port.join("gid_attrs/types/0"), "RoCE v2");
    w(&port.join("gid_attrs/ndevs/0"), "eth0");
    let out = ftvm(&["rdma", "probe", "--sysfs", root.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    assert!(stdout.contains("rxe0"), "{stdout}");
    assert!(stdout.contains("gid   0  ::ffff:192.168.1.2"), "{stdout}");
    assert!(stdout.contains("RoCE v2   <- routable"), "{stdout}");
    assert!(
        stdout.contains("settings select: rxe0 port 1 gid 0"),
        "{stdout}"
    );
    // A port that is down: listed, then the selection error, non-zero.
    w(&port.join("state"), "1: DOWN");
    let out = ftvm(&["rdma", "probe", "--sysfs", root.to_str().unwrap()]);
    let stderr = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no RDMA port is ACTIVE: rxe0/1 1: DOWN"),
        "{stderr}"
    );
}

#[test]
fn bench_runs_the_same_scenarios_on_the_simulated_nic() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let out = ftvm(&[
        "--profile",
        "latency",
        "--set",
        "rdma.nic=simulated",
        "bench",
        "channel",
        "--transport",
        "rdma",
        "--entries",
        "200",
        "--duration",
        "0.2",
        "--stream-mib",
        "1",
        "--rounds",
        "1",
        "--report",
        report.to_str().unwrap(),
    ]);
    let stderr = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let rows = json["results"].as_array().unwrap();
    for sc in [
        "floor",
        "open-floor",
        "output-rule",
        "mixed",
        "stream-floor",
        "throughput",
        "idle-cpu",
    ] {
        assert!(
            rows.iter()
                .any(|r| r["scenario"] == sc && r["transport"] == "rdma-sim"),
            "no {sc} row for rdma-sim: {json}"
        );
    }
}

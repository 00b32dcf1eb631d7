//! The rack deployment of failover, in network namespaces this test makes
//! itself: a client, host-a (primary) and host-b (backup) on one bridge (in a
//! fourth, "switch" namespace). The service lives on a floating IP that the
//! primary holds; when host-a fails, the backup adds the address, announces
//! it with gratuitous ARP, and the client — which knows only that one
//! address — is served on without losing an acknowledged write.

use std::process::{Child, Command, Stdio};

use ftvm_testkit::netns::{self, Rack};
use ftvm_testkit::wait_until;
use std::time::Duration;

const NET: &str = "10.77.0";
const FLOATING: &str = "10.77.0.100";

fn ftvm() -> &'static str {
    env!("CARGO_BIN_EXE_ftvm")
}

fn ok(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(rack: &Rack, host: &str, addr: &str) -> serde_json::Value {
    let out = rack.exec(host, &[ftvm(), "status", addr]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn probe() -> Result<(), String> {
    ftvm_testkit::command_on_path("arping")
        .map_err(|e| format!("{e} (apt install iputils-arping)"))?;
    netns::probe()
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    ftvm_testkit::checked_stderr(&out.stderr)
}

#[test]
fn the_floating_service_ip_moves_to_the_backup_and_the_client_is_served_on() {
    let test = "the_floating_service_ip_moves_to_the_backup_and_the_client_is_served_on";
    if !ftvm_vmm::kvm_or_skip(test) || !ftvm_testkit::require_or_skip(test, "netns", probe) {
        return;
    }
    let net = Rack::make(NET, &[("c", 10), ("a", 1), ("b", 2)]).expect("namespaces");
    let dir = std::env::temp_dir().join(format!("ftvm-floating-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // One arbiter directory both hosts see (as a shared NFS directory would be).
    let arbiter = format!("file:{}", dir.join("arbiter").display());
    let service = format!("{FLOATING}:7000");
    let cidr = format!("{FLOATING}/24");
    let (a_status, b_status) = (format!("{NET}.1:7300"), format!("{NET}.2:7300"));
    let listen = format!("{NET}.2:7100");
    let backup = net
        .exec(
            "b",
            &[
                ftvm(),
                "--set",
                "channel.peer_timeout_ms=300",
                "backup",
                "--guest",
                "kv",
                "--listen",
                &listen,
                "--service",
                &service,
                "--service-ip",
                &cidr,
                "--service-dev",
                "b0",
                "--arbiter",
                &arbiter,
                "--vm",
                "kv-floating",
                "--status",
                &b_status,
                "--wait-secs",
                "20",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the backup listening", || {
        status(&net, "b", &b_status)["phase"] == "waiting"
    });
    let mut primary = net
        .exec(
            "a",
            &[
                ftvm(),
                "--set",
                "channel.peer_timeout_ms=300",
                "primary",
                "--guest",
                "kv",
                "--service",
                &service,
                "--service-ip",
                &cidr,
                "--service-dev",
                "a0",
                "--backup",
                &listen,
                "--arbiter",
                &arbiter,
                "--vm",
                "kv-floating",
                "--status",
                &a_status,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), "the pair protected", || {
        status(&net, "a", &a_status)["protection"] == "protected"
    });
    assert!(net.has_addr("a", FLOATING) && !net.has_addr("b", FLOATING));
    // The client knows one address only.
    let load = net
        .exec(
            "c",
            &[
                ftvm(),
                "client",
                "--server",
                &service,
                "--timeout-ms",
                "100",
                "--attempts",
                "200",
                "load",
                "--clients",
                "4",
                "--ops",
                "3000",
                "--append-only",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // Host-a fails: its process dies and its link goes down.
    primary.kill().unwrap();
    let _ = primary.wait();
    net.cut("a").unwrap();
    wait_until(Duration::from_secs(10), "the backup live", || {
        status(&net, "b", &b_status)["phase"] == "live"
    });
    assert!(
        net.has_addr("b", FLOATING),
        "the backup took the floating address"
    );
    let out = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    assert!(
        text.contains("0 acknowledged writes lost, 0 applied twice"),
        "{text}"
    );
    assert!(text.contains(&format!("replies from {service}")), "{text}");
    // Stopping the live backup gives the address back.
    ok(&["kill", "-INT", &backup.id().to_string()]);
    let err = stderr_of(backup);
    assert!(err.contains("LIVE at generation 2"), "{err}");
    assert!(
        !net.has_addr("b", FLOATING),
        "a stopped side removes the address: {err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

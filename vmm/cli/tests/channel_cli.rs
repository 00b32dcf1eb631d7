//! The channel tools as users run them: separate `ftvm` processes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ftvm_wire::control::{Control, Hello, Role};
use ftvm_wire::{Header, Kind, VERSION, encode, frame_len};

fn ftvm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ftvm"))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ftvm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_sink(transport: &str, addr: &str, connections: u32, capture: Option<&Path>) -> Child {
    let mut c = ftvm();
    c.args([
        "channel",
        "sink",
        "--transport",
        transport,
        "--listen",
        addr,
    ])
    .args(["--connections", &connections.to_string()])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = capture {
        c.arg("--capture").arg(p);
    }
    let child = c.spawn().expect("spawn sink");
    // The listener is up once the sink can be reached; the source retries its connect anyway.
    std::thread::sleep(Duration::from_millis(300));
    child
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "process did not finish in {limit:?}; stderr: {}",
                ftvm_testkit::checked_stderr(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn source_to_sink(transport: &str, addr: &str) {
    let src_cap = tmp(&format!("src-{transport}.log"));
    let sink_cap = tmp(&format!("sink-{transport}.log"));
    let sink = spawn_sink(transport, addr, 1, Some(&sink_cap));
    let out = ftvm()
        .args([
            "channel",
            "source",
            "--transport",
            transport,
            "--connect",
            addr,
        ])
        .args([
            "--entries",
            "50000",
            "--payload",
            "100",
            "--output-every",
            "10",
        ])
        .arg("--capture")
        .arg(&src_cap)
        .output()
        .expect("run source");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "source failed: {}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    assert!(stdout.contains("50000 entries (5000 outputs)"), "{stdout}");
    assert!(
        stdout.contains("output-rule latency") && stdout.contains("p99"),
        "{stdout}"
    );
    let sink = wait_output(sink, Duration::from_secs(20));
    let serr = ftvm_testkit::checked_stderr(&sink.stderr);
    assert!(sink.status.success(), "{serr}");
    assert!(
        serr.contains("50000 entries (5000 outputs)") && serr.contains("ended with goodbye"),
        "{serr}"
    );
    // The frames as shipped and as received are the same bytes.
    let a = std::fs::read(&src_cap).unwrap();
    let b = std::fs::read(&sink_cap).unwrap();
    assert_eq!(a.len(), 16 + 50000 * frame_len(100));
    assert!(a == b, "source and sink captures differ");
    // And `log inspect` reads the capture back, entry for entry.
    let out = ftvm()
        .args(["log", "inspect", "--json"])
        .arg(&src_cap)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 50001);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["payload_len"], 100);
    let tenth: serde_json::Value = serde_json::from_str(lines[9]).unwrap();
    assert_eq!(tenth["kind"], "opaque-output");
    let summary: serde_json::Value = serde_json::from_str(lines[50000]).unwrap();
    assert_eq!(summary["summary"]["entries"], 50000);
    assert_eq!(summary["summary"]["outputs"], 5000);
    assert_eq!(summary["summary"]["complete"], true);
}

#[test]
fn tcp_source_to_sink_between_processes() {
    source_to_sink("tcp", &format!("127.0.0.1:{}", free_port()));
}

#[test]
fn shm_source_to_sink_between_processes() {
    source_to_sink("shm", &format!("cli-test-{}", std::process::id()));
}

/// A misbehaving peer: the sink reports the reason and seq, drops the
/// connection, and serves the next one.
#[test]
fn sink_survives_a_corrupt_connection() {
    let addr = format!("127.0.0.1:{}", free_port());
    let sink = spawn_sink("tcp", &addr, 2, None);
    let mut sock = TcpStream::connect(&addr).unwrap();
    let hello = Control::Hello(Hello {
        role: Role::Primary,
        version: VERSION,
        settings_fingerprint: ftvm_tuning::Settings::default().fingerprint(),
        next_seq: 1,
        settings: ftvm_tuning::Settings::default().fingerprint_text(),
        ..Hello::default()
    });
    sock.write_all(&hello.to_frame().unwrap()).unwrap();
    let mut f = vec![0; frame_len(4)];
    encode(&mut f, &Header::new(Kind::Opaque, 1, 0, 4), b"good").unwrap();
    sock.write_all(&f).unwrap();
    encode(&mut f, &Header::new(Kind::Opaque, 2, 0, 4), b"evil").unwrap();
    f[41] ^= 1;
    sock.write_all(&f).unwrap();
    // The sink closes on us.
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
    let out = ftvm()
        .args([
            "channel",
            "source",
            "--transport",
            "tcp",
            "--connect",
            &addr,
            "--entries",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        ftvm_testkit::checked_stderr(&out.stderr)
    );
    let sink = wait_output(sink, Duration::from_secs(20));
    let serr = ftvm_testkit::checked_stderr(&sink.stderr);
    assert!(
        serr.contains("CRC mismatch") && serr.contains("expected seq 2"),
        "{serr}"
    );
    assert!(
        serr.contains("1 entries"),
        "the good entry before the bad one counts: {serr}"
    );
    assert!(
        serr.contains("1000 entries") && serr.contains("ended with goodbye"),
        "{serr}"
    );
}

#[test]
fn log_inspect_names_offset_seq_and_reason_of_a_bad_frame() {
    let path = tmp("bad.log");
    let mut data = ftvm_wire::logfile::file_header().to_vec();
    let mut f = vec![0; frame_len(8)];
    for seq in 1..=3 {
        encode(
            &mut f,
            &Header::new(Kind::Opaque, seq, seq, 8),
            &seq.to_le_bytes(),
        )
        .unwrap();
        data.extend_from_slice(&f);
    }
    let third = 16 + 2 * frame_len(8);
    data[third + 44] ^= 0x80;
    std::fs::write(&path, &data).unwrap();
    let out = ftvm().args(["log", "inspect"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(
        err.contains(&format!("offset {third}"))
            && err.contains("header claims seq 3, unverified")
            && err.contains("CRC mismatch"),
        "{err}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("  exit "))
            .count(),
        2
    );

    std::fs::write(&path, &data[..third + 20]).unwrap();
    let out = ftvm().args(["log", "inspect"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(
        err.contains("truncated") && err.contains(&format!("offset {third}")),
        "{err}"
    );

    // Streamed, not read whole: an endless device is refused at once.
    let out = ftvm()
        .args(["log", "inspect", "/dev/zero"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(
        err.contains("not an ftvm log file") && err.contains("offset 0"),
        "{err}"
    );

    // A VMM log that ends without its final checkpoint says so.
    let mut data = ftvm_wire::logfile::file_header().to_vec();
    for seq in 1..=2 {
        encode(
            &mut f,
            &Header::new(Kind::PortIn, seq, seq, 8),
            &seq.to_le_bytes(),
        )
        .unwrap();
        data.extend_from_slice(&f);
    }
    std::fs::write(&path, &data).unwrap();
    let out = ftvm().args(["log", "inspect"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ends without the final checkpoint after seq 2"),
        "{text}"
    );
}

#[test]
fn wrong_settings_name_key_value_and_range() {
    let out = ftvm()
        .args([
            "--set",
            "channel.batch_bytes=10",
            "channel",
            "sink",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = ftvm_testkit::checked_stderr(&out.stderr);
    assert!(
        err.contains("channel.batch_bytes") && err.contains("10") && err.contains("64..="),
        "{err}"
    );
    let out = ftvm().args(["--profile", "nope", "demo"]).output().unwrap();
    assert!(!out.status.success());
    assert!(ftvm_testkit::checked_stderr(&out.stderr).contains("unknown profile"));
}

/// The errors the issue found said twice (`invalid socket address: invalid
/// socket address`, `Connection refused` three times, `Address already in use`
/// twice) are each said once, and name what was being done.
#[test]
fn common_errors_say_each_cause_once() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    // Bad arguments are named before anything connects (`refused` would
    // say "Connection refused" otherwise).
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "channel",
                "source",
                "--connect",
                &refused,
                "--payload",
                "99999999",
            ],
            "--payload 99999999: larger than an entry's payload may be",
        ),
        (
            &[
                "channel",
                "source",
                "--connect",
                &refused,
                "--capture",
                "/nonexistent/x.log",
            ],
            "--capture /nonexistent/x.log: creating the file",
        ),
        (
            &[
                "channel",
                "sink",
                "--listen",
                "127.0.0.1:0",
                "--capture",
                "/nonexistent/x.log",
            ],
            "--capture /nonexistent/x.log: creating the file",
        ),
        (
            &[
                "primary",
                "--guest",
                "kv",
                "--backup",
                &refused,
                "--status",
                "127.0.0.1:notaport",
            ],
            "--status 127.0.0.1:notaport: serving status",
        ),
        (
            &["channel", "source", "--connect", "nonsense"],
            "invalid socket address",
        ),
        (
            &["channel", "source", "--connect", &refused],
            "Connection refused",
        ),
        (
            &["channel", "sink", "--listen", &busy],
            "Address already in use",
        ),
    ];
    for (args, cause) in cases {
        let out = ftvm().args(args).output().unwrap();
        let err = ftvm_testkit::checked_stderr(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
    }
}

//! An arbiter that cannot answer gives an error, never a win: unreachable
//! etcd, an unusable directory, corrupt records, a server that is not etcd;
//! and `test_and_set_with_retry` waits out an etcd restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ftvm_arbiter::{ArbiterError, Decision, Retry, open, test_and_set_with_retry};
use ftvm_testkit::{command_on_path, etcd::Etcd, require_or_skip};

/// A loopback port nobody listens on (bound, then released).
fn dead_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn no_retry() -> Retry {
    Retry {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
    }
}

#[test]
fn etcd_with_nobody_listening_is_unreachable_never_a_win() {
    let (p1, p2) = (dead_port(), dead_port());
    let a = open(&format!("etcd:127.0.0.1:{p1},http://127.0.0.1:{p2}")).unwrap();
    let t0 = Instant::now();
    let e = a.test_and_set("vm", 1, "me").unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(e.is_unreachable(), "{e:?}");
    let msg = e.to_string();
    for p in [p1, p2] {
        assert!(msg.contains(&format!("127.0.0.1:{p}/v3/kv/txn")), "{msg}");
    }
    assert!(a.holder("vm", 1).unwrap_err().is_unreachable());
    assert!(a.latest("vm").unwrap_err().is_unreachable());
    assert!(a.register_spare("vm", "h:1").unwrap_err().is_unreachable());
    assert!(a.spares("vm").unwrap_err().is_unreachable());

    // Retrying gives up when told to, with the last error, after retrying.
    let mut retries = Vec::new();
    let t0 = Instant::now();
    let give_up = || t0.elapsed() > Duration::from_millis(200);
    let e = test_and_set_with_retry(
        a.as_ref(),
        "vm",
        1,
        "me",
        &no_retry(),
        &give_up,
        &mut |e, d| retries.push((e.clone(), d)),
    )
    .unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    assert!(retries.len() >= 2, "{retries:?}");
    assert!(
        retries
            .iter()
            .all(|(e, d)| e.is_unreachable() && *d <= Duration::from_millis(5))
    );
}

#[test]
fn file_dir_that_cannot_be_created_is_an_error_never_a_win() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let under = file.join("arbiter");
    let a = open(&format!("file:{}", under.display())).unwrap();
    let e = a.test_and_set("vm", 1, "me").unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&under.display().to_string()) && msg.contains("Not a directory"),
        "{msg}"
    );
    for e in [
        a.holder("vm", 1).map(|_| ()).unwrap_err(),
        a.latest("vm").map(|_| ()).unwrap_err(),
        a.register_spare("vm", "h:1").unwrap_err(),
        a.spares("vm").map(|_| ()).unwrap_err(),
    ] {
        assert!(e.is_unreachable(), "{e:?}");
    }
    // A VM directory that is a file is no better.
    let d = dir.path().join("arb");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("vm"), "").unwrap();
    let a = open(&format!("file:{}", d.display())).unwrap();
    assert!(a.test_and_set("vm", 1, "me").is_err());
    assert!(a.latest("vm").is_err());
}

/// `chattr +i` on a directory, undone on drop (an immutable directory
/// cannot be removed, even by root).
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &std::path::Path) -> Result<Immutable, String> {
        let out = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .output()
            .map_err(|e| format!("chattr not usable: {e}"))?;
        if out.status.success() {
            Ok(Immutable(dir.to_owned()))
        } else {
            Err(format!(
                "chattr +i {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn file_read_only_dir_is_denied_never_a_win() {
    let test = "file_read_only_dir_is_denied_never_a_win";
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root (CAP_DAC_OVERRIDE) writes into a read-only directory anyway; an
    // immutable one (EPERM) refuses root too, where the filesystem has the flag.
    let mut _immutable = None;
    let read_only = || {
        if std::fs::create_dir(ro.join("probe")).is_err() {
            return Ok(());
        }
        std::fs::remove_dir(ro.join("probe")).map_err(|e| e.to_string())?;
        _immutable = Some(
            Immutable::set(&ro)
                .map_err(|e| format!("running as root, and no immutable directory either: {e}"))?,
        );
        Ok(())
    };
    if !require_or_skip(test, "read-only-dir", read_only) {
        return;
    }
    let a = open(&format!("file:{}", ro.display())).unwrap();
    let e = a.test_and_set("vm", 1, "me").unwrap_err();
    assert!(matches!(e, ArbiterError::Denied { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&ro.join("vm").display().to_string()),
        "{e}"
    );
    // Not worth retrying.
    let r = test_and_set_with_retry(
        a.as_ref(),
        "vm",
        1,
        "me",
        &no_retry(),
        &|| false,
        &mut |e, _| panic!("retried {e}"),
    );
    assert!(matches!(r, Err(ArbiterError::Denied { .. })), "{r:?}");
}

#[test]
fn file_corrupt_or_half_written_records_are_errors_and_temp_files_decide_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&format!("file:{}", dir.path().display())).unwrap();
    let vm_dir = dir.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    // What a crash before link() leaves: only a temporary file.
    std::fs::write(vm_dir.join(".tmp-gen-5-1-0-0"), "crashed\n").unwrap();
    assert_eq!(a.latest("vm").unwrap(), None);
    assert_eq!(a.holder("vm", 5).unwrap(), None);
    assert_eq!(a.test_and_set("vm", 5, "me").unwrap(), Decision::Won);

    // Empty, no final newline (a half-written line), two lines, not UTF-8.
    let bad: [&[u8]; 4] = [b"", b"half", b"two\nlines\n", b"bad \xff\n"];
    for (g, contents) in (1..).zip(bad) {
        let path = vm_dir.join(format!("gen-{g}"));
        std::fs::write(&path, contents).unwrap();
        let e = a.test_and_set("vm", g, "me").unwrap_err();
        assert!(matches!(e, ArbiterError::Corrupt { .. }), "gen {g}: {e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(a.holder("vm", g).is_err());
        // The retry helper does not retry corruption.
        let r = test_and_set_with_retry(
            a.as_ref(),
            "vm",
            g,
            "me",
            &no_retry(),
            &|| false,
            &mut |e, _| panic!("retried {e}"),
        );
        assert!(matches!(r, Err(ArbiterError::Corrupt { .. })), "{r:?}");
    }
    // A name that is not a canonical generation makes `latest` refuse to guess.
    std::fs::write(vm_dir.join("gen-007"), "x\n").unwrap();
    let e = a.latest("vm").unwrap_err();
    assert!(e.to_string().contains("gen-007"), "{e}");
}

#[test]
fn bad_names_are_not_retried() {
    let a = open(&format!("etcd:127.0.0.1:{}", dead_port())).unwrap();
    let r = test_and_set_with_retry(
        a.as_ref(),
        "../x",
        1,
        "me",
        &Retry::default(),
        &|| false,
        &mut |e, _| panic!("retried {e}"),
    );
    assert!(
        matches!(
            r,
            Err(ArbiterError::BadName {
                what: "VM name",
                ..
            })
        ),
        "{r:?}"
    );
}

/// A one-connection-at-a-time HTTP server answering every request with
/// `status` and `body`: a port that is not etcd (or an etcd refusing us).
fn not_etcd(status: &'static str, body: &'static str) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut req = vec![0; len];
            let _ = r.read_exact(&mut req);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_server_that_is_not_etcd_is_an_error_naming_status_and_body() {
    let kind = |e: &ArbiterError| match e {
        ArbiterError::Protocol { .. } => "protocol",
        ArbiterError::Denied { .. } => "denied",
        ArbiterError::Unreachable { .. } => "unreachable",
        _ => "other",
    };
    let cases = [
        (
            "404 Not Found",
            "404 page not found",
            "protocol",
            "HTTP 404: 404 page not found",
        ),
        (
            "200 OK",
            "<html>hello</html>",
            "protocol",
            "not the JSON expected",
        ),
        (
            "403 Forbidden",
            r#"{"error":"etcdserver: permission denied","code":7}"#,
            "denied",
            "permission denied",
        ),
        (
            "503 Service Unavailable",
            r#"{"error":"etcdserver: no leader","code":14}"#,
            "unreachable",
            "no leader",
        ),
    ];
    for (status, body, want, says) in cases {
        let port = not_etcd(status, body);
        let a = open(&format!("etcd:127.0.0.1:{port}")).unwrap();
        let e = a.test_and_set("vm", 1, "me").unwrap_err();
        let msg = e.to_string();
        assert!(kind(&e) == want && msg.contains(says), "{status}: {msg}");
        assert!(
            msg.contains(&format!("http://127.0.0.1:{port}/v3/kv/txn")),
            "{msg}"
        );
    }
    // One bad endpoint among good ones is passed over.
    let bad = not_etcd("404 Not Found", "nope");
    let good = not_etcd(
        "200 OK",
        r#"{"succeeded":true,"responses":[{"response_put":{}}]}"#,
    );
    let a = open(&format!("etcd:127.0.0.1:{bad},127.0.0.1:{good}")).unwrap();
    assert_eq!(a.test_and_set("vm", 1, "me").unwrap(), Decision::Won);
}

/// Writes `value` at `key` straight through the gateway (a record this crate never writes).
fn etcd_put(etcd: &Etcd, key: &str, value: &str) {
    let body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
    let mut r = ureq::post(format!("{}/v3/kv/put", etcd.endpoint()))
        .send(body.to_string())
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
}

#[test]
fn etcd_corrupt_records_are_errors() {
    let test = "etcd_corrupt_records_are_errors";
    if !require_or_skip(test, "etcd", || command_on_path("etcd")) {
        return;
    }
    let etcd = Etcd::start().unwrap();
    let a = open(&etcd.url()).unwrap();
    etcd_put(&etcd, "/ftvm/vm/gen/00000000000000000001", "");
    etcd_put(&etcd, "/ftvm/vm/gen/00000000000000000002", "two\nlines");
    for g in [1, 2] {
        let e = a.test_and_set("vm", g, "me").unwrap_err();
        assert!(matches!(e, ArbiterError::Corrupt { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&format!("/ftvm/vm/gen/{g:020}")),
            "{e}"
        );
        assert!(matches!(
            a.holder("vm", g),
            Err(ArbiterError::Corrupt { .. })
        ));
    }
    etcd_put(&etcd, "/ftvm/vm/gen/7", "short key");
    let e = a.latest("vm").unwrap_err();
    assert!(e.to_string().contains("/ftvm/vm/gen/7"), "{e}");
}

#[test]
fn etcd_stopped_mid_run_is_unreachable_and_retry_wins_after_restart() {
    let test = "etcd_stopped_mid_run_is_unreachable_and_retry_wins_after_restart";
    if !require_or_skip(test, "etcd", || command_on_path("etcd")) {
        return;
    }
    let mut etcd = Etcd::start().unwrap();
    let a = open(&etcd.url()).unwrap();
    for g in 1..=3 {
        assert_eq!(
            a.test_and_set("vm", g, &format!("p{g}")).unwrap(),
            Decision::Won
        );
    }
    a.register_spare("vm", "spare:1").unwrap();

    etcd.stop();
    let e = a.test_and_set("vm", 4, "survivor").unwrap_err();
    assert!(e.is_unreachable(), "{e:?}");
    assert!(a.holder("vm", 1).unwrap_err().is_unreachable());

    let retries = AtomicUsize::new(0);
    let won = std::thread::scope(|s| {
        let claim = s.spawn(|| {
            let t0 = Instant::now();
            let retry = Retry {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(200),
            };
            test_and_set_with_retry(
                a.as_ref(),
                "vm",
                4,
                "survivor",
                &retry,
                &|| t0.elapsed() > Duration::from_secs(60),
                &mut |e, _| {
                    assert!(e.is_unreachable(), "{e:?}");
                    retries.fetch_add(1, Ordering::Relaxed);
                },
            )
        });
        // The claim is waiting; bring etcd back on the same data dir and port.
        while retries.load(Ordering::Relaxed) < 3 && !claim.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
        etcd.restart().unwrap();
        claim.join().unwrap()
    });
    assert_eq!(won.unwrap(), Decision::Won);
    assert!(retries.load(Ordering::Relaxed) >= 3);
    // Decisions made before the stop are still there, and still decided.
    for g in 1..=3 {
        assert_eq!(a.holder("vm", g).unwrap(), Some(format!("p{g}")));
        assert_eq!(
            a.test_and_set("vm", g, "survivor").unwrap(),
            Decision::Lost {
                holder: format!("p{g}")
            }
        );
    }
    assert_eq!(a.latest("vm").unwrap(), Some((4, "survivor".into())));
    assert_eq!(a.spares("vm").unwrap(), ["spare:1"]);
}

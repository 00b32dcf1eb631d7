//! ftvm-testkit: the one helper every test uses when it needs hardware or a
//! system service that a machine may lack (KVM, io_uring, etcd, network
//! namespaces, `dig`, ...).
//!
//! Contract: [`require_or_skip`] runs the probe; when it fails the test prints
//! `SKIP <test>: <reason>` and should return early — unless the comma-separated
//! `FTVM_REQUIRE` environment variable names the resource, in which case the
//! test fails instead (CI sets it for what its machines are known to have, so
//! a skip there is a defect, not a pass).
//!
//! ```
//! use ftvm_testkit::{command_on_path, require_or_skip};
//!
//! if !require_or_skip("my_test", "sh", || command_on_path("sh")) {
//!     return; // printed: SKIP my_test: ...
//! }
//! ```
//!
//! Services: [`etcd::Etcd`] runs a real etcd for a test; [`netns::Rack`] makes
//! hosts in network namespaces. [`alloc::Counting`] counts allocations for
//! the "no allocation per entry" tests.

pub mod alloc;

pub mod etcd;

pub mod netns;

pub mod openmetrics;

pub mod proxy;

use std::path::PathBuf;

/// The resources `FTVM_REQUIRE` lists (trimmed, empty entries dropped).
pub fn required_resources() -> Vec<String> {
    std::env::var("FTVM_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// True when `FTVM_REQUIRE` names `resource`.
pub fn is_required(resource: &str) -> bool {
    required_resources().iter().any(|r| r == resource)
}

/// Runs `probe` for `resource`. `Ok`: returns true (run the test). `Err(why)`:
/// prints `SKIP <test>: <why>` and returns false — or panics naming the test,
/// the resource and why, when `FTVM_REQUIRE` names `resource`.
pub fn require_or_skip(
    test: &str,
    resource: &str,
    probe: impl FnOnce() -> Result<(), String>,
) -> bool {
    match probe() {
        Ok(()) => true,
        Err(why) => {
            assert!(
                !is_required(resource),
                "{test}: FTVM_REQUIRE names {resource}, but it is not usable here: {why}"
            );
            println!("SKIP {test}: {why}");
            false
        }
    }
}

/// Polls `f` every 20 ms until it holds; panics with `not <what> within
/// <limit>` when it does not in time.
pub fn wait_until(limit: std::time::Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "not {what} within {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The full path of `cmd` if an executable of that name is on `PATH`;
/// `Err` says `<cmd> not installed (not on PATH)`.
pub fn command_on_path(cmd: &str) -> Result<(), String> {
    find_command(cmd)
        .map(|_| ())
        .ok_or_else(|| format!("{cmd} not installed (not on PATH)"))
}

/// Where `cmd` is on `PATH`, if anywhere (also the usual sbin directories,
/// which a non-login root shell may leave out).
pub fn find_command(cmd: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_probe_skips_and_a_good_one_runs() {
        // No test here sets FTVM_REQUIRE to this made-up resource.
        assert!(!require_or_skip("t", "no-such-resource-xyz", || Err(
            "absent".into()
        )));
        assert!(require_or_skip("t", "no-such-resource-xyz", || Ok(())));
        assert!(command_on_path("sh").is_ok());
        let e = command_on_path("no-such-command-xyz").unwrap_err();
        assert_eq!(e, "no-such-command-xyz not installed (not on PATH)");
    }
}

/// Checks that no line of a program's output says one cause twice: an error
/// printed as `outer: inner: ...` must not repeat a segment (`invalid socket
/// address: invalid socket address`), which happens when an error's `Display`
/// embeds its `source()` and a printer walks the chain as well. `Err` names
/// the line and the repeated segment.
pub fn causes_said_once(output: &str) -> Result<(), String> {
    for line in output.lines() {
        let segments: Vec<&str> = line
            .split(": ")
            .map(str::trim)
            .filter(|s| s.len() >= 4)
            .collect();
        for (i, s) in segments.iter().enumerate() {
            if segments[i + 1..].contains(s) {
                return Err(format!("cause {s:?} said twice in {line:?}"));
            }
        }
    }
    Ok(())
}

/// Panics (naming `what`) if [`causes_said_once`] fails for `output`; returns
/// `output` for chaining. CLI tests pass every stderr they read through it.
pub fn assert_causes_said_once<'a>(what: &str, output: &'a str) -> &'a str {
    if let Err(e) = causes_said_once(output) {
        panic!("{what}: {e}\n--- output ---\n{output}");
    }
    output
}

#[cfg(test)]
mod said_once_tests {
    use super::causes_said_once;

    #[test]
    fn a_repeated_cause_is_found_and_a_chain_is_not() {
        let bad = "ftvm: error: invalid socket address: invalid socket address";
        let e = causes_said_once(bad).unwrap_err();
        assert!(e.contains("\"invalid socket address\" said twice"), "{e}");
        let bad = "ftvm: error: connecting to 127.0.0.1:1: Connection refused (os error 111): \
                   Connection refused (os error 111)";
        assert!(causes_said_once(bad).is_err());
        let ok = "ftvm: error: connecting the channel to 127.0.0.1:7100: \
                  Connection refused (os error 111)\nSKIP x: etcd not installed";
        causes_said_once(ok).unwrap();
    }
}

/// A program's stderr as text, after [`assert_causes_said_once`]: CLI tests
/// read every stderr through this, so any error the suite provokes is
/// checked for a cause said twice.
pub fn checked_stderr(stderr: impl AsRef<[u8]>) -> String {
    let text = String::from_utf8_lossy(stderr.as_ref()).into_owned();
    assert_causes_said_once("stderr", &text);
    text
}

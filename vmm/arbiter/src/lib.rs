//! ftvm-arbiter: the generation test-and-set that makes split brain impossible.
//!
//! Contract: for each VM name and generation `N >= 1`, exactly one candidate
//! ever wins; once decided, a generation never changes; the winner asking
//! again gets [`Decision::Won`] again (so a request whose reply was lost
//! cannot turn a win into a loss); an arbiter that cannot be reached, refuses
//! us, or holds a record it cannot read returns an [`ArbiterError`], never a
//! win. Only a side that won the current generation may go live or release
//! held outputs. Full description: `docs/arbiter.md`.
//!
//! # The main flow
//!
//! 1. [`open`] an arbiter URL (`file:DIR`, the embedded default
//!    [`default_url`], or `etcd:http://HOST:PORT,...`); no I/O happens yet;
//! 2. a primary starting a pair reads [`Arbiter::latest`] and claims
//!    `latest + 1` (or 1) with [`Arbiter::test_and_set`]; the pair runs at
//!    that generation `N`;
//! 3. when either side loses the other, each survivor calls
//!    [`test_and_set_with_retry`] for `N + 1`, which waits out an
//!    unreachable arbiter with backoff; `Won` goes live (or unprotected),
//!    `Lost { holder }` stops, naming the winner;
//! 4. a new pair formed later races for `N + 2`; nothing is ever reset.
//!
//! ```
//! use ftvm_arbiter::{Decision, open};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let a = open(&format!("file:{}", dir.path().display())).unwrap();
//! let next = a.latest("kv").unwrap().map_or(1, |(n, _)| n + 1);
//! assert_eq!(a.test_and_set("kv", next, "host-a:7100").unwrap(), Decision::Won);
//! assert_eq!(
//!     a.test_and_set("kv", next, "host-b:7100").unwrap(),
//!     Decision::Lost { holder: "host-a:7100".into() }
//! );
//! ```

mod error;
pub mod etcd;
pub mod file;
pub mod names;
mod retry;

pub use error::{ALLOWED_URLS, ArbiterError, OpenArbiterError};
pub use etcd::EtcdArbiter;
pub use file::FileArbiter;
pub use retry::{Retry, test_and_set_with_retry};

/// The outcome of a test-and-set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This candidate holds the generation (now, or already from an earlier call).
    Won,
    /// Another candidate holds it.
    Lost {
        /// The winner's candidate string.
        holder: String,
    },
}

/// A place where generations are decided. All methods check their
/// arguments first ([`ArbiterError::BadName`]: VM names are 1..=64 of
/// `[A-Za-z0-9._-]` not starting with `.`; generations >= 1; candidates
/// 1..=256 bytes without a newline; spare addresses 1..=80 bytes of
/// printable ASCII without spaces).
pub trait Arbiter: Send + Sync + std::fmt::Debug {
    /// Canonical URL, e.g. "file:/run/user/0/ftvm-arbiter" or "etcd:http://127.0.0.1:2379".
    fn url(&self) -> String;

    /// Atomically claims `generation` of VM `vm` for `candidate`. Exactly one candidate ever
    /// wins a generation; a decided generation never changes. A retry by the winner itself
    /// (same candidate string) returns Won (a request whose reply was lost must not turn a win
    /// into a loss). Unreachable/denied/corrupt is an Err, NEVER a win.
    ///
    /// Candidates must therefore be unique per side (e.g. host, port and
    /// process id): two sides using one string would both "win".
    fn test_and_set(
        &self,
        vm: &str,
        generation: u64,
        candidate: &str,
    ) -> Result<Decision, ArbiterError>;

    /// Holder of `generation`, if decided.
    fn holder(&self, vm: &str, generation: u64) -> Result<Option<String>, ArbiterError>;

    /// Highest decided generation and its holder.
    fn latest(&self, vm: &str) -> Result<Option<(u64, String)>, ArbiterError>;

    /// Spares (for re-protection, later issue): a key per spare under the VM's prefix.
    /// Registering twice is the same as once.
    fn register_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError>;

    /// Removes a spare; removing one that is not registered is not an error.
    fn unregister_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError>;

    /// The registered spares of `vm`, sorted.
    fn spares(&self, vm: &str) -> Result<Vec<String>, ArbiterError>;
}

/// Opens an arbiter: `file:DIR` (also `file:///abs/dir`; a relative DIR is
/// taken from the current directory) or `etcd:http://H:P[,http://H:P...]`
/// (also `etcd:H:P,H:P`). Only the URL is checked here: a directory that
/// cannot be created or an etcd that does not answer shows up as an
/// [`ArbiterError`] on the first call.
pub fn open(url: &str) -> Result<Box<dyn Arbiter>, OpenArbiterError> {
    if let Some(dir) = url.strip_prefix("file:") {
        let dir = match dir.strip_prefix("//") {
            Some(abs) if abs.starts_with('/') => abs,
            Some(_) => {
                return Err(OpenArbiterError::BadFileDir {
                    url: url.to_owned(),
                    problem: "file://HOST/ URLs are not supported (use file:/path or file:///path)"
                        .into(),
                    allowed: ALLOWED_URLS,
                });
            }
            None => dir,
        };
        if dir.is_empty() {
            return Err(OpenArbiterError::BadFileDir {
                url: url.to_owned(),
                problem: "empty directory".into(),
                allowed: ALLOWED_URLS,
            });
        }
        return Ok(Box::new(FileArbiter::new(dir)));
    }
    if let Some(rest) = url.strip_prefix("etcd:") {
        let endpoints = etcd::parse_endpoints(url, rest)?;
        return Ok(Box::new(EtcdArbiter::new(endpoints)));
    }
    Err(OpenArbiterError::UnknownScheme {
        url: url.to_owned(),
        allowed: ALLOWED_URLS,
    })
}

/// The embedded default, per user and per host:
/// `file:$XDG_RUNTIME_DIR/ftvm-arbiter` when `XDG_RUNTIME_DIR` is an
/// absolute path, else `file:/tmp/ftvm-arbiter-<uid>`. Both sides of a pair
/// on two hosts need a shared directory or etcd instead (docs/arbiter.md).
pub fn default_url() -> String {
    match std::env::var("XDG_RUNTIME_DIR") {
        Ok(d) if d.starts_with('/') => format!("file:{}/ftvm-arbiter", d.trim_end_matches('/')),
        _ => format!("file:/tmp/ftvm-arbiter-{}", effective_uid()),
    }
}

/// Our effective uid, read without `unsafe` as the owner of `/proc/self`
/// (which is the effective uid of the process); `unknown` without procfs.
fn effective_uid() -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or_else(|_| "unknown".into(), |m| m.uid().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let a = open("file:/tmp/x/").unwrap();
        assert!(a.url().starts_with("file:/tmp/x"), "{}", a.url());
        assert_eq!(open("file:///var/a").unwrap().url(), "file:/var/a");
        let rel = open("file:rel").unwrap().url();
        assert!(rel.starts_with("file:/") && rel.ends_with("/rel"), "{rel}");
        assert_eq!(
            open("etcd:127.0.0.1:2379,http://h:2").unwrap().url(),
            "etcd:http://127.0.0.1:2379,http://h:2"
        );
        for (bad, says) in [
            ("file:", "empty directory"),
            ("file://host/x", "file://HOST/"),
            ("zk:h:1", "unknown scheme"),
            ("etcd:", "empty endpoint"),
        ] {
            let e = open(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(says), "{e}");
            assert!(e.contains(ALLOWED_URLS), "{e}");
        }
    }

    #[test]
    fn the_default_is_a_per_user_file_arbiter() {
        let d = default_url();
        assert!(
            d.ends_with("/ftvm-arbiter") || d.starts_with("file:/tmp/ftvm-arbiter-"),
            "{d}"
        );
        assert!(open(&d).is_ok());
        assert!(effective_uid().parse::<u32>().is_ok());
    }
}

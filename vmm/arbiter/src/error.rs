//! The arbiter's errors. Each message names the arbiter (its canonical URL)
//! and the offending value; causes are carried as text inside the message
//! and never also returned from `source()`, so a chain prints each cause once.

/// Why an arbiter operation gave no answer. None of these is ever a win: a
/// caller that gets an error must not go live (it waits, retries, or stops).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterError {
    /// The arbiter could not be reached or did not answer in time (etcd:
    /// connection refused, timeout, 5xx such as "no leader"; file: an I/O error
    /// other than a permission error, e.g. the directory cannot be created, an
    /// NFS server that does not answer). Worth retrying: see
    /// [`crate::test_and_set_with_retry`].
    #[error("arbiter {arbiter} unreachable: {detail}")]
    Unreachable {
        /// Canonical URL of the arbiter.
        arbiter: String,
        /// What failed, naming the path or endpoint and the OS or HTTP error.
        detail: String,
    },
    /// The arbiter refused us (file: EACCES/EPERM/EROFS; etcd: HTTP 401/403).
    /// Retrying does not help until someone fixes the permissions.
    #[error("arbiter {arbiter} denied access: {detail}")]
    Denied {
        /// Canonical URL of the arbiter.
        arbiter: String,
        /// What was refused, naming the path or endpoint.
        detail: String,
    },
    /// A generation or spare record that does not parse (a file or key with
    /// contents this crate never writes). Never read as a decision either way.
    #[error("arbiter {arbiter}: corrupt record {key}: {detail}")]
    Corrupt {
        /// Canonical URL of the arbiter.
        arbiter: String,
        /// The file path or etcd key.
        key: String,
        /// What is wrong with it, with an excerpt of the contents.
        detail: String,
    },
    /// The arbiter answered, but not the way its protocol says (etcd: an
    /// unexpected HTTP status such as 404, or a body that is not the JSON
    /// the gateway sends). Not retried: it is a misconfiguration (wrong port,
    /// wrong etcd version) until shown otherwise.
    #[error("arbiter {arbiter}: unexpected answer: {detail}")]
    Protocol {
        /// Canonical URL of the arbiter.
        arbiter: String,
        /// The endpoint, the HTTP status and an excerpt of the body.
        detail: String,
    },
    /// A VM name, generation, candidate or spare address outside what the
    /// arbiter accepts. Nothing was sent anywhere.
    #[error("bad {what} {value}: allowed {allowed}")]
    BadName {
        /// Which argument ("VM name", "generation", "candidate", "spare address").
        what: &'static str,
        /// The offending value, quoted (long values are cut, with their length).
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
}

impl ArbiterError {
    /// True for [`ArbiterError::Unreachable`]: the one error worth retrying.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ArbiterError::Unreachable { .. })
    }
}

/// What [`crate::open`] accepts, quoted in every [`OpenArbiterError`].
pub const ALLOWED_URLS: &str = "\"file:DIR\" (a directory path) or \"etcd:http://HOST:PORT[,http://HOST:PORT...]\" (also \"etcd:HOST:PORT[,HOST:PORT...]\")";

/// Why an arbiter URL was refused by [`crate::open`]. `open` does no I/O, so
/// these are all about the URL's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenArbiterError {
    /// Neither `file:` nor `etcd:`.
    #[error("arbiter URL {url:?}: unknown scheme; allowed: {allowed}")]
    UnknownScheme {
        /// The URL as given.
        url: String,
        /// [`ALLOWED_URLS`].
        allowed: &'static str,
    },
    /// `file:` with an empty directory, a `file://host/` form, or a path that
    /// cannot be made absolute.
    #[error("arbiter URL {url:?}: {problem}; allowed: {allowed}")]
    BadFileDir {
        /// The URL as given.
        url: String,
        /// What is wrong with the directory part.
        problem: String,
        /// [`ALLOWED_URLS`].
        allowed: &'static str,
    },
    /// `etcd:` with an endpoint that is not `http://HOST:PORT` or `HOST:PORT`.
    #[error("arbiter URL {url:?}: bad etcd endpoint {endpoint:?}: {problem}; allowed: {allowed}")]
    BadEtcdEndpoint {
        /// The URL as given.
        url: String,
        /// The offending endpoint (one comma-separated part).
        endpoint: String,
        /// What is wrong with it.
        problem: String,
        /// [`ALLOWED_URLS`].
        allowed: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn each_cause_is_said_once_and_only_unreachable_is_retried() {
        let (arbiter, detail) = ("file:/a".to_owned(), "read /a/vm/gen-1: EIO".to_owned());
        let all = [
            ArbiterError::Unreachable {
                arbiter: arbiter.clone(),
                detail: detail.clone(),
            },
            ArbiterError::Denied {
                arbiter: arbiter.clone(),
                detail: detail.clone(),
            },
            ArbiterError::Corrupt {
                arbiter: arbiter.clone(),
                key: "/a/vm/gen-1".into(),
                detail: detail.clone(),
            },
            ArbiterError::Protocol {
                arbiter: arbiter.clone(),
                detail: detail.clone(),
            },
        ];
        for e in &all {
            assert!(e.source().is_none(), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains(&arbiter) && msg.contains(&detail), "{msg}");
        }
        assert_eq!(all.iter().filter(|e| e.is_unreachable()).count(), 1);
        let o = OpenArbiterError::UnknownScheme {
            url: "zk:x".into(),
            allowed: ALLOWED_URLS,
        };
        assert!(o.source().is_none());
        assert!(
            o.to_string()
                .starts_with("arbiter URL \"zk:x\": unknown scheme; allowed: ")
        );
    }
}

//! A side of the pair as a whole process: [`run_primary`] and
//! [`run_backup`] wire the VM, the arbiter, the channel, the status and
//! metrics endpoints and the service address together — what `ftvm
//! primary --backup|--spare` and `ftvm backup` run. The binary only turns
//! its arguments into a [`PrimaryNode`] or a [`BackupNode`].
//!
//! Both print their progress as [`notice`](crate::events::notice)s (side
//! `primary` or `backup`) and end with the VM's [`RunOutcome`].

mod backup;
mod primary;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use ftvm_arbiter::Arbiter;
use ftvm_vmm::VmError;

use crate::events::notice;
use crate::metrics::ServeMetricsError;
use crate::spare::SpareError;
use crate::{FloatingIp, PairSetupError, ServiceError};

pub use backup::{BackupNode, run_backup};
pub use primary::{PrimaryNode, Protect, run_primary};

/// Where the pair's generations are decided, under which name, and the
/// floating service address the live side holds.
#[derive(Debug, Clone, Default)]
pub struct PairConfig {
    /// The arbiter's URL (`file:DIR`, `etcd:http://HOST:PORT[,…]`); `None`:
    /// the per-user default on this host ([`ftvm_arbiter::default_url`]).
    pub arbiter: Option<String>,
    /// The VM's name at the arbiter; `None`: derived from the guest and the
    /// service address (primary), adopted from the primary's (backup).
    pub vm: Option<String>,
    /// The floating service address the live side adds, and removes when it
    /// stops or loses.
    pub floating: Option<FloatingIp>,
}

impl PairConfig {
    /// Opens the arbiter and says which one (and when it is the one-host default).
    pub fn open_arbiter(&self, side: &str) -> Result<Arc<dyn Arbiter>, NodeError> {
        let url = self
            .arbiter
            .clone()
            .unwrap_or_else(ftvm_arbiter::default_url);
        let a: Arc<dyn Arbiter> = Arc::from(ftvm_arbiter::open(&url)?);
        let scope = if self.arbiter.is_none() {
            " (the default: this host only — a pair on two hosts needs --arbiter with a shared directory or etcd)"
        } else {
            ""
        };
        notice(side, &format!("arbiter {}{scope}", a.url()));
        Ok(a)
    }
}

/// Why a side could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The arbiter's URL is wrong or it could not be opened.
    #[error(transparent)]
    Arbiter(#[from] ftvm_arbiter::OpenArbiterError),
    /// The pair did not form (connect, handshake, claim).
    #[error(transparent)]
    Pair(Box<PairSetupError>),
    /// The spare took no state.
    #[error(transparent)]
    Spare(Box<SpareError>),
    /// The VM could not be built or failed while running.
    #[error(transparent)]
    Vm(Box<VmError>),
    /// The service socket could not be bound.
    #[error(transparent)]
    Nic(#[from] ftvm_vmm::devices::net::NicSetupError),
    /// The floating service address could not be set up.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] ServeMetricsError),
    /// An address (`--service`) that names no socket address.
    #[error("{flag} {addr}: {why}")]
    Address {
        /// The flag.
        flag: &'static str,
        /// The address as given.
        addr: String,
        /// Why it is not one.
        why: String,
    },
    /// A listener, endpoint or thread could not be set up.
    #[error("{what}")]
    Setup {
        /// What was being set up.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The primary's VM failed after the pair formed.
    #[error("VM {vm:?}: {}", if *.lost {
        "this primary lost its generation; outputs not ACKed stay held"
    } else {
        "the primary stopped"
    })]
    PrimaryStopped {
        /// The VM's name.
        vm: String,
        /// Whether the primary had lost its generation.
        lost: bool,
        /// Why the VM stopped.
        #[source]
        source: Box<VmError>,
    },
    /// `--as-spare` on a transport other than tcp.
    #[error("a spare takes the state and the log over tcp, not {0} (leave out --transport)")]
    SpareTransport(&'static str),
    /// The log file of `--record-log` could not be created.
    #[error("creating the log file {}", .path.display())]
    RecordLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ftvm_vmm::LogSinkError,
    },
}

// Boxed so that a `Result<_, NodeError>` stays small.
macro_rules! from_boxed {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for NodeError {
            fn from(e: $ty) -> Self {
                NodeError::$variant(Box::new(e))
            }
        }
    )*};
}
from_boxed!(Pair(PairSetupError), Spare(SpareError), Vm(VmError));

impl From<ftvm_vmm::BuildVmError> for NodeError {
    fn from(e: ftvm_vmm::BuildVmError) -> Self {
        NodeError::Vm(Box::new(e.into()))
    }
}

impl NodeError {
    fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Setup { what, source }
    }
}

/// Resolves a `host:port` address (`flag` names it in the error).
pub fn resolve(flag: &'static str, addr: &str) -> Result<SocketAddr, NodeError> {
    let err = |why: String| NodeError::Address {
        flag,
        addr: addr.to_string(),
        why,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(format!("not an address ({e})")))?
        .next()
        .ok_or_else(|| err("resolves to no address".into()))
}

/// The default VM name: the guest and the primary's service address, in
/// the characters the arbiter allows.
pub fn default_vm_name(guest: &str, service: Option<SocketAddr>) -> String {
    let at = service.map_or_else(|| "noservice".to_string(), |s| s.to_string());
    format!("{guest}-{at}")
        .chars()
        .map(|c| {
            if ftvm_arbiter::names::is_vm_name_char(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_vm_names_keep_to_the_arbiters_characters() {
        let at: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(default_vm_name("kv", Some(at)), "kv-127.0.0.1-7000");
        assert_eq!(default_vm_name("kv", None), "kv-noservice");
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(default_vm_name("dns", Some(v6)), "dns----1--53");
    }

    #[test]
    fn a_bad_address_names_the_flag_and_the_value_once() {
        let e = resolve("--service", "no-port-here").unwrap_err();
        let text = ftvm_vmm::error_chain(&e);
        assert!(
            text.starts_with("--service no-port-here: not an address"),
            "{text}"
        );
        assert_eq!(text.matches("no-port-here").count(), 1, "{text}");
        assert_eq!(resolve("--service", "localhost:53").unwrap().port(), 53);
    }
}

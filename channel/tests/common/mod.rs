//! What the channel's integration tests share: settings, hello parameters and
//! a connected transport pair.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use ftvm_channel::HelloParams;
use ftvm_channel::transport::{self, Transport};
use ftvm_tuning::{ChannelSettings, TransportKind};

pub fn settings(kind: TransportKind) -> ChannelSettings {
    ChannelSettings {
        transport: kind,
        ring_bytes: 1 << 20,
        peer_timeout_ms: 5000,
        ..ChannelSettings::default()
    }
}

pub fn params() -> HelloParams {
    HelloParams {
        settings_fingerprint: 0x1234,
        ..HelloParams::default()
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A connected (primary-side, backup-side) transport pair: on loopback, or
/// for shm on a fresh name.
pub fn pair(s: &ChannelSettings) -> (Box<dyn Transport>, Box<dyn Transport>) {
    let addr = match s.transport {
        TransportKind::Shm => format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        _ => "127.0.0.1:0".to_string(),
    };
    let mut listener = transport::listen(s, &addr).expect("listen");
    let addr = listener.local_addr();
    let s2 = s.clone();
    let connector = thread::spawn(move || transport::connect(&s2, &addr).expect("connect"));
    let accepted = listener
        .accept(Duration::from_secs(5))
        .expect("accept")
        .expect("a connection within 5 s");
    (connector.join().expect("connector thread"), accepted)
}

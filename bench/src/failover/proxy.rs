//! A TCP relay between a primary and its backup that can cut the link both
//! ways without closing it — a network partition (`tc netem` does not work
//! on these hosts). While partitioned, bytes stop flowing in both
//! directions; the connections stay open, so each side learns of the
//! partition only through its `peer_timeout_ms`, as with a dead switch.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// A running relay.
#[derive(Debug)]
pub struct PartitionProxy {
    /// The address the primary dials.
    pub addr: String,
    cut: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn relay(from: &mut TcpStream, to: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    match from.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => to.write_all(&buf[..n]).map(|()| true),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(true),
        Err(e) => Err(e),
    }
}

impl PartitionProxy {
    /// Listens on a free loopback port; relays its first connection to `backup`.
    pub fn start(backup: &str) -> std::io::Result<PartitionProxy> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?.to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (cut.clone(), done.clone());
        let backup = backup.to_string();
        let thread = std::thread::Builder::new()
            .name("partition-proxy".into())
            .spawn(move || {
                let Ok((mut p, _)) = l.accept() else { return };
                let Ok(mut b) = TcpStream::connect(&backup) else {
                    return;
                };
                for s in [&p, &b] {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
                }
                let mut buf = vec![0u8; 1 << 16];
                // Relaxed: flags carry no data.
                while !d.load(Ordering::Relaxed) {
                    if c.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let up = relay(&mut p, &mut b, &mut buf);
                    let down = relay(&mut b, &mut p, &mut buf);
                    if !matches!((up, down), (Ok(true), Ok(true))) {
                        // One side closed: pass the close on.
                        let _ = p.shutdown(std::net::Shutdown::Both);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            })?;
        Ok(PartitionProxy {
            addr,
            cut,
            done,
            thread: Some(thread),
        })
    }

    /// Cuts the link both ways (the connections stay open).
    pub fn partition(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

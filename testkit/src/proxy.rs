//! A TCP proxy between a primary and its backup. The backup-to-primary
//! direction (ACKs and ticks) can be held back entirely or delayed; the proxy
//! timestamps every chunk it forwards that way, so a test can tell exactly
//! when an ACK could first have reached the primary.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Controls of the backup-to-primary direction.
#[derive(Debug, Default)]
pub struct AckControl {
    /// While set, nothing flows from the backup to the primary.
    pub hold: AtomicBool,
    /// Extra delay applied to every chunk (µs).
    pub delay_us: AtomicU64,
    /// When each chunk was forwarded to the primary.
    pub forwarded: Mutex<Vec<Instant>>,
    /// Primary-to-backup stream offset of a byte to corrupt (u64::MAX: none).
    pub corrupt_at: AtomicU64,
    /// Forward the backup's first chunk (its Hello), then hold everything
    /// (no ACK reaches the primary, the handshake still succeeds).
    pub hold_after_hello: AtomicBool,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Address the primary connects to.
    pub addr: String,
    /// The ACK direction's controls.
    pub acks: Arc<AckControl>,
    thread: Option<JoinHandle<()>>,
}

/// Copies `from` to `to`. `ack_ctl`: this is the ACK direction (hold, delay,
/// timestamps); `corrupt`: flip one bit at this stream offset.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    ack_ctl: Option<Arc<AckControl>>,
    corrupt: Option<Arc<AckControl>>,
) {
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(c) = &corrupt {
            let at = c.corrupt_at.load(Ordering::SeqCst);
            if at >= offset && at < offset + n as u64 {
                buf[(at - offset) as usize] ^= 0x04;
            }
        }
        offset += n as u64;
        if let Some(c) = &ack_ctl {
            if c.hold_after_hello.load(Ordering::SeqCst) && offset > n as u64 {
                c.hold.store(true, Ordering::SeqCst);
            }
            while c.hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let d = c.delay_us.load(Ordering::SeqCst);
            if d > 0 {
                std::thread::sleep(Duration::from_micros(d));
            }
            c.forwarded.lock().unwrap().push(Instant::now());
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Proxy {
    /// Listens on a free loopback port and forwards one connection to `backup`.
    pub fn start(backup: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = l.local_addr().unwrap().to_string();
        let acks = Arc::new(AckControl {
            corrupt_at: AtomicU64::new(u64::MAX),
            ..AckControl::default()
        });
        let ctl = acks.clone();
        let backup = backup.to_string();
        let thread = std::thread::spawn(move || {
            let Ok((primary, _)) = l.accept() else { return };
            let Ok(b) = TcpStream::connect(&backup) else {
                return;
            };
            let _ = primary.set_nodelay(true);
            let _ = b.set_nodelay(true);
            let (p2, b2) = (primary.try_clone().unwrap(), b.try_clone().unwrap());
            let c2 = ctl.clone();
            let up = std::thread::spawn(move || pump(p2, b2, None, Some(c2)));
            pump(b, primary, Some(ctl), None);
            let _ = up.join();
        });
        Proxy {
            addr,
            acks,
            thread: Some(thread),
        }
    }
}

impl Proxy {
    /// Corrupts one bit of the primary-to-backup stream at `offset`.
    pub fn corrupt_forward_at(&self, offset: u64) {
        self.acks.corrupt_at.store(offset, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acks.hold_after_hello.store(false, Ordering::SeqCst);
        self.acks.hold.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

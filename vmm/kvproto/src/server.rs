//! A host-side kv server: the same [`Store`] as the kv guest behind a UDP
//! socket on a thread. Used as the client's test peer and as the "no VM"
//! floor in benchmarks.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use crate::{ClientSlot, KeySlot, MAX_DATAGRAM, Store, StoreStats};

/// The store type of the host server (tables on the heap).
pub type HostStore = Store<Vec<KeySlot>, Vec<ClientSlot>>;

/// A store over `keys` key slots and `clients` client slots on the heap.
pub fn host_store(keys: usize, clients: usize) -> HostStore {
    Store::new(vec![KeySlot::EMPTY; keys], vec![ClientSlot::EMPTY; clients])
}

/// What the server thread ends with.
#[derive(Clone, Copy, Debug)]
pub struct ServerSummary {
    /// Store counters.
    pub stats: StoreStats,
    /// [`Store::digest`] at the end.
    pub digest: u64,
    /// Datagrams received.
    pub datagrams: u64,
}

/// A running server; [`KvServer::stop`] ends it.
#[derive(Debug)]
pub struct KvServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<ServerSummary>>,
}

impl KvServer {
    /// Binds `bind` (port 0 for any) and serves on a new thread. With `spin`
    /// the thread busy-polls a nonblocking socket (lowest latency, one core);
    /// otherwise it blocks in `recv_from` with a 20 ms timeout.
    pub fn spawn(
        bind: SocketAddr,
        keys: usize,
        clients: usize,
        spin: bool,
    ) -> std::io::Result<KvServer> {
        let socket = UdpSocket::bind(bind)?;
        let addr = socket.local_addr()?;
        if spin {
            socket.set_nonblocking(true)?;
        } else {
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("kv-server".into())
            .spawn(move || serve(socket, host_store(keys, clients), &stop2))?;
        Ok(KvServer { addr, stop, thread })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and returns its summary.
    pub fn stop(self) -> std::io::Result<ServerSummary> {
        // Relaxed: a plain flag; the join below is the synchronisation.
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("kv server thread panicked")))
    }
}

fn serve(
    socket: UdpSocket,
    mut store: HostStore,
    stop: &AtomicBool,
) -> std::io::Result<ServerSummary> {
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut out = [0u8; MAX_DATAGRAM];
    let mut datagrams = 0u64;
    // Relaxed: see `stop`.
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        datagrams += 1;
        if n > MAX_DATAGRAM {
            continue;
        }
        if let Some(len) = store.serve(&buf[..n], &mut out) {
            match socket.send_to(&out[..len], from) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(ServerSummary {
        stats: store.stats(),
        digest: store.digest(),
        datagrams,
    })
}

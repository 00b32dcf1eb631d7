//! A host-side dns server: the same [`Server`] as the dns guest behind a UDP
//! socket on a thread. The test peer of the real clients (`dig`, `nsupdate`,
//! `dnsperf`) where no KVM is available, and the "no VM" floor.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use std::vec;
use std::vec::Vec;

use crate::{DupSlot, MAX_REPLY, PEER_LEN, RecordSlot, Server, ServerStats};

/// The server type of the host (tables on the heap).
pub type HostServer = Server<Vec<RecordSlot>, Vec<u32>, Vec<DupSlot>>;

/// A server over `records` record slots and a duplicate window of `dups`
/// updates, with an empty zone (load one with [`Server::load_master`]).
pub fn host_server(records: usize, dups: usize) -> HostServer {
    Server::new(
        vec![RecordSlot::EMPTY; records],
        vec![0; records],
        vec![DupSlot::EMPTY; dups],
    )
}

/// The source address in the layout of the NIC's peer field
/// (`docs/devices.md`): the duplicate table only compares it.
pub fn encode_peer(addr: SocketAddr) -> [u8; PEER_LEN] {
    let mut p = [0u8; PEER_LEN];
    p[2..4].copy_from_slice(&addr.port().to_le_bytes());
    match addr {
        SocketAddr::V4(a) => {
            p[0..2].copy_from_slice(&4u16.to_le_bytes());
            p[8..12].copy_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            p[0..2].copy_from_slice(&6u16.to_le_bytes());
            p[8..24].copy_from_slice(&a.ip().octets());
        }
    }
    p
}

/// What the server thread ends with.
#[derive(Clone, Copy, Debug)]
pub struct HostSummary {
    /// Server counters.
    pub stats: ServerStats,
    /// [`Server::digest`] at the end.
    pub digest: u64,
    /// Datagrams received.
    pub datagrams: u64,
}

/// A running server; [`DnsServer::stop`] ends it.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<HostSummary>>,
}

impl DnsServer {
    /// Binds `bind` (port 0 for any) and serves `server` on a new thread
    /// (blocking receives with a 20 ms timeout to notice [`DnsServer::stop`]).
    pub fn spawn(bind: SocketAddr, server: HostServer) -> std::io::Result<DnsServer> {
        let socket = UdpSocket::bind(bind)?;
        let addr = socket.local_addr()?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("dns-server".into())
            .spawn(move || serve(socket, server, &stop2))?;
        Ok(DnsServer { addr, stop, thread })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and returns its summary.
    pub fn stop(self) -> std::io::Result<HostSummary> {
        // Relaxed: a plain flag; the join below is the synchronisation.
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("dns server thread panicked")))
    }
}

fn serve(
    socket: UdpSocket,
    mut server: HostServer,
    stop: &AtomicBool,
) -> std::io::Result<HostSummary> {
    let mut buf = [0u8; 65536];
    let mut out = [0u8; MAX_REPLY];
    let mut datagrams = 0u64;
    // Relaxed: see `stop`.
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        datagrams += 1;
        if let Some(len) = server.serve(&buf[..n], &encode_peer(from), &mut out) {
            match socket.send_to(&out[..len], from) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(HostSummary {
        stats: server.stats(),
        digest: server.digest(),
        datagrams,
    })
}

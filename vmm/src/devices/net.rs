//! The NIC: UDP datagrams in and out of the guest through descriptor rings
//! in guest memory, one doorbell port, and the WAIT port.
//!
//! Contract: the VMM touches the rings only at an exit of the guest (the
//! doorbell `out`, or a WAIT exit); every packet placed in the receive ring
//! arrives through one `PacketRx` input entry per batch (so replay places the
//! same bytes in the same slots), and every transmitted packet is one OUTPUT
//! `NetTx` entry whose release sends it to the peer address the guest put in
//! its descriptor. Normative layout: `docs/devices.md`.
//!
//! # Layout (guest-physical, in the device region `0x100_0000`)
//!
//! ```text
//! NIC_CTRL  0x100_0000  u32 rx_prod   (VMM)   u32 rx_cons (guest)
//!                       u32 tx_prod   (guest) u32 tx_cons (VMM)
//! RX_RING   0x100_1000  256 slots x 2048 bytes
//! TX_RING   0x108_1000  256 slots x 2048 bytes
//! slot:     0 u32 len | 4 u32 reserved (0) | 8 peer (24 bytes) | 32 data (<= 2016)
//! peer:     0 u16 family (4 or 6) | 2 u16 port | 4 u32 reserved | 8 16-byte address
//! ```
//!
//! Indices are free-running `u32`s; slot = index % 256. The guest owns rx
//! slots `rx_cons..rx_prod` until it advances `rx_cons`, and tx slots
//! `tx_cons..tx_prod` until the VMM advances `tx_cons`.
//!
//! # The main flow
//!
//! 1. The guest fills tx slots (a reply carries the request's peer), bumps
//!    `tx_prod`, and writes any value to port `0x40` (the doorbell).
//! 2. At that exit (and at every WAIT exit) [`Nic`] turns each pending tx
//!    slot into `ctx.output(NetTx, ...)` whose release sends the datagram
//!    from the service socket, then sets `tx_cons = tx_prod`.
//! 3. Then it fills every free rx slot with datagrams waiting on the socket:
//!    record/live read them (nonblocking) inside `ctx.poll_input(PacketRx)`,
//!    replay gets the same batch from the log; the same code writes the
//!    slots and advances `rx_prod`.
//! 4. An idle guest sits in WAIT; the VMM sleeps on the socket
//!    ([`Device::wait_fd`]) until a datagram arrives or the deadline passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock};

use ftvm_wire::Kind;

use crate::device::{Device, DeviceError, ExitCtx};
use crate::layout::DEV_REGION;
use crate::memory::GuestMemory;
use crate::stats::Counter;

/// Guest-visible constants of the NIC (`ftvm_guest_abi::nic`, shared with
/// the guest driver `vmm/guests/net`).
pub use ftvm_guest_abi::nic as abi;

use abi::*;

const _: () = assert!(
    abi::END <= DEV_REGION + 0x80_0000,
    "NIC fits the first half of the device region"
);

/// Bytes of a `PacketRx` batch header: `count: u32, first_index: u32`.
const BATCH_HEADER: usize = 8;
/// Bytes before a packet's data in a batch: `len: u32, reserved: u32, peer`.
const PACKET_HEADER: usize = 8 + PEER_LEN;
/// Room one datagram needs in a batch while it is received: its header and
/// one byte more than the largest packet (so an oversize one is seen as
/// such), 8-aligned.
const PACKET_ROOM: usize = (PACKET_HEADER + MAX_PACKET + 1).next_multiple_of(8);
/// Largest `PacketRx` batch claimed at once: datagrams are received straight
/// into the log entry, so the claim bounds the batch (what does not fit
/// waits for the next exit).
const MAX_BATCH: usize = 64 * 1024;

/// The NIC could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NicSetupError {
    /// The service socket could not be bound or configured.
    #[error("service address {addr}: {what}")]
    Socket {
        /// The `--service` address.
        addr: SocketAddr,
        /// What failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Counters of a NIC, shared with whoever built it (benchmarks, tests).
#[derive(Debug, Default)]
pub struct NicStats {
    /// Datagrams placed in the rx ring.
    pub rx_packets: Counter,
    /// `PacketRx` batches (one per exit that delivered).
    pub rx_batches: Counter,
    /// Datagrams dropped because they exceed a slot (record/live).
    pub rx_oversize: Counter,
    /// Datagrams taken from the tx ring.
    pub tx_packets: Counter,
    /// Datagrams the host socket failed to send at release.
    pub tx_send_errors: Counter,
    /// Doorbell exits.
    pub doorbells: Counter,
}

/// The NIC device (ports `0x40`), backed by a UDP socket on the host.
#[derive(Debug)]
pub struct Nic {
    /// The service socket; empty for a replay-only NIC (packets come from
    /// the log) until a standby NIC is attached at go-live ([`NicAttach`]).
    socket: Arc<OnceLock<UdpSocket>>,
    /// A standby NIC without its socket yet delivers nothing instead of
    /// failing (a detached one fails if asked for host packets).
    standby: bool,
    stats: Arc<NicStats>,
}

/// Binds a nonblocking UDP service socket.
fn bind_service(addr: SocketAddr) -> Result<UdpSocket, NicSetupError> {
    let err = |what| move |source| NicSetupError::Socket { addr, what, source };
    let socket = UdpSocket::bind(addr).map_err(err("bind"))?;
    socket
        .set_nonblocking(true)
        .map_err(err("set nonblocking"))?;
    Ok(socket)
}

/// Gives a standby NIC its service socket when the backup goes live.
#[derive(Debug)]
pub struct NicAttach {
    slot: Arc<OnceLock<UdpSocket>>,
    reserved: Option<UdpSocket>,
}

impl NicAttach {
    /// Attaches the socket reserved by [`Nic::standby`], or binds `addr`
    /// now (e.g. a floating service IP added just before); returns the
    /// bound address. From here on the NIC sends and receives on it, and
    /// outputs released later (re-sent replies) leave from it.
    pub fn attach(&mut self, addr: Option<SocketAddr>) -> Result<SocketAddr, NicSetupError> {
        let socket = match (self.reserved.take(), addr) {
            (Some(s), _) => s,
            (None, Some(addr)) => bind_service(addr)?,
            (None, None) => {
                return Err(NicSetupError::Socket {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    what: "attach",
                    source: std::io::Error::other("no service address to bind"),
                });
            }
        };
        let bound = socket
            .local_addr()
            .map_err(|source| NicSetupError::Socket {
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                what: "local address",
                source,
            })?;
        // A second attach keeps the first socket: the slot is set once.
        let _ = self.slot.set(socket);
        Ok(bound)
    }

    /// The address of the reserved socket, if one was bound at start.
    pub fn reserved_addr(&self) -> Option<SocketAddr> {
        self.reserved.as_ref().and_then(|s| s.local_addr().ok())
    }
}

impl Nic {
    /// Binds the service socket on `addr` (port 0: any; see [`Nic::local_addr`]).
    pub fn new(addr: SocketAddr) -> Result<Nic, NicSetupError> {
        let nic = Nic::detached();
        let _ = nic.socket.set(bind_service(addr)?);
        Ok(nic)
    }

    /// A NIC without a socket, for replay: received batches come from the
    /// log and transmits are checked and dropped. Asked for host packets (a
    /// live or record run), it fails with an error.
    pub fn detached() -> Nic {
        Nic {
            socket: Arc::new(OnceLock::new()),
            standby: false,
            stats: Arc::new(NicStats::default()),
        }
    }

    /// A backup's NIC: replays like a detached one, and takes its service
    /// socket at go-live through the returned [`NicAttach`]. With
    /// `reserve`, the socket is bound now (so a busy address fails at start
    /// and datagrams sent to it before go-live wait in its buffer) and only
    /// attached then.
    pub fn standby(reserve: Option<SocketAddr>) -> Result<(Nic, NicAttach), NicSetupError> {
        let reserved = reserve.map(bind_service).transpose()?;
        let nic = Nic {
            standby: true,
            ..Nic::detached()
        };
        let attach = NicAttach {
            slot: Arc::clone(&nic.socket),
            reserved,
        };
        Ok((nic, attach))
    }

    /// The bound service address (`None` while there is no socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.get().and_then(|s| s.local_addr().ok())
    }

    /// The NIC's counters.
    pub fn stats(&self) -> Arc<NicStats> {
        Arc::clone(&self.stats)
    }

    /// Step 2 of the main flow: every pending tx slot becomes a `NetTx` output.
    fn transmit(&mut self, ctx: &mut ExitCtx<'_>, port: u16) -> Result<(), DeviceError> {
        let mem = ctx.mem();
        let prod = mem.read_u32(CTRL + TX_PROD)?;
        let cons = mem.read_u32(CTRL + TX_CONS)?;
        let pending = prod.wrapping_sub(cons);
        if pending > TX_SLOTS {
            return Err(DeviceError::BadRequest {
                port,
                detail: format!(
                    "tx ring: tx_prod {prod} is {pending} slots ahead of tx_cons {cons}, ring has {TX_SLOTS}"
                ),
            });
        }
        for i in 0..pending {
            let index = cons.wrapping_add(i);
            let slot = TX_RING + u64::from(index % TX_SLOTS) * SLOT_SIZE;
            let len = mem.read_u32(slot)? as usize;
            if len > MAX_PACKET {
                return Err(DeviceError::BadRequest {
                    port,
                    detail: format!(
                        "tx slot {index} (GPA {slot:#x}): length {len} exceeds {MAX_PACKET}"
                    ),
                });
            }
            let mut peer = [0u8; PEER_LEN];
            mem.read(slot + SLOT_PEER, &mut peer)?;
            let to = decode_peer(&peer).ok_or_else(|| DeviceError::BadRequest {
                port,
                detail: format!("tx slot {index} (GPA {slot:#x}): bad peer address {peer:02x?}"),
            })?;
            let data: Arc<[u8]> = mem.read_vec(slot + SLOT_DATA, len)?.into();
            let socket = Arc::clone(&self.socket);
            let stats = Arc::clone(&self.stats);
            let bytes = Arc::clone(&data);
            ctx.output(Kind::NetTx, port, &data, move || {
                // The socket at release time: a reply kept by a standby and
                // re-sent at go-live leaves from the socket attached then.
                if socket.get().is_none_or(|s| s.send_to(&bytes, to).is_err()) {
                    stats.tx_send_errors.add(1);
                }
            })?;
        }
        if pending > 0 {
            mem.write_u32(CTRL + TX_CONS, prod)?;
            self.stats.tx_packets.add(u64::from(pending));
        }
        Ok(())
    }

    /// Step 3 of the main flow: fill every free rx slot. Returns whether
    /// anything was delivered.
    fn receive(&mut self, ctx: &mut ExitCtx<'_>, port: u16) -> Result<bool, DeviceError> {
        let mem = ctx.mem();
        let prod = mem.read_u32(CTRL + RX_PROD)?;
        let cons = mem.read_u32(CTRL + RX_CONS)?;
        let used = prod.wrapping_sub(cons);
        if used > RX_SLOTS {
            return Err(DeviceError::BadRequest {
                port,
                detail: format!(
                    "rx ring: rx_cons {cons} is {} slots behind rx_prod {prod}, ring has {RX_SLOTS}",
                    used
                ),
            });
        }
        let free = RX_SLOTS - used;
        if free == 0 {
            return Ok(false);
        }
        let socket = self.socket.get();
        let standby = self.standby;
        let stats = &self.stats;
        let max_len = (BATCH_HEADER + free as usize * PACKET_ROOM)
            .min(MAX_BATCH)
            .min(ctx.max_input_len());
        let count = ctx.poll_input(
            Kind::PacketRx,
            port,
            max_len,
            |out| match socket {
                // A standby NIC not attached (yet): nothing arrives.
                None if standby => Ok(None),
                _ => collect_batch(socket, stats, free, prod, out),
            },
            |batch| apply_batch(mem, batch, prod, free, port),
        )?;
        let Some(count) = count else {
            return Ok(false);
        };
        self.stats.rx_packets.add(u64::from(count));
        self.stats.rx_batches.add(1);
        Ok(count > 0)
    }
}

/// Record/live: receives up to `free` datagrams from the socket straight
/// into `out` (the log entry being written) as a batch; returns its length,
/// `None` when nothing was waiting.
fn collect_batch(
    socket: Option<&UdpSocket>,
    stats: &NicStats,
    free: u32,
    first: u32,
    out: &mut [u8],
) -> Result<Option<usize>, DeviceError> {
    let Some(socket) = socket else {
        return Err(DeviceError::Host {
            what: "NIC receive".to_string(),
            source: std::io::Error::other("no service socket (replay-only NIC)"),
        });
    };
    let mut at = BATCH_HEADER;
    let mut count = 0u32;
    while count < free && out.len().saturating_sub(at) >= PACKET_ROOM {
        let data_at = at + PACKET_HEADER;
        let (n, from) = match socket.recv_from(&mut out[data_at..data_at + MAX_PACKET + 1]) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ICMP errors of earlier sends surface here; they are not packets.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(source) => {
                return Err(DeviceError::Host {
                    what: "receive on the NIC's service socket".to_string(),
                    source,
                });
            }
        };
        if n > MAX_PACKET {
            stats.rx_oversize.add(1);
            continue;
        }
        out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
        out[at + 4..at + 8].fill(0);
        out[at + 8..data_at].copy_from_slice(&encode_peer(from));
        let end = (data_at + n).next_multiple_of(8);
        out[data_at + n..end].fill(0);
        at = end;
        count += 1;
    }
    if count == 0 {
        return Ok(None);
    }
    out[0..4].copy_from_slice(&count.to_le_bytes());
    out[4..8].copy_from_slice(&first.to_le_bytes());
    Ok(Some(at))
}

/// Every mode: writes a batch into the rx slots from `prod` on and advances
/// `rx_prod`. A batch that does not fit what the guest's ring allows (only
/// possible with a corrupt or diverged log) is an error naming the values.
fn apply_batch(
    mem: &GuestMemory,
    batch: &[u8],
    prod: u32,
    free: u32,
    port: u16,
) -> Result<u32, DeviceError> {
    let bad = |detail: String| DeviceError::BadRequest { port, detail };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(batch.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(count), Some(first)) = (u32_at(0), u32_at(4)) else {
        return Err(bad(format!(
            "PacketRx batch of {} bytes has no header",
            batch.len()
        )));
    };
    if first != prod || count > free {
        return Err(bad(format!(
            "PacketRx batch of {count} packets from rx index {first} does not fit the ring: rx_prod {prod}, {free} free"
        )));
    }
    let mut at = BATCH_HEADER;
    for i in 0..count {
        let Some(len) = u32_at(at).map(|l| l as usize) else {
            return Err(bad(format!(
                "PacketRx batch: packet {i} header at offset {at} is cut off"
            )));
        };
        let data_at = at + PACKET_HEADER;
        if len > MAX_PACKET || data_at + len > batch.len() {
            return Err(bad(format!(
                "PacketRx batch: packet {i} at offset {at} has length {len} (max {MAX_PACKET}, batch {} bytes)",
                batch.len()
            )));
        }
        let slot = RX_RING + u64::from(prod.wrapping_add(i) % RX_SLOTS) * SLOT_SIZE;
        let mut head = [0u8; SLOT_DATA as usize];
        head[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[SLOT_PEER as usize..].copy_from_slice(&batch[at + 8..data_at]);
        mem.write(slot, &head)?;
        mem.write(slot + SLOT_DATA, &batch[data_at..data_at + len])?;
        at = (data_at + len).next_multiple_of(8);
    }
    if at != batch.len() {
        return Err(bad(format!(
            "PacketRx batch of {count} packets ends at offset {at}, batch is {} bytes",
            batch.len()
        )));
    }
    mem.write_u32(CTRL + RX_PROD, prod.wrapping_add(count))?;
    Ok(count)
}

/// Encodes a socket address as a slot's peer field.
pub fn encode_peer(addr: SocketAddr) -> [u8; PEER_LEN] {
    let mut p = [0u8; PEER_LEN];
    p[2..4].copy_from_slice(&addr.port().to_le_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            p[0..2].copy_from_slice(&4u16.to_le_bytes());
            p[8..12].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            p[0..2].copy_from_slice(&6u16.to_le_bytes());
            p[8..24].copy_from_slice(&ip.octets());
        }
    }
    p
}

/// Decodes a slot's peer field; `None` for an unknown family or a nonzero
/// reserved field.
pub fn decode_peer(p: &[u8; PEER_LEN]) -> Option<SocketAddr> {
    let family = u16::from_le_bytes([p[0], p[1]]);
    let port = u16::from_le_bytes([p[2], p[3]]);
    if p[4..8] != [0; 4] {
        return None;
    }
    let ip = match family {
        4 if p[12..24] == [0; 12] => IpAddr::V4(Ipv4Addr::new(p[8], p[9], p[10], p[11])),
        6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&p[8..24]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl Device for Nic {
    fn name(&self) -> &'static str {
        "net"
    }

    fn ports(&self) -> RangeInclusive<u16> {
        PORT_DOORBELL..=PORT_DOORBELL
    }

    fn io_out(&mut self, ctx: &mut ExitCtx<'_>, port: u16, data: &[u8]) -> Result<(), DeviceError> {
        crate::device::out_u32(port, data)?;
        self.stats.doorbells.add(1);
        self.transmit(ctx, port)?;
        self.receive(ctx, port)?;
        Ok(())
    }

    fn poll(&mut self, ctx: &mut ExitCtx<'_>) -> Result<bool, DeviceError> {
        self.transmit(ctx, PORT_DOORBELL)?;
        self.receive(ctx, PORT_DOORBELL)
    }

    fn wait_fd(&self) -> Option<RawFd> {
        self.socket.get().map(|s| s.as_raw_fd())
    }
}

pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_round_trip() {
        for a in ["127.0.0.1:7000", "[::1]:9", "10.1.2.3:65535"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(decode_peer(&encode_peer(a)), Some(a));
        }
        let mut p = encode_peer("127.0.0.1:1".parse().unwrap());
        p[0] = 9;
        assert_eq!(decode_peer(&p), None);
        assert_eq!(decode_peer(&[0; PEER_LEN]), None);
    }

    fn memory() -> GuestMemory {
        GuestMemory::new(64 << 20).unwrap()
    }

    /// Real datagrams on loopback, collected at most `free` at a time and
    /// written into the slots from `rx_prod` on (wrapping the ring).
    #[test]
    fn a_batch_fills_free_slots_in_order_and_wraps() {
        let nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = nic.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            client.send_to(&vec![i; 10 + usize::from(i)], to).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mem = memory();
        let prod = RX_SLOTS - 1; // the batch wraps from the last slot to slot 0
        mem.write_u32(CTRL + RX_PROD, prod).unwrap();
        mem.write_u32(CTRL + RX_CONS, prod).unwrap();
        let stats = NicStats::default();
        let mut out = vec![0xee; MAX_BATCH];
        let socket = nic.socket.get();
        let n = collect_batch(socket, &stats, 2, prod, &mut out)
            .unwrap()
            .unwrap();
        let batch = &out[..n];
        assert_eq!(apply_batch(&mem, batch, prod, 2, PORT_DOORBELL).unwrap(), 2);
        assert_eq!(mem.read_u32(CTRL + RX_PROD).unwrap(), prod.wrapping_add(2));
        let last = RX_RING + u64::from(RX_SLOTS - 1) * SLOT_SIZE;
        assert_eq!(mem.read_u32(last).unwrap(), 10);
        assert_eq!(mem.read_vec(last + SLOT_DATA, 10).unwrap(), vec![0u8; 10]);
        let mut peer = [0u8; PEER_LEN];
        mem.read(last + SLOT_PEER, &mut peer).unwrap();
        assert_eq!(decode_peer(&peer), Some(client.local_addr().unwrap()));
        assert_eq!(mem.read_u32(RX_RING).unwrap(), 11);
        // The third datagram waits for the next batch.
        let n = collect_batch(socket, &stats, 5, prod + 2, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 1);
        // 8 + 32 + 12 bytes, padded with zeros (not the old bytes) to 8.
        assert_eq!(n, 56);
        assert_eq!(&out[52..56], &[0; 4]);
        assert_eq!(
            collect_batch(socket, &stats, 5, prod + 3, &mut out).unwrap(),
            None
        );
    }

    /// A claim with room for fewer datagrams than free slots ends the
    /// batch early; the rest waits on the socket.
    #[test]
    fn a_batch_stops_where_the_claim_has_no_room_for_another_datagram() {
        let nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = nic.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..3 {
            client.send_to(&[7; 100], to).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let stats = NicStats::default();
        let socket = nic.socket.get();
        // Room for one full-size datagram and a bit: after the first small
        // one, too little is left for another full-size one.
        let mut out = vec![0; BATCH_HEADER + PACKET_ROOM + 100];
        let n = collect_batch(socket, &stats, 8, 0, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 1);
        assert_eq!(n, BATCH_HEADER + PACKET_HEADER + 104);
        let mut out = vec![0; MAX_BATCH];
        let n = collect_batch(socket, &stats, 8, 1, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 2);
        assert_eq!(n, BATCH_HEADER + 2 * (PACKET_HEADER + 104));
    }

    #[test]
    fn a_batch_that_does_not_fit_is_an_error_naming_the_values() {
        let mem = memory();
        let mut batch = Vec::new();
        batch.extend_from_slice(&1u32.to_le_bytes());
        batch.extend_from_slice(&5u32.to_le_bytes());
        batch.extend_from_slice(&3u32.to_le_bytes());
        batch.extend_from_slice(&[0; 4]);
        batch.extend_from_slice(&encode_peer("127.0.0.1:9".parse().unwrap()));
        batch.extend_from_slice(b"abc\0\0\0\0\0");
        // Starts at index 5 but the ring's producer is 4.
        let e = apply_batch(&mem, &batch, 4, 10, PORT_DOORBELL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rx index 5") && e.contains("rx_prod 4"), "{e}");
        // No free slot.
        let e = apply_batch(&mem, &batch, 5, 0, PORT_DOORBELL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 free"), "{e}");
        // Fits.
        assert_eq!(apply_batch(&mem, &batch, 5, 1, PORT_DOORBELL).unwrap(), 1);
        // A length beyond the batch.
        let mut long = batch.clone();
        long[8..12].copy_from_slice(&900u32.to_le_bytes());
        let e = apply_batch(&mem, &long, 5, 1, PORT_DOORBELL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("length 900"), "{e}");
        // Trailing bytes.
        let mut trailing = batch.clone();
        trailing.extend_from_slice(&[0; 8]);
        let e = apply_batch(&mem, &trailing, 5, 1, PORT_DOORBELL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends at offset"), "{e}");
        // No header.
        assert!(apply_batch(&mem, &[1, 2], 5, 1, PORT_DOORBELL).is_err());
    }

    #[test]
    fn a_detached_nic_refuses_to_read_the_host() {
        let nic = Nic::detached();
        assert_eq!(nic.wait_fd(), None);
        let mut out = vec![0; MAX_BATCH];
        let e = collect_batch(None, &NicStats::default(), 4, 0, &mut out);
        assert!(crate::error_chain(&e.unwrap_err()).contains("replay-only"));
    }

    /// Device-level record → replay without KVM: two datagrams delivered at
    /// a WAIT pass, a reply transmitted at a doorbell (released to the real
    /// client), then the same exits replayed by a detached NIC on fresh
    /// memory give the same rx slots and a matching NetTx output.
    #[test]
    fn record_then_replay_gives_the_same_slots_and_outputs() {
        use crate::device::ExitRequests;
        use crate::journal::Journal;
        use crate::log::{LogFileReader, SharedLog};
        use crate::output::ImmediateGate;

        fn ctx_of<'a>(
            mem: &'a GuestMemory,
            journal: &'a mut Journal,
            ordinal: u64,
            requests: &'a mut ExitRequests,
        ) -> ExitCtx<'a> {
            ExitCtx {
                mem,
                journal,
                ordinal,
                requests,
            }
        }
        /// The guest's side: answer rx slot 0 with "re:" + data in tx slot 0.
        fn guest_reply(mem: &GuestMemory) {
            let len = mem.read_u32(RX_RING).unwrap() as usize;
            let mut reply = b"re:".to_vec();
            reply.extend(mem.read_vec(RX_RING + SLOT_DATA, len).unwrap());
            let mut peer = [0u8; PEER_LEN];
            mem.read(RX_RING + SLOT_PEER, &mut peer).unwrap();
            mem.write_u32(TX_RING, reply.len() as u32).unwrap();
            mem.write(TX_RING + SLOT_PEER, &peer).unwrap();
            mem.write(TX_RING + SLOT_DATA, &reply).unwrap();
            mem.write_u32(CTRL + RX_CONS, 1).unwrap();
            mem.write_u32(CTRL + TX_PROD, 1).unwrap();
        }
        fn session(mem: &GuestMemory, journal: &mut Journal, nic: &mut Nic) -> bool {
            let mut r = ExitRequests::default();
            let delivered = nic.poll(&mut ctx_of(mem, journal, 1, &mut r)).unwrap();
            guest_reply(mem);
            let mut r = ExitRequests::default();
            let mut ctx = ctx_of(mem, journal, 2, &mut r);
            nic.io_out(&mut ctx, PORT_DOORBELL, &1u32.to_le_bytes())
                .unwrap();
            delivered
        }

        let mut nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        client.send_to(b"one", nic.local_addr().unwrap()).unwrap();
        client.send_to(b"two", nic.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let log = SharedLog::default();
        let mem = memory();
        let mut journal = Journal::record(Box::new(log.clone()), Box::new(ImmediateGate));
        assert!(session(&mem, &mut journal, &mut nic));
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:one");
        assert_eq!(mem.read_u32(CTRL + RX_PROD).unwrap(), 2);
        assert_eq!(mem.read_u32(CTRL + TX_CONS).unwrap(), 1);

        let bytes = log.bytes();
        let source = LogFileReader::from_bytes(std::path::Path::new("mem"), &bytes).unwrap();
        let mem2 = memory();
        let mut journal2 = Journal::replay(Box::new(source), Box::new(ImmediateGate));
        assert!(session(&mem2, &mut journal2, &mut Nic::detached()));
        let ring = |m: &GuestMemory| m.read_vec(CTRL, 0x1000 + 2 * SLOT_SIZE as usize).unwrap();
        assert_eq!(ring(&mem2), ring(&mem));
        assert_eq!(
            mem2.read_vec(TX_RING, 64).unwrap(),
            mem.read_vec(TX_RING, 64).unwrap()
        );

        // A guest that corrupts its reply is caught as divergence at the doorbell.
        let source = LogFileReader::from_bytes(std::path::Path::new("mem"), &bytes).unwrap();
        let mem3 = memory();
        let mut journal3 = Journal::replay(Box::new(source), Box::new(ImmediateGate));
        let mut nic3 = Nic::detached();
        let mut r = ExitRequests::default();
        nic3.poll(&mut ctx_of(&mem3, &mut journal3, 1, &mut r))
            .unwrap();
        guest_reply(&mem3);
        mem3.write(TX_RING + SLOT_DATA, b"XX").unwrap();
        let mut r = ExitRequests::default();
        let mut ctx = ctx_of(&mem3, &mut journal3, 2, &mut r);
        let e = nic3
            .io_out(&mut ctx, PORT_DOORBELL, &1u32.to_le_bytes())
            .unwrap_err();
        assert!(matches!(e, DeviceError::Log(_)), "{e}");
    }

    #[test]
    fn a_bad_tx_slot_stops_with_an_error_naming_it() {
        use crate::device::ExitRequests;
        use crate::journal::Journal;
        use crate::output::ImmediateGate;

        let mem = memory();
        let mut journal = Journal::live(Box::new(ImmediateGate));
        let mut nic = Nic::new("127.0.0.1:0".parse().unwrap()).unwrap();
        mem.write_u32(TX_RING, 5000).unwrap();
        mem.write_u32(CTRL + TX_PROD, 1).unwrap();
        let mut r = ExitRequests::default();
        let mut ctx = ExitCtx {
            mem: &mem,
            journal: &mut journal,
            ordinal: 1,
            requests: &mut r,
        };
        let e = nic
            .io_out(&mut ctx, PORT_DOORBELL, &[0; 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tx slot 0") && e.contains("length 5000"), "{e}");
        mem.write_u32(TX_RING, 10).unwrap();
        let e = nic
            .io_out(&mut ctx, PORT_DOORBELL, &[0; 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad peer address"), "{e}");
        mem.write_u32(CTRL + TX_PROD, 300).unwrap();
        let e = nic
            .io_out(&mut ctx, PORT_DOORBELL, &[0; 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tx_prod 300"), "{e}");
        // A 1-byte doorbell is refused.
        let e = nic.io_out(&mut ctx, PORT_DOORBELL, &[0]).unwrap_err();
        assert!(matches!(e, DeviceError::Unsupported { size: 1, .. }), "{e}");
    }
}

//! The dns codec (`ftvm_dnsproto`): datagrams served in turn by a `Server` on
//! the built-in zone get a reply that fits `out` and parses, or no reply
//! (too short, or a response), never a panic; `Message::parse` checks any
//! datagram or gives a `DnsDecodeError`, and a checked message yields exactly
//! the records its header counts.
//!
//! Input: up to 8 datagrams, each after a 2-byte big-endian length (the last
//! one takes what is left), so an UPDATE can change the zone a later query
//! reads; each datagram comes from one of two peers.
#![no_main]

use ftvm_dnsproto::{
    BUILTIN_ZONE, CLASSIC_UDP_SIZE, DupSlot, HEADER_LEN, MAX_REPLY, Message, PEER_LEN, RecordSlot,
    Section, Server, opcode,
};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// Parses `d`; a checked message's sections iterate to their counts.
fn check_parse(d: &[u8]) -> Option<Message<'_>> {
    let m = Message::parse(d).ok()?;
    if m.header.qdcount > 0 {
        assert!(m.question().is_some(), "checked question unreadable");
    }
    for s in [Section::Answer, Section::Authority, Section::Additional] {
        assert_eq!(
            m.records(s).count(),
            usize::from(m.header.count(s)),
            "{s:?}"
        );
    }
    Some(m)
}

type VecServer = Server<Vec<RecordSlot>, Vec<u32>, Vec<DupSlot>>;

/// The built-in zone (14 records) in 32 slots, loaded once: each input
/// is served on a copy (loading the zone costs ten times a copy).
fn loaded() -> &'static VecServer {
    static SERVER: OnceLock<VecServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut s = Server::new(
            vec![RecordSlot::EMPTY; 32],
            vec![0u32; 32],
            vec![DupSlot::EMPTY; 4],
        );
        s.load_master(BUILTIN_ZONE)
            .expect("the built-in zone loads");
        s
    })
}

fuzz_target!(|data: &[u8]| {
    let mut server = loaded().clone();
    let mut out = [0u8; MAX_REPLY];
    let mut rest = data;
    for i in 0..8 {
        let d = match rest {
            [hi, lo, tail @ ..] if i < 7 => {
                let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
                let (d, r) = tail.split_at(n);
                rest = r;
                d
            }
            _ => std::mem::take(&mut rest),
        };
        let peer = [i as u8 & 1; PEER_LEN];
        let request = check_parse(d);
        match server.serve(d, &peer, &mut out) {
            None => assert!(
                d.len() < HEADER_LEN || d[2] & 0x80 != 0,
                "no reply to a query: {d:02x?}"
            ),
            Some(n) => {
                assert!((HEADER_LEN..=MAX_REPLY).contains(&n), "reply of {n} bytes");
                let r = &out[..n];
                assert_eq!(&r[..2], &d[..2], "the id");
                assert_eq!(r[2] & 0xf8, 0x80 | (d[2] & 0x78), "QR and the opcode");
                assert!(
                    check_parse(r).is_some(),
                    "our reply does not parse: {r:02x?}"
                );
                if let Some(m) = request
                    && m.header.opcode() == opcode::QUERY
                    && m.edns.is_none()
                {
                    assert!(n <= CLASSIC_UDP_SIZE, "{n}-byte reply without EDNS");
                }
            }
        }
        if rest.is_empty() {
            break;
        }
    }
});

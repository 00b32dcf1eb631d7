//! Helpers shared by the test files: a server over the built-in zone, and
//! messages built and read with hickory-proto (an independent DNS codec).
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ftvm_dnsproto::host::{HostServer, host_server};
use ftvm_dnsproto::{BUILTIN_ZONE, MAX_REPLY};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// The peer every helper sends from.
pub const PEER: [u8; 24] = [
    4, 0, 0x35, 0x82, 0, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A server over the built-in zone, 256 record slots, a window of 8 updates.
pub fn server() -> HostServer {
    sized(256, 8)
}

/// A server over the built-in zone with `records` slots and `dups` dup slots.
pub fn sized(records: usize, dups: usize) -> HostServer {
    let mut s = host_server(records, dups);
    s.load_master(BUILTIN_ZONE)
        .expect("the built-in zone loads");
    s
}

pub fn name(s: &str) -> Name {
    Name::from_str(s).expect("test names are valid")
}

/// Serves raw bytes from `peer`.
pub fn raw_from(s: &mut HostServer, bytes: &[u8], peer: &[u8]) -> Option<Vec<u8>> {
    let mut out = [0u8; MAX_REPLY];
    s.serve(bytes, peer, &mut out).map(|n| out[..n].to_vec())
}

/// Serves raw bytes from [`PEER`].
pub fn raw(s: &mut HostServer, bytes: &[u8]) -> Option<Vec<u8>> {
    raw_from(s, bytes, &PEER)
}

pub fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().expect("hickory encodes the test message")
}

/// Sends `m` and decodes the reply with hickory (which must accept it).
pub fn ask(s: &mut HostServer, m: &Message) -> Message {
    let reply = raw(s, &bytes(m)).expect("a reply");
    Message::from_vec(&reply)
        .unwrap_or_else(|e| panic!("hickory rejects our reply {reply:02x?}: {e}"))
}

/// A query as dig sends it (RD set, no EDNS).
pub fn query(qname: &str, t: RecordType) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), t));
    m
}

/// `m` with an OPT advertising `size`.
pub fn with_edns(mut m: Message, size: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(size);
    m.set_edns(e);
    m
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

pub fn a(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::A(A(Ipv4Addr::from_str(ip).unwrap())),
    )
}

pub fn aaaa(owner: &str, ttl: u32, ip: &str) -> Record {
    Record::from_rdata(
        name(owner),
        ttl,
        RData::AAAA(AAAA(Ipv6Addr::from_str(ip).unwrap())),
    )
}

pub fn txt(owner: &str, ttl: u32, strings: &[&str]) -> Record {
    let data = TXT::new(strings.iter().map(|s| s.to_string()).collect());
    Record::from_rdata(name(owner), ttl, RData::TXT(data))
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

pub fn ns(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::NS(NS(name(target))))
}

pub fn mx(owner: &str, ttl: u32, pref: u16, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::MX(MX::new(pref, name(target))))
}

pub fn soa(serial: u32) -> Record {
    let data = SOA::new(
        name("ns1.example.test."),
        name("hostmaster.example.test."),
        serial,
        3600,
        600,
        86400,
        60,
    );
    Record::from_rdata(name("example.test."), 300, RData::SOA(data))
}

/// A record of class `class` with no data (RFC 2136 deletes and prerequisites).
pub fn empty(owner: &str, t: RecordType, class: DNSClass) -> Record {
    let mut r = Record::update0(name(owner), 0, t);
    r.dns_class = class;
    r
}

/// `r` with class NONE and TTL 0 (delete this record; prerequisite "RRset absent" needs `empty`).
pub fn none(mut r: Record) -> Record {
    r.dns_class = DNSClass::NONE;
    r.ttl = 0;
    r
}

/// An UPDATE of `zone` with prerequisites and updates.
pub fn update(zone: &str, prereqs: Vec<Record>, updates: Vec<Record>) -> Message {
    let mut m = Message::new(0x5150, MessageType::Query, OpCode::Update);
    let mut z = Query::query(name(zone), RecordType::SOA);
    z.set_query_class(DNSClass::IN);
    m.add_query(z);
    m.answers = prereqs;
    m.authorities = updates;
    m
}

/// The answer records of `qname`/`t` as (owner, type, rdata) text, sorted.
pub fn answers(s: &mut HostServer, qname: &str, t: RecordType) -> Vec<String> {
    let r = ask(s, &query(qname, t));
    let mut v: Vec<String> = r
        .answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect();
    v.sort();
    v
}

/// The zone's SOA serial, asked over the wire.
pub fn serial(s: &mut HostServer) -> u32 {
    let r = ask(s, &query("example.test.", RecordType::SOA));
    match &r.answers[0].data {
        RData::SOA(soa) => soa.serial,
        other => panic!("SOA answer expected, got {other:?}"),
    }
}

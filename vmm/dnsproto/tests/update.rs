//! RFC 2136 dynamic updates built with hickory-proto, and the duplicate table.

mod common;

use common::*;
use ftvm_dnsproto::host::host_server;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RecordType};

fn apply(
    s: &mut ftvm_dnsproto::host::HostServer,
    prereqs: Vec<hickory_proto::rr::Record>,
    updates: Vec<hickory_proto::rr::Record>,
) -> ResponseCode {
    let r = ask(s, &update("example.test.", prereqs, updates));
    assert_eq!(r.metadata.op_code, hickory_proto::op::OpCode::Update);
    assert_eq!(r.queries.len(), 1, "the zone section is echoed");
    rcode(&r)
}

#[test]
fn adds_and_deletes_change_the_zone_and_bump_the_serial_once_per_update() {
    let mut s = server();
    assert_eq!(serial(&mut s), 1);
    let rc = apply(
        &mut s,
        vec![],
        vec![
            a("new.example.test.", 120, "198.51.100.7"),
            a("new.example.test.", 120, "198.51.100.8"),
            txt("new.example.test.", 120, &["hi"]),
        ],
    );
    assert_eq!(rc, ResponseCode::NoError);
    assert_eq!(serial(&mut s), 2, "three records, one update, one bump");
    assert_eq!(
        answers(&mut s, "new.example.test.", RecordType::A),
        [
            "new.example.test. A 198.51.100.7",
            "new.example.test. A 198.51.100.8"
        ]
    );
    // Delete one record (class NONE), then the RRset (class ANY), then the name.
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![none(a("new.example.test.", 0, "198.51.100.7"))]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        answers(&mut s, "new.example.test.", RecordType::A),
        ["new.example.test. A 198.51.100.8"]
    );
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![empty("new.example.test.", RecordType::A, DNSClass::ANY)]
        ),
        ResponseCode::NoError
    );
    assert!(answers(&mut s, "new.example.test.", RecordType::A).is_empty());
    assert_eq!(
        answers(&mut s, "new.example.test.", RecordType::TXT).len(),
        1
    );
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![empty("new.example.test.", RecordType::ANY, DNSClass::ANY)]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        rcode(&ask(&mut s, &query("new.example.test.", RecordType::TXT))),
        ResponseCode::NXDomain
    );
    assert_eq!(serial(&mut s), 5);
    assert_eq!(s.stats().updates_applied, 4);
}

#[test]
fn an_update_that_changes_nothing_keeps_the_serial() {
    let mut s = server();
    // Already there with this TTL; deleting what is absent.
    let rc = apply(
        &mut s,
        vec![],
        vec![
            a("www.example.test.", 300, "192.0.2.10"),
            none(a("www.example.test.", 0, "203.0.113.1")),
            empty("nothing.example.test.", RecordType::ANY, DNSClass::ANY),
        ],
    );
    assert_eq!(rc, ResponseCode::NoError);
    assert_eq!(serial(&mut s), 1);
    // The same record with a new TTL: the RRset takes it, the zone changed.
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![a("www.example.test.", 30, "192.0.2.10")]
        ),
        ResponseCode::NoError
    );
    assert_eq!(serial(&mut s), 2);
    let r = ask(&mut s, &query("www.example.test.", RecordType::A));
    assert_eq!(r.answers[0].ttl, 30);
}

#[test]
fn every_kind_of_prerequisite() {
    let mut s = server();
    let add = || vec![a("p.example.test.", 60, "198.51.100.1")];
    // Name in use / not in use.
    assert_eq!(
        apply(
            &mut s,
            vec![empty("p.example.test.", RecordType::ANY, DNSClass::ANY)],
            add()
        ),
        ResponseCode::NXDomain
    );
    assert_eq!(
        apply(
            &mut s,
            vec![empty("www.example.test.", RecordType::ANY, DNSClass::NONE)],
            add()
        ),
        ResponseCode::YXDomain
    );
    assert_eq!(
        apply(
            &mut s,
            vec![empty("p.example.test.", RecordType::ANY, DNSClass::NONE)],
            add()
        ),
        ResponseCode::NoError
    );
    // An empty non-terminal is not "in use".
    assert_eq!(
        apply(
            &mut s,
            vec![empty("deep.example.test.", RecordType::ANY, DNSClass::ANY)],
            vec![]
        ),
        ResponseCode::NXDomain
    );
    // RRset exists / does not exist (value independent).
    assert_eq!(
        apply(
            &mut s,
            vec![empty("www.example.test.", RecordType::MX, DNSClass::ANY)],
            vec![]
        ),
        ResponseCode::NXRRSet
    );
    assert_eq!(
        apply(
            &mut s,
            vec![empty("www.example.test.", RecordType::A, DNSClass::NONE)],
            vec![]
        ),
        ResponseCode::YXRRSet
    );
    assert_eq!(
        apply(
            &mut s,
            vec![empty("www.example.test.", RecordType::A, DNSClass::ANY)],
            vec![]
        ),
        ResponseCode::NoError
    );
    // Value dependent: exactly the records of the RRset, duplicates ignored.
    let ns = |t: &str| {
        let mut r = ns("example.test.", 0, t);
        r.ttl = 0;
        r
    };
    assert_eq!(
        apply(&mut s, vec![ns("ns1.example.test.")], vec![]),
        ResponseCode::NXRRSet,
        "a subset"
    );
    assert_eq!(
        apply(
            &mut s,
            vec![ns("ns1.example.test."), ns("ns2.example.test.")],
            vec![]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        apply(
            &mut s,
            vec![
                ns("NS2.example.test."),
                ns("ns1.example.test."),
                ns("ns1.example.test.")
            ],
            vec![]
        ),
        ResponseCode::NoError,
        "order, case and repeats do not matter"
    );
    assert_eq!(
        apply(
            &mut s,
            vec![
                ns("ns1.example.test."),
                ns("ns2.example.test."),
                ns("ns3.example.test.")
            ],
            vec![]
        ),
        ResponseCode::NXRRSet,
        "a superset"
    );
    // A failed prerequisite applies nothing.
    assert_eq!(serial(&mut s), 2);
}

#[test]
fn malformed_updates_are_refused_with_the_rfc_codes() {
    let mut s = server();
    // Prerequisite TTL must be 0.
    let mut p = empty("www.example.test.", RecordType::A, DNSClass::ANY);
    p.ttl = 5;
    assert_eq!(apply(&mut s, vec![p], vec![]), ResponseCode::FormErr);
    // Names outside the zone.
    assert_eq!(
        apply(&mut s, vec![], vec![a("www.example.com.", 60, "1.2.3.4")]),
        ResponseCode::NotZone
    );
    assert_eq!(
        apply(
            &mut s,
            vec![empty("x.other.", RecordType::A, DNSClass::ANY)],
            vec![]
        ),
        ResponseCode::NotZone
    );
    // Another zone, or another zone class.
    let r = ask(
        &mut s,
        &update(
            "example.com.",
            vec![],
            vec![a("www.example.com.", 60, "1.2.3.4")],
        ),
    );
    assert_eq!(rcode(&r), ResponseCode::NotAuth);
    let mut ch = update("example.test.", vec![], vec![]);
    ch.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(rcode(&ask(&mut s, &ch)), ResponseCode::NotAuth);
    // Zone section of a type other than SOA.
    let mut zt = update("example.test.", vec![], vec![]);
    zt.queries[0].query_type = RecordType::A;
    assert_eq!(rcode(&ask(&mut s, &zt)), ResponseCode::FormErr);
    // Deleting with class ANY and a TTL; adding a meta type.
    let mut d = empty("www.example.test.", RecordType::A, DNSClass::ANY);
    d.ttl = 1;
    assert_eq!(apply(&mut s, vec![], vec![d]), ResponseCode::FormErr);
    let mut meta = a("www.example.test.", 60, "1.2.3.4");
    meta.data = hickory_proto::rr::RData::Update0(RecordType::AXFR);
    assert_eq!(apply(&mut s, vec![], vec![meta]), ResponseCode::FormErr);
    // The first bad record stops everything before it too (all or nothing).
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![
                a("ok.example.test.", 60, "1.2.3.4"),
                a("bad.example.com.", 60, "1.2.3.4")
            ]
        ),
        ResponseCode::NotZone
    );
    assert_eq!(
        rcode(&ask(&mut s, &query("ok.example.test.", RecordType::A))),
        ResponseCode::NXDomain
    );
    assert_eq!(serial(&mut s), 1);
}

#[test]
fn the_apex_keeps_its_soa_and_ns_and_cnames_keep_their_rules() {
    let mut s = server();
    let rc = apply(
        &mut s,
        vec![],
        vec![
            empty("example.test.", RecordType::ANY, DNSClass::ANY),
            empty("example.test.", RecordType::SOA, DNSClass::ANY),
            empty("example.test.", RecordType::NS, DNSClass::ANY),
            none(soa(1)),
        ],
    );
    assert_eq!(rc, ResponseCode::NoError);
    let left = answers(&mut s, "example.test.", RecordType::ANY);
    assert_eq!(left.len(), 3, "SOA and two NS stay: {left:?}");
    // Deleting both NS records one by one keeps the last.
    let del = |t: &str| {
        let mut r = ns("example.test.", 0, t);
        r.dns_class = DNSClass::NONE;
        r
    };
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![del("ns1.example.test."), del("ns2.example.test.")]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        answers(&mut s, "example.test.", RecordType::NS),
        ["example.test. NS ns2.example.test."]
    );
    // A CNAME beside other data is ignored; other data beside a CNAME too;
    // a CNAME replaces a CNAME.
    let before = serial(&mut s);
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![cname("www.example.test.", 60, "mail.example.test.")]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        apply(&mut s, vec![], vec![a("ftp.example.test.", 60, "1.2.3.4")]),
        ResponseCode::NoError
    );
    assert_eq!(serial(&mut s), before, "both ignored");
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![cname("ftp.example.test.", 60, "mail.example.test.")]
        ),
        ResponseCode::NoError
    );
    assert_eq!(
        answers(&mut s, "ftp.example.test.", RecordType::CNAME),
        ["ftp.example.test. CNAME mail.example.test."]
    );
}

#[test]
fn an_soa_update_sets_the_serial_only_forward() {
    let mut s = server();
    assert_eq!(apply(&mut s, vec![], vec![soa(1)]), ResponseCode::NoError);
    assert_eq!(serial(&mut s), 1, "not greater: ignored");
    assert_eq!(
        apply(
            &mut s,
            vec![],
            vec![soa(100), a("x.example.test.", 60, "1.1.1.1")]
        ),
        ResponseCode::NoError
    );
    assert_eq!(serial(&mut s), 100, "set explicitly: no extra bump");
    assert_eq!(
        apply(&mut s, vec![], vec![a("y.example.test.", 60, "1.1.1.1")]),
        ResponseCode::NoError
    );
    assert_eq!(serial(&mut s), 101);
    // RFC 1982: 2^31 - 1 ahead is greater, wrapping past 0.
    assert_eq!(
        apply(&mut s, vec![], vec![soa(101u32.wrapping_add(0x7fff_ffff))]),
        ResponseCode::NoError
    );
    assert_eq!(serial(&mut s), 101u32.wrapping_add(0x7fff_ffff));
}

#[test]
fn a_full_zone_refuses_the_whole_update_with_servfail() {
    let mut s = sized(20, 8);
    let n = s.zone().len();
    let room = s.zone().capacity() - n;
    let recs = (0..=room)
        .map(|i| a(&format!("f{i}.example.test."), 60, "1.2.3.4"))
        .collect();
    assert_eq!(apply(&mut s, vec![], recs), ResponseCode::ServFail);
    assert_eq!(s.zone().len(), n, "nothing applied");
    let recs = (0..room)
        .map(|i| a(&format!("f{i}.example.test."), 60, "1.2.3.4"))
        .collect();
    assert_eq!(apply(&mut s, vec![], recs), ResponseCode::NoError);
    assert_eq!(s.zone().len(), s.zone().capacity());
}

#[test]
fn a_retransmitted_update_is_answered_from_the_table_and_applied_once() {
    let mut s = server();
    // Not idempotent: add only while the name does not exist.
    let m = update(
        "example.test.",
        vec![empty("once.example.test.", RecordType::ANY, DNSClass::NONE)],
        vec![a("once.example.test.", 60, "198.51.100.1")],
    );
    let wire = bytes(&m);
    let first = raw(&mut s, &wire).unwrap();
    assert_eq!(first[3] & 0xf, 0);
    let d = s.digest();
    // The retry: same bytes, same source. The stored reply, nothing applied.
    for _ in 0..3 {
        assert_eq!(raw(&mut s, &wire).unwrap(), first);
    }
    assert_eq!(s.stats().duplicates, 3);
    assert_eq!(s.digest(), d);
    assert_eq!(serial(&mut s), 2);
    // From another port it is another client: applied, and its prerequisite fails.
    let mut other = PEER;
    other[2] ^= 1;
    let r = raw_from(&mut s, &wire, &other).unwrap();
    assert_eq!(r[3] & 0xf, 6, "YXDOMAIN");
    // Same source and id but another update: not a retry.
    let m2 = update(
        "example.test.",
        vec![],
        vec![a("twice.example.test.", 60, "198.51.100.2")],
    );
    assert_eq!(raw(&mut s, &bytes(&m2)).unwrap()[3] & 0xf, 0);
    assert_eq!(serial(&mut s), 3);
    assert_eq!(s.stats().duplicates, 3);
}

#[test]
fn the_window_is_the_last_n_updates() {
    let mut s = sized(256, 4);
    assert_eq!(s.dups().window(), 4);
    let first = bytes(&update(
        "example.test.",
        vec![],
        vec![a("w.example.test.", 60, "198.51.100.1")],
    ));
    raw(&mut s, &first).unwrap();
    let del = |i: u16| {
        let mut m = update(
            "example.test.",
            vec![],
            vec![empty("w.example.test.", RecordType::A, DNSClass::ANY)],
        );
        m.metadata.id = 1000 + i;
        bytes(&m)
    };
    // Three other updates: the first is still remembered.
    for i in 0..3 {
        raw(&mut s, &del(i)).unwrap();
    }
    raw(&mut s, &first).unwrap();
    assert_eq!(s.stats().duplicates, 1);
    assert!(
        answers(&mut s, "w.example.test.", RecordType::A).is_empty(),
        "not re-added"
    );
    // A fourth pushes it out: the same datagram is applied again.
    raw(&mut s, &del(3)).unwrap();
    raw(&mut s, &first).unwrap();
    assert_eq!(s.stats().duplicates, 1);
    assert_eq!(answers(&mut s, "w.example.test.", RecordType::A).len(), 1);
}

#[test]
fn servers_fed_the_same_datagrams_have_the_same_digest() {
    let msgs: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            let mut m = if i % 3 == 2 {
                update(
                    "example.test.",
                    vec![],
                    vec![empty(
                        &format!("n{}.example.test.", i - 1),
                        RecordType::ANY,
                        DNSClass::ANY,
                    )],
                )
            } else {
                update(
                    "example.test.",
                    vec![],
                    vec![a(&format!("n{i}.example.test."), 60, "198.51.100.3")],
                )
            };
            m.metadata.id = i;
            bytes(&m)
        })
        .collect();
    let run = |msgs: &[Vec<u8>]| {
        let mut s = sized(256, 16);
        for m in msgs {
            raw(&mut s, m).unwrap();
            raw(&mut s, &bytes(&query("www.example.test.", RecordType::A))).unwrap();
        }
        (s.digest(), s.zone().digest())
    };
    let (d1, z1) = run(&msgs);
    assert_eq!(run(&msgs), (d1, z1));
    let (d2, z2) = run(&msgs[..49]);
    assert_ne!(d1, d2);
    assert_ne!(z1, z2);
    // An empty server differs from the loaded one.
    assert_ne!(host_server(256, 16).digest(), sized(256, 16).digest());
}

#[test]
fn the_worst_value_dependent_prerequisites_a_datagram_holds_are_checked_quickly() {
    let mut s = server();
    // As many 16-byte prerequisites (compressed owner, A data) as 2 KiB holds,
    // all the one record of www's A RRset: every one is found, and each is
    // compared with all before it (the quadratic case).
    let prereqs: Vec<_> = (0..120u32)
        .map(|_| {
            let mut r = a("www.example.test.", 0, "192.0.2.10");
            r.ttl = 0;
            r
        })
        .collect();
    let wire = bytes(&update("example.test.", prereqs, vec![]));
    assert!(wire.len() <= 2016, "{} bytes", wire.len());
    let t = std::time::Instant::now();
    let r = raw(&mut s, &wire).unwrap();
    let took = t.elapsed();
    println!(
        "{} prerequisites in {} bytes checked in {took:?}",
        120,
        wire.len()
    );
    assert_eq!(r[3] & 0xf, 0, "NOERROR: the RRset is exactly that record");
    assert!(took < std::time::Duration::from_millis(200), "{took:?}");
}

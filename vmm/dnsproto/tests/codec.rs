//! The codec against hickory-proto: queries built by hickory, our replies read
//! by hickory; messages hickory compresses read by our parser; and hostile
//! datagrams (truncation, pointer loops, labels past the end, huge counts).

mod common;

use common::*;
use ftvm_dnsproto::rdata::{MAX_RDATA, canonical};
use ftvm_dnsproto::{DnsDecodeError, Message as OurMessage, Name as OurName, Section};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

#[test]
fn a_query_is_answered_authoritatively_with_the_question_echoed() {
    let mut s = server();
    let r = ask(&mut s, &query("www.example.test.", RecordType::A));
    assert_eq!(r.metadata.id, 0x4242);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert!(!r.metadata.recursion_available && !r.metadata.truncation);
    assert_eq!(rcode(&r), ResponseCode::NoError);
    assert_eq!(r.queries.len(), 1);
    assert_eq!(r.queries[0].name().to_string(), "www.example.test.");
    assert_eq!(
        answers(&mut s, "www.example.test.", RecordType::A),
        ["www.example.test. A 192.0.2.10"]
    );
    assert_eq!(
        answers(&mut s, "www.example.test.", RecordType::AAAA),
        ["www.example.test. AAAA 2001:db8::10"]
    );
    assert!(
        r.edns.is_none(),
        "no OPT in the reply to a query without one"
    );
}

#[test]
fn every_built_in_type_is_served() {
    let mut s = server();
    assert_eq!(
        answers(&mut s, "example.test.", RecordType::TXT),
        ["example.test. TXT v=ftvm1an authoritative zone served by an ftvm guest"]
    );
    assert_eq!(
        answers(&mut s, "example.test.", RecordType::MX),
        ["example.test. MX 10 mail.example.test."]
    );
    assert_eq!(
        answers(&mut s, "example.test.", RecordType::SOA),
        ["example.test. SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60"]
    );
    let r = ask(&mut s, &query("example.test.", RecordType::NS));
    let glue: Vec<String> = r
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(r.answers.len(), 2);
    assert_eq!(
        glue,
        ["ns1.example.test. 127.0.0.1", "ns2.example.test. 127.0.0.2"]
    );
    let mx = ask(&mut s, &query("example.test.", RecordType::MX));
    assert_eq!(mx.additionals.len(), 1, "the MX target's address");
}

#[test]
fn names_compare_without_case_and_the_question_keeps_its_case() {
    let mut s = server();
    // hickory lower-cases names it writes: spell the query out.
    let mut q = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x03WwW\x07ExAmPlE\x04tEsT\x00\x00\x01\x00\x01");
    let r = Message::from_vec(&raw(&mut s, &q).unwrap()).unwrap();
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.queries[0].name().to_string(), "WwW.ExAmPlE.tEsT.");
    assert_eq!(r.answers[0].name.to_string(), "WwW.ExAmPlE.tEsT.");
}

#[test]
fn a_cname_is_followed_inside_the_zone() {
    let mut s = server();
    assert_eq!(
        answers(&mut s, "alias.example.test.", RecordType::A),
        [
            "alias.example.test. CNAME ftp.example.test.",
            "ftp.example.test. CNAME www.example.test.",
            "www.example.test. A 192.0.2.10"
        ]
    );
    // Asked for the CNAME itself: just the CNAME.
    assert_eq!(
        answers(&mut s, "ftp.example.test.", RecordType::CNAME),
        ["ftp.example.test. CNAME www.example.test."]
    );
}

#[test]
fn nxdomain_and_nodata_carry_the_soa_with_the_negative_ttl() {
    let mut s = server();
    let nx = ask(&mut s, &query("nope.example.test.", RecordType::A));
    assert_eq!(rcode(&nx), ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative && nx.answers.is_empty());
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].name.to_string(), "example.test.");
    assert_eq!(nx.authorities[0].ttl, 60, "min(SOA TTL 300, minimum 60)");
    let nodata = ask(&mut s, &query("www.example.test.", RecordType::MX));
    assert_eq!(rcode(&nodata), ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1);
    // deep.example.test and b.deep.example.test own nothing but have a
    // name below them: NODATA, not NXDOMAIN.
    for ent in ["deep.example.test.", "b.deep.example.test."] {
        let r = ask(&mut s, &query(ent, RecordType::A));
        assert_eq!(rcode(&r), ResponseCode::NoError, "{ent}");
        assert_eq!(r.authorities.len(), 1, "{ent}");
    }
    let below = ask(&mut s, &query("x.a.b.deep.example.test.", RecordType::A));
    assert_eq!(rcode(&below), ResponseCode::NXDomain);
}

#[test]
fn any_returns_every_record_of_the_node() {
    let mut s = server();
    let r = ask(&mut s, &query("example.test.", RecordType::ANY));
    let mut types: Vec<RecordType> = r.answers.iter().map(|r| r.record_type()).collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            RecordType::A,
            RecordType::NS,
            RecordType::SOA,
            RecordType::MX,
            RecordType::TXT
        ]
    );
    assert_eq!(r.answers.len(), 6);
}

#[test]
fn names_outside_the_zone_are_refused_and_zone_transfers_not_implemented() {
    let mut s = server();
    let r = ask(&mut s, &query("www.example.com.", RecordType::A));
    assert_eq!(rcode(&r), ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
    let r = ask(&mut s, &query("test.", RecordType::SOA));
    assert_eq!(rcode(&r), ResponseCode::Refused, "the parent of the apex");
    for t in [RecordType::AXFR, RecordType::IXFR] {
        let r = ask(&mut s, &query("example.test.", t));
        assert_eq!(rcode(&r), ResponseCode::NotImp, "{t}");
    }
    let mut hs = query("www.example.test.", RecordType::A);
    hs.queries[0].set_query_class(DNSClass::HS);
    assert_eq!(rcode(&ask(&mut s, &hs)), ResponseCode::Refused);
}

#[test]
fn the_digest_is_answered_in_class_chaos() {
    let mut s = server();
    let mut q = query("digest.ftvm.", RecordType::TXT);
    q.queries[0].set_query_class(DNSClass::CH);
    let r = ask(&mut s, &q);
    assert_eq!(rcode(&r), ResponseCode::NoError);
    let RData::TXT(t) = &r.answers[0].data else {
        panic!("TXT expected: {:?}", r.answers)
    };
    assert_eq!(t.to_string(), format!("{:016x}", s.digest()));
    let mut other = query("version.bind.", RecordType::TXT);
    other.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(rcode(&ask(&mut s, &other)), ResponseCode::Refused);
}

#[test]
fn edns_is_echoed_with_our_udp_size_and_bad_versions_get_badvers() {
    let mut s = server();
    let r = ask(
        &mut s,
        &with_edns(query("www.example.test.", RecordType::A), 4096),
    );
    let e = r.edns.as_ref().expect("OPT echoed");
    assert_eq!(e.max_payload(), 1232);
    assert_eq!(e.version(), 0);
    let mut q = with_edns(query("www.example.test.", RecordType::A), 1232);
    q.edns.as_mut().unwrap().set_version(1);
    let r = ask(&mut s, &q);
    // hickory names rcode 16 BADSIG or BADVERS: both are 16 (RFC 6891, 8945).
    assert_eq!(u16::from(rcode(&r)), 16);
    assert!(r.answers.is_empty());
}

#[test]
fn other_opcodes_are_not_implemented_and_responses_are_not_answered() {
    let mut s = server();
    for op in [OpCode::Status, OpCode::Notify] {
        let mut m = query("example.test.", RecordType::SOA);
        m.metadata.op_code = op;
        let r = ask(&mut s, &m);
        assert_eq!(rcode(&r), ResponseCode::NotImp, "{op:?}");
        assert_eq!(r.metadata.op_code, op);
    }
    let mut resp = query("www.example.test.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(raw(&mut s, &bytes(&resp)), None);
    for n in 0..12 {
        assert_eq!(raw(&mut s, &vec![0u8; n]), None, "{n} bytes");
    }
    assert_eq!(s.stats().dropped, 13);
}

#[test]
fn bad_questions_get_formerr() {
    let mut s = server();
    let mut two = query("www.example.test.", RecordType::A);
    two.add_query(hickory_proto::op::Query::query(
        name("ftp.example.test."),
        RecordType::A,
    ));
    assert_eq!(rcode(&ask(&mut s, &two)), ResponseCode::FormErr);
    let mut none = query("www.example.test.", RecordType::A);
    none.queries.clear();
    assert_eq!(rcode(&ask(&mut s, &none)), ResponseCode::FormErr);
    let mut with_answer = query("www.example.test.", RecordType::A);
    with_answer.add_answer(a("www.example.test.", 1, "1.2.3.4"));
    assert_eq!(rcode(&ask(&mut s, &with_answer)), ResponseCode::FormErr);
    let opt = query("www.example.test.", RecordType::OPT);
    assert_eq!(rcode(&ask(&mut s, &opt)), ResponseCode::FormErr);
}

/// A zone with one name owning many TXT records, for size limits.
fn big_txt_server() -> ftvm_dnsproto::host::HostServer {
    let mut s = sized(256, 8);
    let long = "x".repeat(200);
    let recs = (0..12)
        .map(|i| txt("big.example.test.", 60, &[&format!("{i:02}{long}")]))
        .collect();
    let r = ask(&mut s, &update("example.test.", vec![], recs));
    assert_eq!(rcode(&r), ResponseCode::NoError);
    s
}

#[test]
fn answers_larger_than_the_client_takes_are_truncated_with_tc() {
    let mut s = big_txt_server();
    // No EDNS: 512 bytes at most; two 203-byte strings fit, TC set.
    let raw512 = raw(&mut s, &bytes(&query("big.example.test.", RecordType::TXT))).unwrap();
    assert!(raw512.len() <= 512, "{}", raw512.len());
    let r = Message::from_vec(&raw512).unwrap();
    assert!(r.metadata.truncation);
    assert_eq!(r.answers.len(), 2);
    // EDNS 4096 is capped at our 1232: five strings, TC.
    let q = with_edns(query("big.example.test.", RecordType::TXT), 4096);
    let raw1232 = raw(&mut s, &bytes(&q)).unwrap();
    assert!(raw1232.len() <= 1232, "{}", raw1232.len());
    let r = Message::from_vec(&raw1232).unwrap();
    assert!(r.metadata.truncation && r.edns.is_some());
    assert_eq!(r.answers.len(), 5);
    assert!(s.stats().truncated >= 2);
    // A small EDNS size below 512 still gets 512.
    let r = ask(
        &mut s,
        &with_edns(query("big.example.test.", RecordType::TXT), 100),
    );
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn replies_compress_names_and_hickory_reads_them_back() {
    let mut s = server();
    let r = raw(&mut s, &bytes(&query("example.test.", RecordType::NS))).unwrap();
    // Owners point at the question; ns1/ns2 in the rdata end in a pointer
    // to the question's name too: the reply is far below its uncompressed size.
    assert!(
        r.windows(2).filter(|w| w == &[0xc0, 0x0c]).count() >= 4,
        "{r:02x?}"
    );
    assert!(r.len() < 120, "{} bytes", r.len());
    let m = Message::from_vec(&r).unwrap();
    let targets: Vec<String> = m.answers.iter().map(|a| a.data.to_string()).collect();
    assert_eq!(targets, ["ns1.example.test.", "ns2.example.test."]);
}

/// The canonical (uncompressed, lower-case) rdata hickory writes for `d`.
fn hickory_canonical(d: &RData) -> Vec<u8> {
    let mut v = Vec::new();
    let mut e = BinEncoder::new(&mut v);
    e.set_canonical_form(true);
    d.emit(&mut e).unwrap();
    v
}

#[test]
fn our_parser_reads_what_hickory_compresses() {
    // An update message whose names hickory compresses against each other.
    let records = vec![
        a("host.example.test.", 60, "198.51.100.1"),
        aaaa("host.example.test.", 60, "2001:db8::1"),
        txt("host.example.test.", 60, &["one", "two"]),
        mx("example.test.", 60, 5, "host.example.test."),
        ns("sub.example.test.", 60, "ns.host.example.test."),
        cname("c.example.test.", 60, "host.example.test."),
        soa(7),
    ];
    let m = update("example.test.", vec![], records.clone());
    let wire = bytes(&m);
    let ours = OurMessage::parse(&wire).unwrap();
    assert_eq!(ours.header.nscount as usize, records.len());
    let z = ours.question().unwrap();
    assert_eq!(z.name.to_string(), "example.test.");
    for (mine, theirs) in ours.records(Section::Authority).zip(&records) {
        assert_eq!(mine.name.to_string(), theirs.name.to_string());
        assert_eq!(mine.rtype, u16::from(theirs.record_type()));
        assert_eq!(mine.class, 1);
        assert_eq!(mine.ttl, theirs.ttl);
        let mut buf = [0u8; MAX_RDATA];
        let n = canonical(&mine, &mut buf).unwrap();
        assert_eq!(&buf[..n], &hickory_canonical(&theirs.data)[..], "{theirs}");
    }
    // hickory did compress: the wire is shorter than the names spelled out.
    assert!(wire.windows(1).filter(|w| w[0] & 0xc0 == 0xc0).count() > 5);
}

#[test]
fn names_from_text_and_wire_agree_with_hickory() {
    for s in [
        "example.test.",
        "a.b.c.",
        ".",
        "x-y_z.example.test.",
        "UPPER.case.",
    ] {
        let ours = OurName::from_text(s, None).unwrap();
        let theirs = name(s);
        let mut v = Vec::new();
        theirs.emit(&mut BinEncoder::new(&mut v)).unwrap();
        // hickory writes names lower-cased; we keep the case as given.
        assert_eq!(ours.lowercased().as_wire(), &v[..], "{s}");
        assert_eq!(ours.lowercased().to_string(), theirs.to_string());
    }
    let origin = OurName::from_text("example.test.", None).unwrap();
    assert_eq!(
        OurName::from_text("www", Some(&origin))
            .unwrap()
            .to_string(),
        "www.example.test."
    );
    assert_eq!(OurName::from_text("@", Some(&origin)).unwrap(), origin);
    assert_eq!(
        OurName::from_text("a\\.b.c.", None).unwrap().label_count(),
        2
    );
    assert!(OurName::from_text("a..b.", None).is_err());
    assert!(OurName::from_text(&format!("{}.", "a".repeat(64)), None).is_err());
    let long = format!("{}.", ["abcdefghi"; 26].join("."));
    assert!(OurName::from_text(&long, None).is_err(), "260 bytes");
}

// ---- hostile datagrams -----------------------------------------------------

/// A header: id 0x1111, flags as given, the four counts.
fn header(flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = vec![0x11, 0x11];
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// The reply must be a FORMERR for id 0x1111 (or, if `none_ok`, nothing).
fn assert_formerr(s: &mut ftvm_dnsproto::host::HostServer, d: &[u8], what: &str) {
    let r = raw(s, d).unwrap_or_else(|| panic!("{what}: no reply"));
    assert_eq!(&r[..2], &[0x11, 0x11], "{what}");
    assert_eq!(r[2] & 0x80, 0x80, "{what}: QR");
    assert_eq!(r[3] & 0x0f, 1, "{what}: FORMERR expected, reply {r:02x?}");
    assert!(
        Message::from_vec(&r).is_ok(),
        "{what}: hickory reads the FORMERR"
    );
}

#[test]
fn every_prefix_of_a_query_is_formerr_or_unanswered() {
    let mut s = server();
    let q = bytes(&with_edns(query("www.example.test.", RecordType::A), 1232));
    for n in 0..q.len() {
        match raw(&mut s, &q[..n]) {
            None => assert!(n < 12, "{n} bytes unanswered"),
            Some(r) => assert_eq!(r[3] & 0x0f, 1, "{n} bytes: {r:02x?}"),
        }
    }
    assert_eq!(raw(&mut s, &q).unwrap()[3] & 0x0f, 0);
}

#[test]
fn compression_loops_and_forward_pointers_are_formerr() {
    let mut s = server();
    // A pointer to itself.
    let mut d = header(0x0100, [1, 0, 0, 0]);
    d.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_formerr(&mut s, &d, "self pointer");
    // Two names pointing at each other: the question's name is "a" + a
    // pointer to the answer's owner, which points back at the question.
    let mut d = header(0x0100, [1, 1, 0, 0]);
    d.extend_from_slice(&[1, b'a', 0xc0, 20, 0, 1, 0, 1]);
    d.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_formerr(&mut s, &d, "mutual pointers");
    // A label, then a pointer back to that label: a loop through one label.
    let mut d = header(0x0100, [1, 0, 0, 0]);
    d.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
    assert_formerr(&mut s, &d, "pointer back into the same name");
    // A forward pointer.
    let mut d = header(0x0100, [1, 0, 0, 0]);
    d.extend_from_slice(&[0xc0, 20, 0, 1, 0, 1, 0, 0, 3, b'w', b'w', b'w', 0]);
    assert_formerr(&mut s, &d, "forward pointer");
    // Our parser names the problem.
    let err = OurMessage::parse(&d).unwrap_err();
    assert_eq!(
        err,
        DnsDecodeError::BadPointer {
            at: 12,
            target: 20,
            limit: 12
        }
    );
    assert_eq!(
        err.to_string(),
        "compression pointer at offset 12 points to 20, must point below 12"
    );
}

#[test]
fn labels_past_the_end_reserved_label_types_and_long_names_are_formerr() {
    let mut s = server();
    let mut d = header(0x0100, [1, 0, 0, 0]);
    d.extend_from_slice(&[63, b'a', b'b']);
    assert_formerr(&mut s, &d, "label past the end");
    assert_eq!(
        OurMessage::parse(&d).unwrap_err(),
        DnsDecodeError::Truncated {
            field: "label",
            need: 76,
            have: 15
        }
    );
    for bits in [0x40u8, 0x80] {
        let mut d = header(0x0100, [1, 0, 0, 0]);
        d.extend_from_slice(&[bits | 3, b'a', b'b', b'c', 0, 0, 1, 0, 1]);
        assert_formerr(&mut s, &d, "reserved label type");
    }
    // 300 bytes of labels: longer than 255.
    let mut d = header(0x0100, [1, 0, 0, 0]);
    for _ in 0..5 {
        d.push(59);
        d.extend_from_slice(&[b'x'; 59]);
    }
    d.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_formerr(&mut s, &d, "300-byte name");
    // Pointers that chain short names into one longer than 255.
    let mut d = header(0x0100, [0, 0, 0, 5]);
    let mut prev: Option<u16> = None;
    for _ in 0..5 {
        let at = d.len() as u16;
        d.push(60);
        d.extend_from_slice(&[b'y'; 60]);
        match prev {
            Some(p) => d.extend_from_slice(&(0xc000 | p).to_be_bytes()),
            None => d.push(0),
        }
        d.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        prev = Some(at);
    }
    assert_formerr(&mut s, &d, "pointer chain longer than 255");
}

#[test]
fn counts_of_65535_with_a_short_body_are_formerr_at_once() {
    let mut s = server();
    for counts in [
        [65535, 0, 0, 0],
        [1, 65535, 0, 0],
        [1, 0, 65535, 0],
        [1, 0, 0, 65535],
        [65535; 4],
    ] {
        let mut d = header(0x0100, counts);
        d.extend_from_slice(b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
        let t = std::time::Instant::now();
        assert_formerr(&mut s, &d, &format!("counts {counts:?}"));
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
    }
    let mut up = header(0x2800, [1, 65535, 65535, 0]);
    up.extend_from_slice(b"\x07example\x04test\x00\x00\x06\x00\x01");
    assert_formerr(&mut s, &up, "update with huge counts");
}

#[test]
fn rdata_lengths_past_the_end_two_opts_and_misplaced_tsig_are_formerr() {
    let mut s = server();
    let q = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01";
    let opt = [0u8, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0];
    let mut two = header(0x0100, [1, 0, 0, 2]);
    two.extend_from_slice(q);
    two.extend_from_slice(&opt);
    two.extend_from_slice(&opt);
    assert_formerr(&mut s, &two, "two OPT records");
    let mut long = header(0x0100, [1, 0, 0, 1]);
    long.extend_from_slice(q);
    long.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0xff, 0xff, 1, 2]);
    assert_formerr(&mut s, &long, "rdlength past the end");
    let tsig = [0u8, 0, 250, 0, 255, 0, 0, 0, 0, 0, 0];
    let mut mis = header(0x0100, [1, 0, 0, 2]);
    mis.extend_from_slice(q);
    mis.extend_from_slice(&tsig);
    mis.extend_from_slice(&opt);
    assert_formerr(&mut s, &mis, "TSIG not last");
    // TSIG last: well formed, but we cannot verify it.
    let mut signed = header(0x0100, [1, 0, 0, 1]);
    signed.extend_from_slice(q);
    signed.extend_from_slice(&tsig);
    assert_eq!(raw(&mut s, &signed).unwrap()[3] & 0x0f, 9, "NOTAUTH");
    let mut trailing = header(0x0100, [1, 0, 0, 0]);
    trailing.extend_from_slice(q);
    trailing.push(0);
    assert_formerr(&mut s, &trailing, "trailing byte");
}

//! Loading zones from master-file text.

mod common;

use common::*;
use ftvm_dnsproto::host::host_server;
use ftvm_dnsproto::{NameTextError, ZoneLoadError};
use hickory_proto::rr::RecordType;

#[test]
fn the_built_in_zone_loads_with_its_apex_and_serial() {
    let s = server();
    assert_eq!(s.zone().origin().to_string(), "example.test.");
    assert_eq!(s.zone().len(), 14);
    assert_eq!(s.zone().serial(), Some(1));
}

#[test]
fn directives_relative_names_parentheses_and_generic_data() {
    let text = r#"
$ORIGIN zone.example.
$TTL 77
@ 3600 IN SOA ns.zone.example. admin ( 42 1 2 3
      4 )
  IN NS ns              ; same owner, relative target
ns A 10.0.0.1
$ORIGIN sub.zone.example.
host IN 99 AAAA ::1     ; class before ttl
txt TXT "quoted \"string\"" bare \065\066
srv SRV 1 2 53 host
gen TYPE65280 \# 3 abcdef
gen TYPE65281 \# 0
"#;
    let mut s = host_server(64, 4);
    assert_eq!(s.load_master(text).unwrap(), 8);
    assert_eq!(s.zone().serial(), Some(42));
    assert_eq!(
        answers(&mut s, "ns.zone.example.", RecordType::A),
        ["ns.zone.example. A 10.0.0.1"]
    );
    let r = ask(&mut s, &query("host.sub.zone.example.", RecordType::AAAA));
    assert_eq!(r.answers[0].ttl, 99);
    let r = ask(&mut s, &query("ns.zone.example.", RecordType::A));
    assert_eq!(r.answers[0].ttl, 77, "$TTL");
    assert_eq!(
        answers(&mut s, "txt.sub.zone.example.", RecordType::TXT),
        ["txt.sub.zone.example. TXT quoted \"string\"bareAB"]
    );
    assert_eq!(
        answers(&mut s, "srv.sub.zone.example.", RecordType::SRV),
        ["srv.sub.zone.example. SRV 1 2 53 host.sub.zone.example."]
    );
    let r = ask(
        &mut s,
        &query("gen.sub.zone.example.", RecordType::Unknown(65280)),
    );
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn errors_name_the_line_and_the_problem() {
    let soa = "@ SOA ns admin 1 2 3 4 5\n";
    let cases: Vec<(String, ZoneLoadError)> = vec![
        (
            "www A 1.2.3.4\n".into(),
            ZoneLoadError::Name {
                line: 1,
                err: NameTextError::Relative,
            },
        ),
        (
            format!("$ORIGIN x.\n{soa}www A 1.2.3\n"),
            ZoneLoadError::Rdata {
                line: 3,
                rtype: 1,
                why: "not an IPv4 address",
            },
        ),
        (
            format!("$ORIGIN x.\n{soa}www BOGUS 1\n"),
            ZoneLoadError::UnknownType { line: 3 },
        ),
        (
            format!("$ORIGIN x.\n{soa}www CH A 1.2.3.4\n"),
            ZoneLoadError::Class { line: 3 },
        ),
        (
            format!("$ORIGIN x.\n{soa}w.y. A 1.2.3.4\n"),
            ZoneLoadError::OutOfZone { line: 3 },
        ),
        (
            "$ORIGIN x.\nwww A 1.2.3.4\n".into(),
            ZoneLoadError::OutOfZone { line: 2 },
        ),
        (
            format!("$ORIGIN x.\n{soa}www TXT \"open\n"),
            ZoneLoadError::Syntax {
                line: 3,
                why: "unterminated quoted string",
            },
        ),
        (
            format!("$ORIGIN x.\n{soa}www A ( 1.2.3.4\n"),
            ZoneLoadError::Syntax {
                line: 4,
                why: "unbalanced '('",
            },
        ),
        (
            format!("$ORIGIN x.\n{soa}$INCLUDE other\n"),
            ZoneLoadError::Syntax {
                line: 3,
                why: "unknown directive (only $ORIGIN and $TTL)",
            },
        ),
        (
            format!("$ORIGIN x.\n{soa}a A 1.1.1.1\nb A 1.1.1.2\n"),
            ZoneLoadError::Full {
                line: 4,
                capacity: 2,
            },
        ),
    ];
    for (text, want) in cases {
        let mut s = host_server(2, 1);
        assert_eq!(s.load_master(&text).unwrap_err(), want, "{text}");
    }
    let e = ZoneLoadError::Rdata {
        line: 3,
        rtype: 1,
        why: "not an IPv4 address",
    };
    assert_eq!(
        e.to_string(),
        "line 3: record data of type 1: not an IPv4 address"
    );
}

#[test]
fn synthetic_hosts_fill_the_zone_for_load_tests() {
    let mut s = sized(2000, 4);
    s.add_hosts(1000).unwrap();
    assert_eq!(s.zone().len(), 1014);
    assert_eq!(
        answers(&mut s, "h999.example.test.", RecordType::A),
        ["h999.example.test. A 10.0.3.231"]
    );
    let mut small = sized(20, 4);
    assert!(small.add_hosts(100).is_err());
}

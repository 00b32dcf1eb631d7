//! Property tests: any datagram gets a reply hickory can read or no reply,
//! never a panic; random updates leave the zone equal to a simple model.

mod common;

use std::collections::BTreeMap;

use common::*;
use ftvm_dnsproto::Message as OurMessage;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use proptest::prelude::*;

/// Checks a reply to `d`: the request's id and opcode, QR set, readable by
/// hickory. `None` is allowed only for short datagrams and responses.
fn check_reply(d: &[u8], r: Option<Vec<u8>>) -> Result<(), TestCaseError> {
    let Some(r) = r else {
        prop_assert!(d.len() < 12 || d[2] & 0x80 != 0, "unanswered: {d:02x?}");
        return Ok(());
    };
    prop_assert!(r.len() >= 12 && r.len() <= 1232);
    prop_assert_eq!(&r[..2], &d[..2]);
    prop_assert_eq!(r[2] & 0xf8, 0x80 | (d[2] & 0x78), "QR and the opcode");
    let m = Message::from_vec(&r);
    prop_assert!(
        m.is_ok(),
        "hickory rejects our reply {:02x?} to {:02x?}: {:?}",
        r,
        d,
        m.err()
    );
    // Our own parser reads every reply we write too.
    prop_assert!(OurMessage::parse(&r).is_ok());
    Ok(())
}

fn valid_messages() -> Vec<Vec<u8>> {
    vec![
        bytes(&query("www.example.test.", RecordType::A)),
        bytes(&with_edns(
            query("alias.example.test.", RecordType::AAAA),
            1232,
        )),
        bytes(&query("example.test.", RecordType::NS)),
        bytes(&update(
            "example.test.",
            vec![empty("new.example.test.", RecordType::ANY, DNSClass::NONE)],
            vec![
                a("new.example.test.", 60, "198.51.100.9"),
                mx("new.example.test.", 60, 1, "mail.example.test."),
                none(a("www.example.test.", 0, "192.0.2.10")),
            ],
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_get_a_readable_reply_or_none(d in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut s = server();
        let r = raw(&mut s, &d);
        check_reply(&d, r)?;
    }

    #[test]
    fn any_header_on_a_valid_body_gets_a_readable_reply_or_none(
        which in 0usize..4,
        header in proptest::collection::vec(any::<u8>(), 12),
    ) {
        let mut d = valid_messages()[which].clone();
        d[..12].copy_from_slice(&header);
        let mut s = server();
        let r = raw(&mut s, &d);
        check_reply(&d, r)?;
    }

    #[test]
    fn mutated_messages_get_a_readable_reply_or_none(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut d = valid_messages()[which].clone();
        for (at, x) in flips {
            let i = at.index(d.len());
            d[i] ^= x;
        }
        if truncate {
            d.truncate(cut.index(d.len() + 1));
        }
        let mut s = server();
        let r = raw(&mut s, &d);
        check_reply(&d, r)?;
        // Serving it changed nothing that a well-formed query could not see
        // broken: the zone still answers.
        let www = ask(&mut s, &query("www.example.test.", RecordType::AAAA));
        prop_assert_eq!(www.metadata.message_type, MessageType::Response);
    }
}

/// One random operation on names n0..n7 below the apex.
#[derive(Clone, Debug)]
enum Op {
    Add(u8, u8, u32),
    DeleteRr(u8, u8),
    DeleteRrset(u8),
    DeleteName(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, 0u8..4, 1u32..1000).prop_map(|(n, v, t)| Op::Add(n, v, t)),
        (0u8..8, 0u8..4).prop_map(|(n, v)| Op::DeleteRr(n, v)),
        (0u8..8).prop_map(Op::DeleteRrset),
        (0u8..8).prop_map(Op::DeleteName),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The zone after random updates equals a model (name → value → ttl),
    /// and the serial moved once per update that changed the model.
    #[test]
    fn random_updates_match_a_model(ops in proptest::collection::vec(proptest::collection::vec(op(), 1..4), 1..25)) {
        let mut s = server();
        let mut model: BTreeMap<u8, BTreeMap<u8, u32>> = BTreeMap::new();
        let mut bumps = 0u32;
        let owner = |n: u8| format!("n{n}.example.test.");
        let ip = |v: u8| format!("198.51.100.{v}");
        for (i, batch) in ops.iter().enumerate() {
            let before = model.clone();
            let mut recs = Vec::new();
            for o in batch {
                match *o {
                    Op::Add(n, v, t) => {
                        recs.push(a(&owner(n), t, &ip(v)));
                        let set = model.entry(n).or_default();
                        set.insert(v, t);
                        // One TTL per RRset: the newest.
                        for ttl in set.values_mut() {
                            *ttl = t;
                        }
                    }
                    Op::DeleteRr(n, v) => {
                        recs.push(none(a(&owner(n), 0, &ip(v))));
                        if let Some(set) = model.get_mut(&n) {
                            set.remove(&v);
                        }
                    }
                    Op::DeleteRrset(n) => {
                        recs.push(empty(&owner(n), RecordType::A, DNSClass::ANY));
                        model.remove(&n);
                    }
                    Op::DeleteName(n) => {
                        recs.push(empty(&owner(n), RecordType::ANY, DNSClass::ANY));
                        model.remove(&n);
                    }
                }
                model.retain(|_, set| !set.is_empty());
            }
            let mut m = update("example.test.", vec![], recs);
            m.metadata.id = i as u16;
            prop_assert_eq!(rcode(&ask(&mut s, &m)), ResponseCode::NoError);
            if model != before {
                bumps += 1;
            }
        }
        for n in 0..8u8 {
            let r = ask(&mut s, &query(&owner(n), RecordType::A));
            let mut got: Vec<(String, u32)> = r.answers.iter().map(|r| (r.data.to_string(), r.ttl)).collect();
            got.sort();
            let mut want: Vec<(String, u32)> = model.get(&n).into_iter().flatten().map(|(v, t)| (ip(*v), *t)).collect();
            want.sort();
            prop_assert_eq!(got, want, "n{}", n);
        }
        prop_assert_eq!(serial(&mut s), 1 + bumps);
    }
}

//! The store state machine: op semantics, deduplication, staleness, limits.

use ftvm_kvproto::server::{HostStore, host_store};
use ftvm_kvproto::{
    ClientSlot, KeySlot, MAX_DATAGRAM, MAX_VALUE, Op, Reply, Request, Status, Store,
};

fn r<'a>(op: Op, client: u64, no: u64, key: &'a [u8], v: &'a [u8], nv: &'a [u8]) -> Request<'a> {
    Request {
        op,
        client_id: client,
        request_no: no,
        key,
        value: v,
        new_value: nv,
    }
}

fn apply(s: &mut HostStore, req: Request<'_>) -> (Status, Vec<u8>) {
    let reply = s.apply(&req);
    assert_eq!(reply.client_id, req.client_id);
    assert_eq!(reply.request_no, req.request_no);
    (reply.status, reply.value.to_vec())
}

#[test]
fn ops_have_their_documented_semantics() {
    let mut s = host_store(64, 8);
    assert_eq!(
        apply(&mut s, r(Op::Get, 1, 1, b"a", b"", b"")),
        (Status::NotFound, vec![])
    );
    assert_eq!(
        apply(&mut s, r(Op::Put, 1, 2, b"a", b"x", b"")),
        (Status::Ok, vec![])
    );
    assert_eq!(
        apply(&mut s, r(Op::Get, 1, 3, b"a", b"", b"")),
        (Status::Ok, b"x".to_vec())
    );
    assert_eq!(
        apply(&mut s, r(Op::Append, 1, 4, b"a", b"yz", b"")),
        (Status::Ok, b"xyz".to_vec())
    );
    assert_eq!(
        apply(&mut s, r(Op::Append, 1, 5, b"n", b"q", b"")),
        (Status::Ok, b"q".to_vec())
    );
    assert_eq!(
        apply(&mut s, r(Op::Cas, 1, 6, b"a", b"nope", b"w")),
        (Status::CasMismatch, b"xyz".to_vec())
    );
    assert_eq!(
        apply(&mut s, r(Op::Cas, 1, 7, b"a", b"xyz", b"w")),
        (Status::Ok, vec![])
    );
    assert_eq!(s.get(b"a"), Some(&b"w"[..]));
    assert_eq!(
        apply(&mut s, r(Op::Cas, 1, 8, b"zz", b"", b"w")),
        (Status::NotFound, vec![])
    );
    // Another client sees the same keys.
    assert_eq!(
        apply(&mut s, r(Op::Get, 2, 1, b"n", b"", b"")),
        (Status::Ok, b"q".to_vec())
    );
    let st = s.stats();
    assert_eq!((st.applied, st.keys, st.clients), (9, 2, 2));
}

#[test]
fn a_retry_is_answered_identically_and_applied_once() {
    let mut s = host_store(64, 8);
    assert_eq!(
        apply(&mut s, r(Op::Append, 5, 1, b"k", b"ab", b"")).1,
        b"ab"
    );
    let before = s.digest();
    // The same request again (a client retry): same reply, no second append.
    for _ in 0..3 {
        assert_eq!(
            apply(&mut s, r(Op::Append, 5, 1, b"k", b"ab", b"")),
            (Status::Ok, b"ab".to_vec())
        );
    }
    assert_eq!(s.get(b"k"), Some(&b"ab"[..]));
    assert_eq!(s.digest(), before);
    // Another client changes the key; the retry still returns the old reply.
    apply(&mut s, r(Op::Put, 6, 1, b"k", b"other", b""));
    assert_eq!(
        apply(&mut s, r(Op::Append, 5, 1, b"k", b"ab", b"")),
        (Status::Ok, b"ab".to_vec())
    );
    assert_eq!(s.get(b"k"), Some(&b"other"[..]));
    let st = s.stats();
    assert_eq!((st.applied, st.duplicates), (2, 4));
}

#[test]
fn an_older_request_is_stale_and_not_applied() {
    let mut s = host_store(64, 8);
    apply(&mut s, r(Op::Put, 9, 10, b"k", b"ten", b""));
    assert_eq!(
        apply(&mut s, r(Op::Put, 9, 9, b"k", b"nine", b"")),
        (Status::Stale, vec![])
    );
    assert_eq!(s.get(b"k"), Some(&b"ten"[..]));
    // Gaps in numbering are allowed (a client may skip numbers).
    assert_eq!(
        apply(&mut s, r(Op::Put, 9, 20, b"k", b"twenty", b"")).0,
        Status::Ok
    );
    assert_eq!(s.stats().stale, 1);
}

#[test]
fn request_number_zero_is_refused() {
    let mut s = host_store(8, 2);
    assert_eq!(
        apply(&mut s, r(Op::Put, 1, 0, b"k", b"v", b"")).0,
        Status::BadRequest
    );
    assert_eq!(s.get(b"k"), None);
}

#[test]
fn append_beyond_the_value_limit_is_too_large_and_changes_nothing() {
    let mut s = host_store(8, 2);
    let big = [b'x'; MAX_VALUE];
    apply(&mut s, r(Op::Put, 1, 1, b"k", &big, b""));
    assert_eq!(
        apply(&mut s, r(Op::Append, 1, 2, b"k", b"y", b"")),
        (Status::TooLarge, vec![])
    );
    assert_eq!(s.get(b"k").map(<[u8]>::len), Some(MAX_VALUE));
}

#[test]
fn full_tables_refuse_without_corrupting() {
    let mut s: Store<[KeySlot; 4], [ClientSlot; 2]> =
        Store::new([KeySlot::EMPTY; 4], [ClientSlot::EMPTY; 2]);
    for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
        assert_eq!(
            s.apply(&r(Op::Put, 1, i as u64 + 1, *k, b"v", b"")).status,
            Status::Ok
        );
    }
    // Key table full: a new key is refused (and that reply is remembered).
    assert_eq!(
        s.apply(&r(Op::Put, 1, 5, b"e", b"v", b"")).status,
        Status::Full
    );
    assert_eq!(
        s.apply(&r(Op::Put, 1, 5, b"e", b"v", b"")).status,
        Status::Full
    );
    // Existing keys still work.
    assert_eq!(
        s.apply(&r(Op::Put, 1, 6, b"a", b"w", b"")).status,
        Status::Ok
    );
    assert_eq!(s.get(b"a"), Some(&b"w"[..]));
    // Client table full: a third client is refused, not remembered.
    assert_eq!(
        s.apply(&r(Op::Get, 2, 1, b"a", b"", b"")).status,
        Status::Ok
    );
    assert_eq!(
        s.apply(&r(Op::Get, 3, 1, b"a", b"", b"")).status,
        Status::Full
    );
    assert_eq!(s.stats().clients, 2);
}

#[test]
fn serve_answers_bad_datagrams_when_it_can_address_them() {
    let mut s = host_store(8, 2);
    let mut out = [0u8; MAX_DATAGRAM];
    let mut d = [0u8; MAX_DATAGRAM];
    let n = r(Op::Put, 4, 1, b"k", b"v", b"").encode(&mut d).unwrap();
    let m = s.serve(&d[..n], &mut out).unwrap();
    assert_eq!(Reply::decode(&out[..m]).unwrap().status, Status::Ok);
    // Corrupt the op byte: header readable, so BAD_REQUEST to the same ids.
    let mut bad = d[..n].to_vec();
    bad[4] = 99;
    let m = s.serve(&bad, &mut out).unwrap();
    let rep = Reply::decode(&out[..m]).unwrap();
    assert_eq!(
        (rep.status, rep.op, rep.client_id, rep.request_no),
        (Status::BadRequest, None, 4, 1)
    );
    // Garbage: no reply at all.
    assert_eq!(s.serve(b"hello", &mut out), None);
    assert_eq!(s.get(b"k"), Some(&b"v"[..]));
}

#[test]
fn equal_histories_give_equal_digests() {
    let mut a = host_store(32, 4);
    let mut b = host_store(32, 4);
    for i in 1..=50u64 {
        let key = [b'a' + (i % 7) as u8];
        let v = i.to_le_bytes();
        let req = r(
            if i % 3 == 0 { Op::Append } else { Op::Put },
            i % 3,
            i,
            &key,
            &v,
            b"",
        );
        a.apply(&req);
        b.apply(&req);
    }
    assert_eq!(a.digest(), b.digest());
    b.apply(&r(Op::Put, 0, 1000, b"z", b"1", b""));
    assert_ne!(a.digest(), b.digest());
}

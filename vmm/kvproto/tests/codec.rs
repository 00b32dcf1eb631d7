//! The datagram codec: round trips, limits, and every decode error.

use ftvm_kvproto::{
    HEADER_LEN, KvDecodeError, KvEncodeError, MAX_DATAGRAM, MAX_KEY, MAX_VALUE, Op, Reply, Request,
    Status,
};

fn req<'a>(op: Op, key: &'a [u8], value: &'a [u8], new_value: &'a [u8]) -> Request<'a> {
    Request {
        op,
        client_id: 0x1122_3344_5566_7788,
        request_no: 42,
        key,
        value,
        new_value,
    }
}

#[test]
fn request_round_trips_for_every_op() {
    let cases = [
        req(Op::Put, b"k", b"v", b""),
        req(Op::Get, b"key", b"", b""),
        req(Op::Append, b"", b"tail", b""),
        req(Op::Cas, b"k2", b"old", b"new"),
    ];
    for r in cases {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = r.encode(&mut buf).unwrap();
        assert_eq!(n, r.encoded_len());
        assert_eq!(Request::decode(&buf[..n]).unwrap(), r);
        assert_eq!(Request::peek_ids(&buf[..n]), Some((r.client_id, 42)));
    }
}

#[test]
fn largest_request_fits_a_datagram() {
    let key = [b'k'; MAX_KEY];
    let v = [b'v'; MAX_VALUE];
    let r = req(Op::Cas, &key, &v, &v);
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = r.encode(&mut buf).unwrap();
    assert_eq!(n, HEADER_LEN + MAX_KEY + 2 * MAX_VALUE);
    assert_eq!(Request::decode(&buf[..n]).unwrap(), r);
}

#[test]
fn layout_is_little_endian_as_documented() {
    let mut buf = [0u8; 64];
    let n = req(Op::Cas, b"ab", b"c", b"de").encode(&mut buf).unwrap();
    assert_eq!(&buf[0..4], b"FKVQ");
    assert_eq!(buf[4], 4);
    assert_eq!(&buf[6..12], &[2, 0, 1, 0, 2, 0]);
    assert_eq!(&buf[16..24], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&buf[24..32], &42u64.to_le_bytes());
    assert_eq!(&buf[32..n], b"abcde");
}

#[test]
fn encode_refuses_oversized_and_misplaced_fields() {
    let mut buf = [0u8; MAX_DATAGRAM];
    let key = [0u8; MAX_KEY + 1];
    assert_eq!(
        req(Op::Put, &key, b"", b"").encode(&mut buf),
        Err(KvEncodeError::TooLong {
            field: "key",
            len: 65,
            max: 64
        })
    );
    let v = [0u8; MAX_VALUE + 1];
    assert_eq!(
        req(Op::Put, b"k", &v, b"").encode(&mut buf),
        Err(KvEncodeError::TooLong {
            field: "value",
            len: 513,
            max: 512
        })
    );
    assert_eq!(
        req(Op::Get, b"k", b"x", b"").encode(&mut buf),
        Err(KvEncodeError::Unexpected {
            field: "value",
            len: 1
        })
    );
    assert_eq!(
        req(Op::Put, b"k", b"x", b"y").encode(&mut buf),
        Err(KvEncodeError::Unexpected {
            field: "new_value",
            len: 1
        })
    );
    let mut small = [0u8; 40];
    assert_eq!(
        req(Op::Put, b"k", b"0123456789", b"").encode(&mut small),
        Err(KvEncodeError::BufferTooSmall { need: 43, have: 40 })
    );
}

fn good() -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = req(Op::Cas, b"key", b"old", b"new")
        .encode(&mut buf)
        .unwrap();
    buf[..n].to_vec()
}

#[test]
fn decode_names_the_bad_field() {
    let g = good();
    assert_eq!(
        Request::decode(&g[..3]),
        Err(KvDecodeError::Truncated {
            field: "magic",
            need: 4,
            have: 3
        })
    );
    assert_eq!(
        Request::decode(&g[..20]),
        Err(KvDecodeError::Truncated {
            field: "header",
            need: 32,
            have: 20
        })
    );
    let mut b = g.clone();
    b[0] = b'X';
    assert!(matches!(
        Request::decode(&b),
        Err(KvDecodeError::BadMagic { .. })
    ));
    let mut b = g.clone();
    b[4] = 0;
    assert_eq!(Request::decode(&b), Err(KvDecodeError::BadOp { value: 0 }));
    b[4] = 9;
    assert_eq!(Request::decode(&b), Err(KvDecodeError::BadOp { value: 9 }));
    let mut b = g.clone();
    b[5] = 1;
    assert_eq!(
        Request::decode(&b),
        Err(KvDecodeError::NotZero {
            field: "reserved[5]",
            value: 1
        })
    );
    let mut b = g.clone();
    b[6] = 65;
    assert_eq!(
        Request::decode(&b),
        Err(KvDecodeError::TooLong {
            field: "key_len",
            len: 65,
            max: 64
        })
    );
    let mut b = g.clone();
    b[8..10].copy_from_slice(&600u16.to_le_bytes());
    assert_eq!(
        Request::decode(&b),
        Err(KvDecodeError::TooLong {
            field: "value_len",
            len: 600,
            max: 512
        })
    );
    // new_value cut short.
    assert_eq!(
        Request::decode(&g[..g.len() - 1]),
        Err(KvDecodeError::Truncated {
            field: "new_value",
            need: g.len(),
            have: g.len() - 1
        })
    );
    let mut b = g.clone();
    b.push(0);
    assert_eq!(
        Request::decode(&b),
        Err(KvDecodeError::TrailingBytes {
            expected: g.len(),
            actual: g.len() + 1
        })
    );
    // GET with a value length.
    let mut b = g.clone();
    b[4] = Op::Get as u8;
    assert_eq!(
        Request::decode(&b),
        Err(KvDecodeError::NotZero {
            field: "value_len",
            value: 3
        })
    );
    // Messages carry the values.
    let msg = Request::decode(&g[..20]).unwrap_err().to_string();
    assert!(
        msg.contains("header") && msg.contains("32") && msg.contains("20"),
        "{msg}"
    );
}

#[test]
fn decode_never_panics_on_any_prefix_or_byte_flip() {
    let g = good();
    for n in 0..=g.len() {
        let _ = Request::decode(&g[..n]);
        let _ = Reply::decode(&g[..n]);
    }
    for i in 0..g.len() {
        for bit in 0..8 {
            let mut b = g.clone();
            b[i] ^= 1 << bit;
            let _ = Request::decode(&b);
        }
    }
}

#[test]
fn reply_round_trips_and_checks() {
    let r = Reply {
        status: Status::CasMismatch,
        op: Some(Op::Cas),
        client_id: 7,
        request_no: 9,
        value: b"current",
    };
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = r.encode(&mut buf).unwrap();
    assert_eq!(&buf[..4], b"FKVA");
    assert_eq!(Reply::decode(&buf[..n]).unwrap(), r);
    let none = Reply {
        op: None,
        status: Status::BadRequest,
        value: b"",
        ..r
    };
    let n2 = none.encode(&mut buf).unwrap();
    assert_eq!(Reply::decode(&buf[..n2]).unwrap(), none);
    let n = r.encode(&mut buf).unwrap();
    let mut b = buf[..n].to_vec();
    b[4] = 0;
    assert_eq!(
        Reply::decode(&b),
        Err(KvDecodeError::BadStatus { value: 0 })
    );
    let mut b = buf[..n].to_vec();
    b[5] = 77;
    assert_eq!(Reply::decode(&b), Err(KvDecodeError::BadOp { value: 77 }));
    // A request is not a reply.
    assert!(matches!(
        Reply::decode(&good()),
        Err(KvDecodeError::BadMagic { .. })
    ));
}

//! The kv datagram codec (`ftvm_kvproto`): any datagram decodes as a request
//! and as a reply or gives a `KvDecodeError`, never a panic; what decodes
//! re-encodes to the same bytes; `Store::serve` answers with a reply that
//! decodes, and answers a retry identically.
//!
//! The first input byte picks a prefix: none, the request magic or the reply
//! magic (so most inputs get past the magic).
#![no_main]

use ftvm_kvproto::{
    ClientSlot, KeySlot, MAX_DATAGRAM, REPLY_MAGIC, REQUEST_MAGIC, Reply, Request, Store,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut d = Vec::with_capacity(rest.len() + 4);
    match mode % 3 {
        0 => {}
        1 => d.extend_from_slice(&REQUEST_MAGIC.to_le_bytes()),
        _ => d.extend_from_slice(&REPLY_MAGIC.to_le_bytes()),
    }
    d.extend_from_slice(rest);

    let mut buf = [0u8; MAX_DATAGRAM];
    if let Ok(req) = Request::decode(&d) {
        let n = req.encode(&mut buf).expect("a decoded request encodes");
        assert_eq!(&buf[..n], &d[..], "request round trip");
    }
    if let Ok(reply) = Reply::decode(&d) {
        let n = reply.encode(&mut buf).expect("a decoded reply encodes");
        assert_eq!(&buf[..n], &d[..], "reply round trip");
    }
    let _ = Request::peek_ids(&d);

    let mut store = Store::new([KeySlot::EMPTY; 4], [ClientSlot::EMPTY; 2]);
    let first = store.serve(&d, &mut buf).map(|n| buf[..n].to_vec());
    if let Some(r) = &first {
        let reply = Reply::decode(r).expect("the store's reply decodes");
        if let Some((client_id, request_no)) = Request::peek_ids(&d) {
            assert_eq!((reply.client_id, reply.request_no), (client_id, request_no));
        }
    }
    let again = store.serve(&d, &mut buf).map(|n| buf[..n].to_vec());
    assert_eq!(first, again, "a retry is answered identically");
});

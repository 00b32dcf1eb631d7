//! `etcd:http://HOST:PORT[,...]` — the rack arbiter, over etcd 3.4's
//! HTTP/JSON gateway.
//!
//! # Key layout
//!
//! ```text
//! /ftvm/<vm>/gen/<N, 20 digits zero-padded>   value: the winner's candidate
//! /ftvm/<vm>/spare/<encoded addr>              value: the spare's address
//! ```
//!
//! `N` is padded to 20 digits (`u64::MAX` has 20) so that key order is
//! numeric order: [`Arbiter::latest`] is one range over
//! `[/ftvm/<vm>/gen/, /ftvm/<vm>/gen0)` sorted by key, descending, limit 1.
//! No key has a lease: a generation is decided forever, and there is no
//! lease-expiry floor under the failover time. Do not delete `/ftvm/` keys
//! (etcd's own auth can make them read-only to everyone but ftvm).
//!
//! # The claim
//!
//! [`Arbiter::test_and_set`] is one transaction, one round trip:
//!
//! ```text
//! compare:  create_revision(/ftvm/<vm>/gen/<N>) == 0     (the key does not exist)
//! success:  put /ftvm/<vm>/gen/<N> = candidate          -> Won
//! failure:  range /ftvm/<vm>/gen/<N>                    -> Lost { holder } (or Won:
//!                                                          our own retry)
//! ```
//!
//! etcd applies the transaction once, after a quorum has it on disk; a
//! reply lost on the way back is made good by the caller's retry, which
//! finds its own candidate.
//!
//! # Why the HTTP gateway, not the `etcd-client` crate
//!
//! `etcd-client` speaks gRPC: it needs `protoc` at build time and a tokio
//! runtime. The README promises that a fresh machine builds ftvm with only
//! rustup, and nothing else in ftvm is async. The gateway needs a small
//! blocking HTTP client (`ureq`, plain http, no TLS) and `serde_json`; the
//! four calls used (`/v3/kv/txn`, `range`, `put`, `deleterange`) are stable
//! in etcd 3.4 and later.
//!
//! # Reachability
//!
//! Each endpoint is tried in turn, each with a 500 ms connect and 2 s total
//! timeout ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`]), so a dead arbiter is
//! reported in seconds, not minutes. Refused, timed out and 5xx (no leader,
//! request timed out) are [`ArbiterError::Unreachable`]; 401/403 is
//! [`ArbiterError::Denied`]; any other status or a body that is not the
//! gateway's JSON is [`ArbiterError::Protocol`]; each names the endpoint, the
//! status and an excerpt of the body.

mod gateway;

use serde_json::json;

pub use gateway::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use gateway::{Gateway, Ignored, KeyValue, RangeResponse, TxnResponse, b64, unb64};

use crate::names::{self, excerpt};
use crate::{ALLOWED_URLS, Arbiter, ArbiterError, Decision, OpenArbiterError};

/// The `etcd:` arbiter. Cheap to create: no connection until the first call.
#[derive(Debug)]
pub struct EtcdArbiter {
    url: String,
    gateway: Gateway,
}

impl EtcdArbiter {
    /// An arbiter over `endpoints`, each `http://HOST:PORT` (see
    /// [`parse_endpoints`] for the checks `open` makes).
    pub fn new(endpoints: Vec<String>) -> EtcdArbiter {
        let url = format!("etcd:{}", endpoints.join(","));
        EtcdArbiter {
            gateway: Gateway::new(url.clone(), endpoints),
            url,
        }
    }

    fn corrupt(&self, key: &str, detail: String) -> ArbiterError {
        ArbiterError::Corrupt {
            arbiter: self.url.clone(),
            key: key.to_owned(),
            detail,
        }
    }

    fn protocol(&self, detail: String) -> ArbiterError {
        ArbiterError::Protocol {
            arbiter: self.url.clone(),
            detail,
        }
    }

    /// The text of `kv.value`, checked with `valid`.
    fn value(
        &self,
        key: &str,
        kv: &KeyValue,
        valid: fn(&str) -> Result<(), ArbiterError>,
    ) -> Result<String, ArbiterError> {
        let bytes = unb64(&kv.value).map_err(|e| self.corrupt(key, format!("value {e}")))?;
        match String::from_utf8(bytes) {
            Ok(v) if valid(&v).is_ok() => Ok(v),
            Ok(v) => Err(self.corrupt(key, format!("value {} is not a valid record", excerpt(&v)))),
            Err(e) => Err(self.corrupt(key, format!("value is not UTF-8: {e}"))),
        }
    }

    fn range(&self, body: serde_json::Value) -> Result<RangeResponse, ArbiterError> {
        self.gateway.post("/v3/kv/range", &body)
    }
}

/// `/ftvm/<vm>/gen/`: the prefix of every generation key of `vm`.
fn gen_prefix(vm: &str) -> String {
    format!("/ftvm/{vm}/gen/")
}

/// `/ftvm/<vm>/gen/<N:020>`.
fn gen_key(vm: &str, generation: u64) -> String {
    format!("{}{generation:020}", gen_prefix(vm))
}

/// `/ftvm/<vm>/spare/`: the prefix of every spare key of `vm`.
fn spare_prefix(vm: &str) -> String {
    format!("/ftvm/{vm}/spare/")
}

fn spare_key(vm: &str, addr: &str) -> String {
    format!("{}{}", spare_prefix(vm), names::encode_spare(addr))
}

/// The end of the range of keys starting with `prefix`, which ends in `/`:
/// the same with `/` turned into `0`, the next byte.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.strip_suffix('/').unwrap_or(prefix).to_owned();
    end.push('0');
    end
}

/// The generation of a key under `prefix`: exactly 20 digits, >= 1.
fn parse_gen_key(prefix: &str, key: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n >= 1)
}

impl Arbiter for EtcdArbiter {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn test_and_set(
        &self,
        vm: &str,
        generation: u64,
        candidate: &str,
    ) -> Result<Decision, ArbiterError> {
        names::check_vm(vm)?;
        names::check_generation(generation)?;
        names::check_candidate(candidate)?;
        let key = gen_key(vm, generation);
        let k = b64(key.as_bytes());
        let txn: TxnResponse = self.gateway.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                "success": [{"request_put": {"key": k, "value": b64(candidate.as_bytes())}}],
                "failure": [{"request_range": {"key": k}}],
            }),
        )?;
        if txn.succeeded {
            return Ok(Decision::Won);
        }
        let kvs = txn
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response_range)
            .map(|r| r.kvs)
            .ok_or_else(|| {
                self.protocol(format!(
                    "txn on {key} failed its compare but has no range answer"
                ))
            })?;
        let kv = kvs.first().ok_or_else(|| {
            self.protocol(format!("txn on {key} found the key existing, then no key"))
        })?;
        let holder = self.value(&key, kv, names::check_candidate)?;
        Ok(if holder == candidate {
            Decision::Won
        } else {
            Decision::Lost { holder }
        })
    }

    fn holder(&self, vm: &str, generation: u64) -> Result<Option<String>, ArbiterError> {
        names::check_vm(vm)?;
        names::check_generation(generation)?;
        let key = gen_key(vm, generation);
        let r = self.range(json!({"key": b64(key.as_bytes())}))?;
        r.kvs
            .first()
            .map(|kv| self.value(&key, kv, names::check_candidate))
            .transpose()
    }

    fn latest(&self, vm: &str) -> Result<Option<(u64, String)>, ArbiterError> {
        names::check_vm(vm)?;
        let prefix = gen_prefix(vm);
        let r = self.range(json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(prefix_end(&prefix).as_bytes()),
            "sort_order": "DESCEND",
            "sort_target": "KEY",
            "limit": "1",
        }))?;
        let Some(kv) = r.kvs.first() else {
            return Ok(None);
        };
        let raw = unb64(&kv.key).map_err(|e| self.protocol(format!("range key {e}")))?;
        let key = String::from_utf8_lossy(&raw).into_owned();
        let n = parse_gen_key(&prefix, &key).ok_or_else(|| {
            self.corrupt(
                &key,
                format!("key is not {prefix}<generation >= 1, 20 digits>"),
            )
        })?;
        Ok(Some((n, self.value(&key, kv, names::check_candidate)?)))
    }

    fn register_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError> {
        names::check_vm(vm)?;
        names::check_spare(addr)?;
        let key = spare_key(vm, addr);
        let _: Ignored = self.gateway.post(
            "/v3/kv/put",
            &json!({"key": b64(key.as_bytes()), "value": b64(addr.as_bytes())}),
        )?;
        Ok(())
    }

    fn unregister_spare(&self, vm: &str, addr: &str) -> Result<(), ArbiterError> {
        names::check_vm(vm)?;
        names::check_spare(addr)?;
        let key = spare_key(vm, addr);
        let _: Ignored = self
            .gateway
            .post("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))?;
        Ok(())
    }

    fn spares(&self, vm: &str) -> Result<Vec<String>, ArbiterError> {
        names::check_vm(vm)?;
        let prefix = spare_prefix(vm);
        let r = self.range(json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(prefix_end(&prefix).as_bytes()),
        }))?;
        let mut out = Vec::with_capacity(r.kvs.len());
        for kv in &r.kvs {
            let raw = unb64(&kv.key).map_err(|e| self.protocol(format!("range key {e}")))?;
            let key = String::from_utf8_lossy(&raw).into_owned();
            let addr = self.value(&key, kv, names::check_spare)?;
            if key != spare_key(vm, &addr) {
                return Err(self.corrupt(
                    &key,
                    format!("holds address {} but is named for another", excerpt(&addr)),
                ));
            }
            out.push(addr);
        }
        out.sort();
        Ok(out)
    }
}

/// The endpoints of an `etcd:` URL (`rest` is what follows `etcd:`), each
/// made `http://HOST:PORT`: comma-separated `http://HOST:PORT` or
/// `HOST:PORT`, HOST a name, an IPv4 address or a bracketed IPv6 address,
/// PORT 1..=65535, an optional trailing `/`.
pub fn parse_endpoints(url: &str, rest: &str) -> Result<Vec<String>, OpenArbiterError> {
    rest.split(',')
        .map(|part| {
            parse_endpoint(part.trim()).map_err(|problem| OpenArbiterError::BadEtcdEndpoint {
                url: url.to_owned(),
                endpoint: part.to_owned(),
                problem,
                allowed: ALLOWED_URLS,
            })
        })
        .collect()
}

fn parse_endpoint(part: &str) -> Result<String, String> {
    if part.is_empty() {
        return Err("empty endpoint".into());
    }
    let hostport = match part.split_once("://") {
        Some(("http", hp)) => hp,
        Some((scheme, _)) => {
            return Err(format!(
                "scheme {scheme:?} not supported (only http://: no TLS client is built in)"
            ));
        }
        None => part,
    };
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| "no :PORT".to_owned())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {port:?} is not 1..=65535"))?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    if !host_ok {
        return Err(format!(
            "host {host:?} is not a name, an IPv4 address or a [bracketed] IPv6 address"
        ));
    }
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert_eq!(gen_key("vm", 7), "/ftvm/vm/gen/00000000000000000007");
        assert!(gen_key("vm", 9) < gen_key("vm", 10));
        assert_eq!(gen_key("vm", u64::MAX).len(), gen_key("vm", 1).len());
        assert_eq!(prefix_end("/ftvm/vm/gen/"), "/ftvm/vm/gen0");
        // Another VM's keys are outside the range, even one whose name extends ours.
        let (lo, hi) = (gen_prefix("a"), prefix_end(&gen_prefix("a")));
        for other in [gen_key("a.b", 1), gen_key("a-", 1), spare_key("a", "x:1")] {
            assert!(!(lo <= other && other < hi), "{other}");
        }
        assert_eq!(parse_gen_key(&lo, &gen_key("a", 42)), Some(42));
        assert_eq!(parse_gen_key(&lo, "/ftvm/a/gen/00000000000000000000"), None);
        assert_eq!(parse_gen_key(&lo, "/ftvm/a/gen/42"), None);
    }

    #[test]
    fn endpoints() {
        let ok = |s: &str| parse_endpoints("etcd:x", s).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:2379,h-2.example:22379/"),
            ["http://127.0.0.1:2379", "http://h-2.example:22379"]
        );
        assert_eq!(ok("[::1]:2379"), ["http://[::1]:2379"]);
        for (bad, says) in [
            ("", "empty endpoint"),
            ("h:1,", "empty endpoint"),
            ("https://h:2379", "\"https\" not supported"),
            ("h", "no :PORT"),
            ("h:0", "port \"0\""),
            ("h:99999", "port \"99999\""),
            ("http://h:1/v3", "port \"1/v3\""),
            ("u@h:1", "host \"u@h\""),
            (":1", "host \"\""),
        ] {
            let e = parse_endpoints("etcd:bad", bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("\"etcd:bad\""), "{bad}: {e}");
        }
    }
}

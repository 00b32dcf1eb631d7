//! A tiny client of etcd 3.4's HTTP/JSON gateway (`POST /v3/kv/...`): one
//! blocking request at a time, each endpoint tried in turn, every failure
//! classified into an [`ArbiterError`] that names the endpoint.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ArbiterError;

/// Longest time to set up a TCP connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest time for one request to one endpoint, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response body read (a range of spares is the biggest answer).
const MAX_BODY: u64 = 4 << 20;
/// How much of a response body an error message quotes.
const BODY_EXCERPT: usize = 200;

/// The HTTP side of an [`super::EtcdArbiter`].
#[derive(Debug)]
pub(crate) struct Gateway {
    /// Canonical arbiter URL, for error messages.
    arbiter: String,
    /// `http://HOST:PORT`, in the order given.
    endpoints: Vec<String>,
    agent: ureq::Agent,
}

/// One failed attempt at one endpoint.
enum Attempt {
    /// Worth trying the next endpoint, and later again (refused, timeout, 5xx).
    Transient(String),
    /// The endpoint answered nonsense (unexpected status, bad JSON).
    Protocol(String),
}

impl Gateway {
    pub(crate) fn new(arbiter: String, endpoints: Vec<String>) -> Gateway {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            // We read error bodies ourselves, to quote them.
            .http_status_as_error(false)
            // etcd is reached directly; an http_proxy set for the web must not apply.
            .proxy(None)
            .max_redirects(0)
            .build()
            .new_agent();
        Gateway {
            arbiter,
            endpoints,
            agent,
        }
    }

    /// POSTs `body` to `path` (e.g. `/v3/kv/txn`) at each endpoint in turn
    /// until one answers 200 with JSON of type `T`. 401/403 is
    /// [`ArbiterError::Denied`] at once; if every endpoint fails, the result
    /// is [`ArbiterError::Protocol`] when one of them answered nonsense, else
    /// [`ArbiterError::Unreachable`], naming every endpoint's failure.
    pub(crate) fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ArbiterError> {
        let body = body.to_string();
        let mut failures = Vec::new();
        let mut protocol = false;
        for endpoint in &self.endpoints {
            match self.post_one(endpoint, path, &body) {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(Attempt::Transient(why))) => failures.push(why),
                Ok(Err(Attempt::Protocol(why))) => {
                    protocol = true;
                    failures.push(why);
                }
                Err(denied) => return Err(denied),
            }
        }
        let arbiter = self.arbiter.clone();
        let detail = failures.join("; ");
        Err(if protocol {
            ArbiterError::Protocol { arbiter, detail }
        } else {
            ArbiterError::Unreachable { arbiter, detail }
        })
    }

    fn post_one<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: &str,
    ) -> Result<Result<T, Attempt>, ArbiterError> {
        let url = format!("{endpoint}{path}");
        let mut resp = match self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body)
        {
            Ok(r) => r,
            Err(e) => return Ok(Err(Attempt::Transient(format!("POST {url}: {e}")))),
        };
        let status = resp.status().as_u16();
        let text = match resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => {
                return Ok(Err(Attempt::Transient(format!(
                    "POST {url}: HTTP {status}, reading the body: {e}"
                ))));
            }
        };
        let said = || format!("POST {url}: HTTP {status}: {}", excerpt(&text));
        match status {
            200 => Ok(serde_json::from_str(&text)
                .map_err(|e| Attempt::Protocol(format!("{}: not the JSON expected: {e}", said())))),
            401 | 403 => Err(ArbiterError::Denied {
                arbiter: self.arbiter.clone(),
                detail: said(),
            }),
            // 5xx: no leader, request timed out, too many requests: come back later.
            408 | 429 | 500..=599 => Ok(Err(Attempt::Transient(said()))),
            _ => Ok(Err(Attempt::Protocol(said()))),
        }
    }
}

/// The first characters of a body, on one line.
fn excerpt(body: &str) -> String {
    let one_line: String = body.trim().replace(['\n', '\r'], " ");
    match one_line.char_indices().nth(BODY_EXCERPT) {
        Some((i, _)) => format!("{}... ({} bytes)", &one_line[..i], body.len()),
        None => one_line,
    }
}

/// Base64 as the gateway wants keys and values.
pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A base64 key or value from the gateway.
pub(crate) fn unb64(text: &str) -> Result<Vec<u8>, String> {
    B64.decode(text)
        .map_err(|e| format!("not base64 ({e}): {text:?}"))
}

/// `etcdserverpb.RangeResponse` as JSON (proto3: empty fields are left out).
#[derive(Debug, Deserialize)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub(crate) kvs: Vec<KeyValue>,
}

/// `mvccpb.KeyValue` (base64 `key` and `value`; an empty value is left out).
#[derive(Debug, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(default)]
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: String,
}

/// `etcdserverpb.TxnResponse` (`succeeded: false` is left out).
#[derive(Debug, Deserialize)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub(crate) succeeded: bool,
    #[serde(default)]
    pub(crate) responses: Vec<ResponseOp>,
}

/// One `etcdserverpb.ResponseOp`; only the range answer is read.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseOp {
    #[serde(default)]
    pub(crate) response_range: Option<RangeResponse>,
}

/// Any answer whose contents we do not need (put, deleterange).
#[derive(Debug, Deserialize)]
pub(crate) struct Ignored {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_quoted_short_and_on_one_line() {
        assert_eq!(excerpt(" a\nb \n"), "a b");
        let long = "x".repeat(500);
        assert_eq!(
            excerpt(&long),
            format!("{}... (500 bytes)", "x".repeat(200))
        );
    }

    #[test]
    fn gateway_json_with_defaults_left_out() {
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"7"},"responses":[{"response_range":{"header":{},"kvs":[{"key":"YQ==","create_revision":"5","value":"Yg=="}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!t.succeeded);
        let kv = &t.responses[0].response_range.as_ref().unwrap().kvs[0];
        assert_eq!(unb64(&kv.key).unwrap(), b"a");
        assert_eq!(unb64(&kv.value).unwrap(), b"b");
        let ok: TxnResponse =
            serde_json::from_str(r#"{"succeeded":true,"responses":[{"response_put":{}}]}"#)
                .unwrap();
        assert!(ok.succeeded && ok.responses[0].response_range.is_none());
        assert!(unb64("!!").unwrap_err().contains("\"!!\""));
    }
}

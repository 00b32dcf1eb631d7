//! The self-checking load generator (`ftvm client load`, benchmarks, tests).
//!
//! `clients` client ids are spread over `threads` threads; each thread owns
//! one nonblocking UDP socket and busy-polls it (thread wake-ups cost more
//! than a request on the hosts this runs on). Every client has at most one
//! request in flight, so its request numbers are answered in order.
//!
//! 1. **Issue.** Closed loop (default): an idle client issues its next op at
//!    once. Open loop (`rate`): ops are due at fixed intended times
//!    (`rate / threads` per thread) and go to the next idle client; latency
//!    is measured from the intended time, so a slow server is not hidden by
//!    a late send (no coordinated omission).
//! 2. **Ops.** Each client works on `keys` private keys (`c<id>/k<j>`) and
//!    keeps a model of their values; ops are PUT, GET, APPEND and CAS (with
//!    the right or a wrong expected value) drawn from a seeded generator.
//! 3. **Verify.** Every reply is checked against the model: status, and the
//!    value of GET / APPEND / failed CAS. A difference is counted as an error
//!    and the first few are kept as messages.
//! 4. **Retry.** A request unanswered after `timeout` is resent unchanged
//!    (same request number) — to the next of the server addresses
//!    ([`LoadConfig::fallbacks`]) when there are several, so a client finds
//!    the side that went live after a failover; after `max_attempts` sends
//!    the run fails with [`LoadError::NoReply`]. A late reply to an earlier
//!    send of an answered request is counted as a duplicate and ignored.
//! 5. **Final check** ([`LoadConfig::final_check`]): every client reads
//!    back every key it wrote and compares it with its model. In the
//!    APPEND-only mix ([`OpMix::AppendOnly`]) every append adds a unique
//!    token, so a difference is classified: an acknowledged append missing
//!    is a *lost write*, one present twice was *applied twice*.

use std::format;
use std::net::{SocketAddr, UdpSocket};
use std::string::{String, ToString};
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

use hdrhistogram::Histogram;

use crate::{MAX_DATAGRAM, MAX_VALUE, Op, Reply, Request, Status};

/// Largest latency the histogram holds (longer ones are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Error messages kept in a report.
const KEEP_ERRORS: usize = 10;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The kv server.
    pub server: SocketAddr,
    /// Client ids.
    pub clients: u32,
    /// Operations to complete in total.
    pub ops: u64,
    /// Open loop at this many ops/s in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Per-attempt timeout before a resend.
    pub timeout: Duration,
    /// Sends per request before giving up.
    pub max_attempts: u32,
    /// Private keys per client.
    pub keys: u32,
    /// Longest value written by one op (1..=MAX_VALUE).
    pub max_value_len: usize,
    /// Seed of the op generator.
    pub seed: u64,
    /// Threads (each with its own socket and share of the clients).
    pub threads: u32,
    /// Cores to pin the load threads to (thread `i` on `pin_cores[i % len]`);
    /// empty: not pinned.
    pub pin_cores: Vec<usize>,
    /// First client id; `None`: derived from the seed, the time and the pid,
    /// so that repeated runs against one server do not reuse ids (a reused
    /// id would restart at request 1 and be refused as stale).
    pub first_client_id: Option<u64>,
    /// Busy-poll the socket (lowest latency with a core to spare). `false`:
    /// a pass that found nothing to do blocks on the socket for up to
    /// 500 µs — for hosts where a spinning client would take the core a VM
    /// (or its backup) needs.
    pub spin: bool,
    /// More addresses of the same service (the backup's): a timed-out
    /// request is resent to the next address in `server, fallbacks...`.
    pub fallbacks: Vec<SocketAddr>,
    /// Which operations to draw.
    pub mix: OpMix,
    /// After the run, read back every key and compare with the model.
    pub final_check: bool,
    /// Set to stop issuing new ops early: the run ends once every op
    /// issued is answered (and the final check is done). `ops` still caps it.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Ops completed so far, added to as they complete (for a progress
    /// display; `None`: not counted).
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

/// The operations a load draws.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpMix {
    /// PUT, GET, APPEND and CAS (with right and wrong expected values).
    #[default]
    Mixed,
    /// Only APPENDs of unique tokens (`<request_no in hex>;`), so every
    /// acknowledged write can be found — once — in the final values.
    AppendOnly,
}

impl LoadConfig {
    /// Defaults for `server`: 16 clients, 10,000 ops, closed loop, 200 ms
    /// timeout, 25 attempts, 8 keys per client, values up to 32 bytes, seed
    /// 1, one thread, not pinned.
    pub fn new(server: SocketAddr) -> LoadConfig {
        LoadConfig {
            server,
            clients: 16,
            ops: 10_000,
            rate: None,
            timeout: Duration::from_millis(200),
            max_attempts: 25,
            keys: 8,
            max_value_len: 32,
            seed: 1,
            threads: 1,
            pin_cores: Vec::new(),
            first_client_id: None,
            spin: true,
            fallbacks: Vec::new(),
            mix: OpMix::Mixed,
            final_check: false,
            stop: None,
            progress: None,
        }
    }

    /// The server addresses in the order clients try them.
    pub fn servers(&self) -> Vec<SocketAddr> {
        std::iter::once(self.server)
            .chain(self.fallbacks.iter().copied())
            .collect()
    }

    fn validate(&self) -> Result<(), LoadError> {
        let bad = |key: &'static str, value: String, allowed: &'static str| {
            Err(LoadError::Config {
                key,
                value,
                allowed,
            })
        };
        if self.clients == 0 {
            return bad("clients", self.clients.to_string(), ">= 1");
        }
        if self.threads == 0 || self.threads > self.clients {
            return bad("threads", self.threads.to_string(), "1..=clients");
        }
        if self.keys == 0 || self.keys > 1_000_000 {
            return bad("keys", self.keys.to_string(), "1..=1000000");
        }
        if self.max_value_len == 0 || self.max_value_len > MAX_VALUE {
            return bad("max_value_len", self.max_value_len.to_string(), "1..=512");
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return bad("rate", r.to_string(), "> 0 ops/s");
        }
        if self.timeout.is_zero() {
            return bad("timeout", format!("{:?}", self.timeout), "> 0");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", self.max_attempts.to_string(), ">= 1");
        }
        Ok(())
    }
}

/// A load run that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A configuration value is out of range.
    #[error("load setting {key} = {value} is out of range (allowed: {allowed})")]
    Config {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A request got no reply after every attempt.
    #[error(
        "no reply from {server} to client {client_id:#x} request {request_no} after {attempts} attempts of {timeout_ms} ms"
    )]
    NoReply {
        /// The server.
        server: SocketAddr,
        /// Client id.
        client_id: u64,
        /// Request number.
        request_no: u64,
        /// Sends made.
        attempts: u32,
        /// Per-attempt timeout.
        timeout_ms: u64,
    },
    /// A load thread panicked.
    #[error("load thread {index} panicked")]
    ThreadPanicked {
        /// Thread index.
        index: u32,
    },
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Operations completed (replied to).
    pub ops: u64,
    /// Wall time from the first send to the last reply.
    pub elapsed: Duration,
    /// Resends after a timeout.
    pub retries: u64,
    /// Replies to a request already answered (late answers to resends).
    pub duplicate_replies: u64,
    /// Datagrams that were not a reply to any of our clients.
    pub foreign_replies: u64,
    /// Replies that disagreed with the model.
    pub errors: u64,
    /// The first few error messages.
    pub first_errors: Vec<String>,
    /// Completed ops per kind: PUT, GET, APPEND, CAS.
    pub per_op: [u64; 4],
    /// Latency in nanoseconds (open loop: from the intended send time).
    pub latency_ns: Histogram<u64>,
    /// Acknowledged writes missing from the final values (final check).
    pub lost_writes: u64,
    /// Acknowledged appends found more than once (final check).
    pub applied_twice: u64,
    /// Keys read back by the final check.
    pub keys_checked: u64,
    /// The longest time no reply arrived while requests were outstanding
    /// (the client-visible gap of a failover), and when it ended.
    pub longest_stall: Duration,
    /// End of the longest stall, Unix µs.
    pub stall_end_unix_us: u64,
    /// Every stall of at least [`STALL_KEPT`]: (start, end) in Unix µs, at
    /// most [`MAX_STALLS`] (the first ones).
    pub stalls: Vec<(u64, u64)>,
    /// Replies per server address that sent them: (address, count, first
    /// and last arrival in Unix µs).
    pub by_source: Vec<SourceReplies>,
}

/// Stalls at least this long are kept in [`LoadReport::stalls`].
pub const STALL_KEPT: Duration = Duration::from_micros(500);
/// At most this many stalls are kept per thread.
pub const MAX_STALLS: usize = 65_536;

impl LoadReport {
    /// The longest stall (no reply while requests were outstanding) that
    /// overlaps `[from, to]` (Unix µs), as (start, end); `None` if replies
    /// kept coming.
    pub fn stall_within(&self, from: u64, to: u64) -> Option<(u64, u64)> {
        self.stalls
            .iter()
            .copied()
            .filter(|&(s, e)| s <= to && e >= from)
            .max_by_key(|&(s, e)| e - s)
    }
}

/// Replies that came from one server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceReplies {
    /// The address the replies came from.
    pub addr: SocketAddr,
    /// How many.
    pub replies: u64,
    /// First arrival, Unix µs.
    pub first_unix_us: u64,
    /// Last arrival, Unix µs.
    pub last_unix_us: u64,
    /// Every arrival, Unix µs, in order.
    pub times: Vec<u64>,
}

impl SourceReplies {
    /// Replies that arrived after `t` (Unix µs).
    pub fn after(&self, t: u64) -> u64 {
        self.times.iter().filter(|&&x| x > t).count() as u64
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn note_source(v: &mut Vec<SourceReplies>, addr: SocketAddr, at: u64) {
    match v.iter_mut().find(|s| s.addr == addr) {
        Some(s) => {
            s.replies += 1;
            s.first_unix_us = s.first_unix_us.min(at);
            s.last_unix_us = s.last_unix_us.max(at);
            s.times.push(at);
        }
        None => v.push(SourceReplies {
            addr,
            replies: 1,
            first_unix_us: at,
            last_unix_us: at,
            times: vec![at],
        }),
    }
}

/// A load that ran but found the server wrong.
#[derive(Debug, thiserror::Error)]
pub enum LoadVerdict {
    /// The final check found acknowledged writes missing or doubled.
    #[error("final check: {lost} acknowledged writes lost, {twice} applied twice")]
    Lost {
        /// Acknowledged writes missing.
        lost: u64,
        /// Writes applied twice.
        twice: u64,
    },
    /// Replies disagreed with the clients' model.
    #[error("{errors} of {ops} replies disagreed with the model; first: {first}")]
    Wrong {
        /// Wrong replies.
        errors: u64,
        /// Replies in all.
        ops: u64,
        /// The first, described.
        first: String,
    },
}

impl LoadReport {
    /// Ok when nothing was lost, doubled or wrong.
    pub fn verdict(&self) -> Result<(), LoadVerdict> {
        if self.lost_writes > 0 || self.applied_twice > 0 {
            return Err(LoadVerdict::Lost {
                lost: self.lost_writes,
                twice: self.applied_twice,
            });
        }
        if self.errors > 0 {
            return Err(LoadVerdict::Wrong {
                errors: self.errors,
                ops: self.ops,
                first: self.first_errors.first().cloned().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// The report as `ftvm client load` prints it.
    pub fn render(&self, cfg: &LoadConfig) -> String {
        use std::fmt::Write as _;
        let r = self;
        let mode = match cfg.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        let servers: Vec<String> = cfg.servers().iter().map(ToString::to_string).collect();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "load: {} clients on {} thread(s), {} ops, {mode}, server {}",
            cfg.clients,
            cfg.threads,
            r.ops,
            servers.join(",")
        );
        let _ = writeln!(
            o,
            "  {:>10.0} ops/s  elapsed {:.3} s  retries {}  duplicate replies {}  errors {}",
            r.ops_per_sec(),
            r.elapsed.as_secs_f64(),
            r.retries,
            r.duplicate_replies,
            r.errors
        );
        let _ = writeln!(
            o,
            "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            r.latency_us(0.5),
            r.latency_us(0.9),
            r.latency_us(0.99),
            r.latency_us(0.999),
            r.max_us()
        );
        let _ = writeln!(
            o,
            "  ops  PUT {}  GET {}  APPEND {}  CAS {}",
            r.per_op[0], r.per_op[1], r.per_op[2], r.per_op[3]
        );
        let _ = writeln!(
            o,
            "  longest stall {:.1} ms",
            r.longest_stall.as_secs_f64() * 1e3
        );
        for s in &r.by_source {
            let _ = writeln!(o, "  replies from {}: {}", s.addr, s.replies);
        }
        if cfg.final_check {
            let _ = writeln!(
                o,
                "  final check: {} keys read back, {} acknowledged writes lost, {} applied twice",
                r.keys_checked, r.lost_writes, r.applied_twice
            );
        }
        for e in &r.first_errors {
            let _ = writeln!(o, "  error: {e}");
        }
        o
    }

    /// Completed ops per second.
    pub fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ops as f64 / s } else { 0.0 }
    }

    /// Latency at quantile `q` (0..=1) in microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }

    /// Largest latency in microseconds.
    pub fn max_us(&self) -> f64 {
        self.latency_ns.max() as f64 / 1000.0
    }

    fn merge(&mut self, other: LoadReport) {
        self.ops += other.ops;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.retries += other.retries;
        self.duplicate_replies += other.duplicate_replies;
        self.foreign_replies += other.foreign_replies;
        self.errors += other.errors;
        for m in other.first_errors {
            if self.first_errors.len() < KEEP_ERRORS {
                self.first_errors.push(m);
            }
        }
        for (a, b) in self.per_op.iter_mut().zip(other.per_op) {
            *a += b;
        }
        self.stalls.extend(other.stalls);
        self.lost_writes += other.lost_writes;
        self.applied_twice += other.applied_twice;
        self.keys_checked += other.keys_checked;
        if other.longest_stall > self.longest_stall {
            self.longest_stall = other.longest_stall;
            self.stall_end_unix_us = other.stall_end_unix_us;
        }
        for s in other.by_source {
            match self.by_source.iter_mut().find(|m| m.addr == s.addr) {
                Some(m) => {
                    m.replies += s.replies;
                    m.first_unix_us = m.first_unix_us.min(s.first_unix_us);
                    m.last_unix_us = m.last_unix_us.max(s.last_unix_us);
                    m.times.extend(s.times);
                }
                None => self.by_source.push(s),
            }
        }
        // Both histograms have the same bounds: `add` cannot fail.
        let _ = self.latency_ns.add(&other.latency_ns);
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid")
}

/// splitmix64: a small seeded generator (no dependency, same sequence everywhere).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the reply to an in-flight request must be.
#[derive(Debug)]
enum Expect {
    Put {
        key: usize,
        value: Vec<u8>,
    },
    Get {
        key: usize,
    },
    Append {
        key: usize,
        value: Vec<u8>,
    },
    Cas {
        key: usize,
        expected: Vec<u8>,
        new: Vec<u8>,
    },
    /// The final check's read of a key.
    Check {
        key: usize,
    },
}

#[derive(Debug)]
struct Inflight {
    request_no: u64,
    datagram: Vec<u8>,
    expect: Expect,
    intended: Instant,
    last_send: Instant,
    attempts: u32,
    /// Index of the server address the last send went to.
    server: usize,
}

#[derive(Debug)]
struct ClientState {
    id: u64,
    next_no: u64,
    rng: Rng,
    key_names: Vec<Vec<u8>>,
    model: Vec<Option<Vec<u8>>>,
    inflight: Option<Inflight>,
    /// The key the APPEND-only mix appends to (a fresh one once it is full).
    append_key: usize,
    /// Keys the final check still has to read.
    to_check: std::collections::VecDeque<usize>,
    /// The server address that answered last (new requests go there).
    server: usize,
}

/// What the final check found for one key.
fn compare_final(mix: OpMix, model: Option<&[u8]>, got: Option<&[u8]>) -> (u64, u64) {
    match mix {
        OpMix::AppendOnly => {
            let tokens = |v: Option<&[u8]>| -> Vec<Vec<u8>> {
                v.unwrap_or_default()
                    .split(|b| *b == b';')
                    .filter(|t| !t.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            };
            let (want, have) = (tokens(model), tokens(got));
            let lost = want.iter().filter(|t| !have.contains(t)).count() as u64;
            let mut twice = 0;
            for (i, t) in have.iter().enumerate() {
                if have[..i].contains(t) {
                    twice += 1;
                }
            }
            (lost, twice)
        }
        // The model is the value; any difference is a lost write.
        OpMix::Mixed => (u64::from(model != got), 0),
    }
}

impl ClientState {
    fn random_value(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.rng.below(max as u64) as usize;
        (0..len).map(|_| b'a' + self.rng.below(26) as u8).collect()
    }

    /// The next APPEND-only op: a unique token onto the current key, or a
    /// fresh key once the current one would overflow.
    fn next_append(&mut self) -> Expect {
        let value = format!("{:x};", self.next_no).into_bytes();
        let len = self.model[self.append_key].as_ref().map_or(0, Vec::len);
        if len + value.len() > MAX_VALUE {
            let n = self.key_names.len();
            self.key_names
                .push(format!("c{:x}/a{n}", self.id).into_bytes());
            self.model.push(None);
            self.append_key = n;
        }
        Expect::Append {
            key: self.append_key,
            value,
        }
    }

    /// Draws the next op (or the next key to check), encodes it, and makes
    /// it in flight.
    fn issue(&mut self, max_value: usize, mix: OpMix, intended: Instant, now: Instant) {
        let expect = if let Some(key) = self.to_check.pop_front() {
            Expect::Check { key }
        } else if mix == OpMix::AppendOnly {
            self.next_append()
        } else {
            self.draw(max_value)
        };
        self.send_op(expect, intended, now);
    }

    fn draw(&mut self, max_value: usize) -> Expect {
        let key = self.rng.below(self.key_names.len() as u64) as usize;
        let current = self.model[key].clone();
        match self.rng.below(4) {
            0 => Expect::Put {
                key,
                value: self.random_value(max_value),
            },
            1 => Expect::Get { key },
            2 => {
                let value = self.random_value(max_value);
                let cur_len = current.as_ref().map_or(0, Vec::len);
                if cur_len + value.len() > MAX_VALUE {
                    Expect::Put { key, value }
                } else {
                    Expect::Append { key, value }
                }
            }
            _ => {
                let mut expected = current.clone().unwrap_or_default();
                // One CAS in three expects a wrong value.
                if self.rng.below(3) == 0 {
                    expected.push(b'!');
                }
                Expect::Cas {
                    key,
                    expected,
                    new: self.random_value(max_value),
                }
            }
        }
    }

    fn send_op(&mut self, expect: Expect, intended: Instant, now: Instant) {
        let (op, k, value, new_value): (Op, usize, &[u8], &[u8]) = match &expect {
            Expect::Put { key, value } => (Op::Put, *key, value, &[]),
            Expect::Get { key } | Expect::Check { key } => (Op::Get, *key, &[], &[]),
            Expect::Append { key, value } => (Op::Append, *key, value, &[]),
            Expect::Cas { key, expected, new } => (Op::Cas, *key, expected, new),
        };
        let request_no = self.next_no;
        self.next_no += 1;
        let req = Request {
            op,
            client_id: self.id,
            request_no,
            key: &self.key_names[k],
            value,
            new_value,
        };
        let mut buf = vec![0u8; req.encoded_len()];
        // Keys are short and values <= max_value <= MAX_VALUE: encoding fits.
        let n = req
            .encode(&mut buf)
            .expect("generated request is within limits");
        buf.truncate(n);
        self.inflight = Some(Inflight {
            request_no,
            datagram: buf,
            expect,
            intended,
            last_send: now,
            attempts: 1,
            server: self.server,
        });
    }

    /// Checks `reply` against the model and updates it; `Err` describes a
    /// disagreement. Returns the op's index in `per_op`.
    fn verify(&mut self, expect: Expect, reply: &Reply<'_>) -> (usize, Result<(), String>) {
        let want = |status: Status, value: &[u8]| -> Result<(), String> {
            if reply.status != status || reply.value != value {
                return Err(format!(
                    "client {:#x} request {} ({:?}): got {} {:?}, expected {} {:?}",
                    self.id,
                    reply.request_no,
                    reply.op,
                    reply.status.name(),
                    String::from_utf8_lossy(reply.value),
                    status.name(),
                    String::from_utf8_lossy(value),
                ));
            }
            Ok(())
        };
        match expect {
            Expect::Put { key, value } => {
                let r = want(Status::Ok, &[]);
                self.model[key] = Some(value);
                (0, r)
            }
            Expect::Get { key } | Expect::Check { key } => {
                let r = match &self.model[key] {
                    Some(v) => want(Status::Ok, v),
                    None => want(Status::NotFound, &[]),
                };
                (1, r)
            }
            Expect::Append { key, value } => {
                let mut v = self.model[key].take().unwrap_or_default();
                v.extend_from_slice(&value);
                let r = want(Status::Ok, &v);
                self.model[key] = Some(v);
                (2, r)
            }
            Expect::Cas { key, expected, new } => {
                let r = match &self.model[key] {
                    None => want(Status::NotFound, &[]),
                    Some(cur) if *cur == expected => want(Status::Ok, &[]),
                    Some(cur) => want(Status::CasMismatch, cur),
                };
                if matches!(&self.model[key], Some(cur) if *cur == expected) {
                    self.model[key] = Some(new);
                }
                (3, r)
            }
        }
    }
}

/// Runs the load and returns the merged report. Fails only if the run could
/// not complete (socket error, no reply after every attempt); wrong replies
/// are counted in [`LoadReport::errors`].
pub fn run_load(cfg: &LoadConfig) -> Result<LoadReport, LoadError> {
    cfg.validate()?;
    let base = match cfg.first_client_id {
        Some(id) => id,
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let mut r = Rng(cfg.seed ^ t ^ (u64::from(std::process::id()) << 32));
            // Leave room below u64::MAX for the ids of every client.
            r.next() >> 8
        }
    };
    let threads = cfg.threads;
    let mut handles = Vec::new();
    for t in 0..threads {
        // Thread t takes clients t, t + threads, ... and an even share of ops.
        let ids: Vec<u64> = (0..cfg.clients)
            .filter(|c| c % threads == t)
            .map(|c| base + u64::from(c))
            .collect();
        let ops =
            cfg.ops / u64::from(threads) + u64::from(u64::from(t) < cfg.ops % u64::from(threads));
        let cfg = cfg.clone();
        let h = std::thread::Builder::new()
            .name(format!("kv-load-{t}"))
            .spawn(move || run_thread(&cfg, &ids, ops, t))
            .map_err(|source| LoadError::Io {
                what: "spawn load thread",
                source,
            })?;
        handles.push(h);
    }
    let mut total: Option<LoadReport> = None;
    let mut first_err = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => match &mut total {
                Some(t) => t.merge(r),
                None => total = Some(r),
            },
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(LoadError::ThreadPanicked { index: i as u32 });
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    // threads >= 1 was validated, so at least one report exists.
    Ok(total.expect("at least one load thread"))
}

fn run_thread(
    cfg: &LoadConfig,
    ids: &[u64],
    mut quota: u64,
    thread: u32,
) -> Result<LoadReport, LoadError> {
    if !cfg.pin_cores.is_empty() {
        let id = cfg.pin_cores[thread as usize % cfg.pin_cores.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(LoadError::Config {
                key: "pin_cores",
                value: id.to_string(),
                allowed: "cores this process may run on",
            });
        }
    }
    let io = |what| move |source| LoadError::Io { what, source };
    let servers = cfg.servers();
    let bind: SocketAddr = if cfg.server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).map_err(io("bind load socket"))?;
    socket
        .set_nonblocking(true)
        .map_err(io("set nonblocking"))?;
    let base = ids.first().copied().unwrap_or(0);
    let stride = u64::from(cfg.threads);
    let mut clients: Vec<ClientState> = ids
        .iter()
        .map(|&id| ClientState {
            id,
            next_no: 1,
            rng: Rng(cfg.seed.wrapping_mul(0x100_0000_01b3)
                ^ (id - base)
                ^ u64::from(thread) << 40),
            key_names: (0..cfg.keys)
                .map(|j| format!("c{id:x}/k{j}").into_bytes())
                .collect(),
            model: vec![None; cfg.keys as usize],
            inflight: None,
            append_key: 0,
            to_check: std::collections::VecDeque::new(),
            server: 0,
        })
        .collect();
    let mut report = LoadReport {
        ops: 0,
        elapsed: Duration::ZERO,
        retries: 0,
        duplicate_replies: 0,
        foreign_replies: 0,
        errors: 0,
        first_errors: Vec::new(),
        per_op: [0; 4],
        latency_ns: new_histogram(),
        lost_writes: 0,
        applied_twice: 0,
        keys_checked: 0,
        longest_stall: Duration::ZERO,
        stall_end_unix_us: 0,
        stalls: Vec::new(),
        by_source: Vec::new(),
    };
    let interval = cfg
        .rate
        .map(|r| Duration::from_secs_f64(f64::from(cfg.threads) / r));
    let start = Instant::now();
    let mut next_intended = start;
    let mut issued = 0u64;
    let mut idle: std::collections::VecDeque<usize> = (0..clients.len()).collect();
    let mut last_scan = start;
    let scan_every = (cfg.timeout / 4).max(Duration::from_micros(200));
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let send = |socket: &UdpSocket, d: &[u8], server: usize| -> Result<(), LoadError> {
        match socket.send_to(d, servers[server % servers.len()]) {
            Ok(_) => Ok(()),
            // A full socket buffer drops the datagram: the timeout resends it.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(LoadError::Io {
                what: "send request",
                source,
            }),
        }
    };
    let mut checking = false;
    let mut last_progress = start;
    loop {
        // Relaxed: a stop request carries no data.
        if cfg
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
        {
            quota = quota.min(issued);
        }
        if report.ops >= quota {
            if !cfg.final_check
                || (checking
                    && clients
                        .iter()
                        .all(|c| c.to_check.is_empty() && c.inflight.is_none()))
            {
                break;
            }
            if !checking {
                // Every op is answered: read back every key.
                checking = true;
                for (i, c) in clients.iter_mut().enumerate() {
                    c.to_check = (0..c.key_names.len()).collect();
                    if !idle.contains(&i) {
                        idle.push_back(i);
                    }
                }
            }
        }
        let now = Instant::now();
        let (ops_before, issued_before) = (report.ops, issued);
        // 1. Issue (the final check: the next key of every idle client).
        if checking {
            while let Some(c) = idle.pop_front() {
                let client = &mut clients[c];
                if client.to_check.is_empty() {
                    continue;
                }
                client.issue(cfg.max_value_len, cfg.mix, now, now);
                if let Some(f) = &client.inflight {
                    send(&socket, &f.datagram, f.server)?;
                }
            }
        }
        while !checking && issued < quota {
            let intended = match interval {
                None => now,
                Some(_) => {
                    if next_intended > now {
                        break;
                    }
                    next_intended
                }
            };
            let Some(c) = idle.pop_front() else { break };
            let client = &mut clients[c];
            client.issue(cfg.max_value_len, cfg.mix, intended, now);
            issued += 1;
            if let Some(iv) = interval {
                next_intended += iv;
            }
            if let Some(f) = &client.inflight {
                send(&socket, &f.datagram, f.server)?;
            }
        }
        // 2. Receive every reply waiting.
        loop {
            let (n, from) = match socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(source) => {
                    return Err(LoadError::Io {
                        what: "receive reply",
                        source,
                    });
                }
            };
            let Ok(reply) = Reply::decode(&buf[..n]) else {
                report.foreign_replies += 1;
                continue;
            };
            let offset = reply.client_id.wrapping_sub(base);
            let idx = (offset / stride) as usize;
            if offset % stride != 0 || idx >= clients.len() {
                report.foreign_replies += 1;
                continue;
            }
            let client = &mut clients[idx];
            let matches = client
                .inflight
                .as_ref()
                .is_some_and(|f| f.request_no == reply.request_no);
            if !matches {
                report.duplicate_replies += 1;
                continue;
            }
            let Some(f) = client.inflight.take() else {
                continue;
            };
            let done = Instant::now();
            note_source(&mut report.by_source, from, unix_us());
            let stall = done.duration_since(last_progress);
            let now_us = unix_us();
            if stall > report.longest_stall {
                report.longest_stall = stall;
                report.stall_end_unix_us = now_us;
            }
            if stall >= STALL_KEPT && report.stalls.len() < MAX_STALLS {
                report
                    .stalls
                    .push((now_us.saturating_sub(stall.as_micros() as u64), now_us));
            }
            last_progress = done;
            // Later requests of this client go where it was answered.
            client.server = servers.iter().position(|s| *s == from).unwrap_or(f.server);
            if let Expect::Check { key } = f.expect {
                let got = (reply.status == Status::Ok).then_some(reply.value);
                let (lost, twice) = compare_final(cfg.mix, client.model[key].as_deref(), got);
                report.keys_checked += 1;
                report.lost_writes += lost;
                report.applied_twice += twice;
                if (lost > 0 || twice > 0) && report.first_errors.len() < KEEP_ERRORS {
                    report.first_errors.push(format!(
                        "final check of client {:#x} key {:?}: {lost} acknowledged writes missing, {twice} applied twice (value {:?})",
                        client.id,
                        String::from_utf8_lossy(&client.key_names[key]),
                        String::from_utf8_lossy(got.unwrap_or_default()),
                    ));
                }
                idle.push_back(idx);
                continue;
            }
            let lat = done.duration_since(f.intended).as_nanos() as u64;
            report
                .latency_ns
                .saturating_record(lat.clamp(1, MAX_LATENCY_NS));
            let (kind, verdict) = client.verify(f.expect, &reply);
            report.per_op[kind] += 1;
            if let Err(m) = verdict {
                report.errors += 1;
                if report.first_errors.len() < KEEP_ERRORS {
                    report.first_errors.push(m);
                }
            }
            report.ops += 1;
            if let Some(p) = &cfg.progress {
                // Relaxed: a display counter.
                p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            report.elapsed = done.duration_since(start);
            idle.push_back(idx);
        }
        // 3. Resend what timed out.
        if now.duration_since(last_scan) >= scan_every {
            last_scan = now;
            for client in &mut clients {
                let Some(f) = client.inflight.as_mut() else {
                    continue;
                };
                if now.duration_since(f.last_send) < cfg.timeout {
                    continue;
                }
                if f.attempts >= cfg.max_attempts {
                    return Err(LoadError::NoReply {
                        server: servers[f.server % servers.len()],
                        client_id: client.id,
                        request_no: f.request_no,
                        attempts: f.attempts,
                        timeout_ms: cfg.timeout.as_millis() as u64,
                    });
                }
                f.attempts += 1;
                f.last_send = now;
                // The next address: the service may have moved (failover).
                f.server = (f.server + 1) % servers.len();
                report.retries += 1;
                send(&socket, &f.datagram, f.server)?;
            }
        }
        if cfg.spin || report.ops != ops_before || issued != issued_before {
            std::hint::spin_loop();
        } else {
            block_until_readable(&socket, Duration::from_micros(500)).map_err(|source| {
                LoadError::Io {
                    what: "wait for a reply",
                    source,
                }
            })?;
        }
    }
    Ok(report)
}

/// Blocks until a datagram is waiting on the (nonblocking) `socket` or
/// `timeout` passed, without consuming it.
fn block_until_readable(socket: &UdpSocket, timeout: Duration) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(timeout))?;
    let r = socket.peek_from(&mut [0u8; 1]);
    socket.set_nonblocking(true)?;
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

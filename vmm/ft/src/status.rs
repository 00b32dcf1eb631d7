//! A VMM's status endpoint: each TCP connection to `--status ADDR` gets one
//! JSON object (role, mode, exit ordinal, last seq sent / ACKed / replayed,
//! lag, held outputs, bytes logged) and is closed. `ftvm status ADDR` reads it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the live side of a pair reports (a primary, or a backup that went
/// live and records for its next backup).
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrimaryReport {
    /// The generation this side runs at.
    pub generation: u64,
    /// `protected`, `joining`, `unprotected`, `arbitrating`, `lost`, `finished`.
    pub protection: &'static str,
    /// The last state change's story.
    pub note: String,
    /// Exit ordinal of the last entry logged.
    pub exit_ordinal: u64,
    /// Seq of the last entry appended (since recording started here).
    pub last_seq_appended: u64,
    /// Seq of the last entry handed to the transport.
    pub last_seq_sent: u64,
    /// Highest seq the backup ACKed.
    pub last_seq_acked: u64,
    /// The backup's replay position: seq.
    pub last_seq_replayed: u64,
    /// The backup's replay position: exit ordinal.
    pub replay_exit_ordinal: u64,
    /// Replay lag at the last check, µs.
    pub lag_us: u64,
    /// Largest replay lag, µs.
    pub max_lag_us: u64,
    /// Lag-control limit, µs.
    pub lag_limit_us: u64,
    /// Lag-control sleeps.
    pub lag_sleeps: u64,
    /// Flow control: waits on a full ring.
    pub ring_full_waits: u64,
    /// Outputs waiting for an ACK.
    pub held_outputs: u64,
    /// Outputs released.
    pub released_outputs: u64,
    /// Entry bytes logged.
    pub bytes_logged: u64,
    /// The last arbitration, µs (0: none).
    pub arbitration_us: u64,
    /// When the backup was found lost (Unix µs; 0: never).
    pub backup_lost_unix_us: u64,
    /// When the arbiter answered (Unix µs; 0: never).
    pub decided_unix_us: u64,
    /// State transfers to spares.
    pub transfer: crate::driver::TransferView,
}

/// The live side's counters, read for each [`PrimaryReport`].
#[derive(Clone, Debug)]
pub struct PrimaryView {
    /// The driver's published state.
    pub shared: Arc<crate::DriverShared>,
    /// Held / released outputs.
    pub gate: Arc<crate::GateCounters>,
    /// Sink counters.
    pub sink: Arc<crate::SinkStats>,
    /// `channel.lag_limit_us`.
    pub lag_limit_us: u64,
}

impl PrimaryView {
    /// The view of `end` (take it before `end` is installed).
    pub fn of(end: &crate::PrimaryEnd, lag_limit_us: u64) -> PrimaryView {
        PrimaryView {
            shared: end.shared.clone(),
            gate: end.gate_counters.clone(),
            sink: end.sink_stats.clone(),
            lag_limit_us,
        }
    }

    /// The report now.
    pub fn report(&self) -> PrimaryReport {
        let (sh, st) = (&self.shared, &self.sink);
        let (replayed, replay_ordinal) = sh.replay();
        let (lost, decided) = sh.loss_times();
        PrimaryReport {
            generation: sh.generation(),
            protection: sh.protection().name(),
            note: sh.note(),
            exit_ordinal: st.exit_ordinal.get(),
            last_seq_appended: st.entries.get(),
            last_seq_sent: sh.last_sent_seq(),
            last_seq_acked: sh.acked_seq(),
            last_seq_replayed: replayed,
            replay_exit_ordinal: replay_ordinal,
            lag_us: st.lag_us.get(),
            max_lag_us: st.max_lag_us.get(),
            lag_limit_us: self.lag_limit_us,
            lag_sleeps: st.lag_sleeps.get(),
            ring_full_waits: st.full_waits.get(),
            held_outputs: self.gate.held(),
            released_outputs: self.gate.released.get(),
            bytes_logged: st.bytes.get(),
            arbitration_us: sh.arbitration_us(),
            backup_lost_unix_us: lost,
            decided_unix_us: decided,
            transfer: sh.transfer(),
        }
    }
}

/// Produces the current status.
pub type Snapshot = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Starts the endpoint on `addr` in a background thread; returns the bound address.
pub fn serve(addr: &str, snapshot: Snapshot) -> io::Result<String> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?.to_string();
    std::thread::Builder::new()
        .name("ftvm-status".into())
        .spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let body = snapshot().to_string();
                // A client that went away is its own problem.
                let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = conn.write_all(body.as_bytes());
                let _ = conn.write_all(b"\n");
            }
        })?;
    Ok(local)
}

/// The most a status reply may be: a larger one is not from ftvm.
pub const MAX_STATUS_BYTES: u64 = 64 * 1024;

/// Reads the status of the VMM at `addr`, all of it within `timeout`.
/// Something that is not an ftvm status endpoint (a reply over
/// [`MAX_STATUS_BYTES`], one that is not a JSON object with a `role`, one that
/// does not end in time) is refused, saying which.
pub fn query(addr: &str, timeout: Duration) -> io::Result<serde_json::Value> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}")))?;
    let deadline = Instant::now() + timeout;
    let s = TcpStream::connect_timeout(&sa, timeout)?;
    let not_ftvm = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{addr} is not an ftvm status endpoint: {why}"),
        )
    };
    let mut body = Vec::new();
    let mut limited = s.take(MAX_STATUS_BYTES + 1);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {} s", timeout.as_secs_f64()),
            ));
        }
        limited.get_ref().set_read_timeout(Some(left))?;
        match limited.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    if body.len() as u64 > MAX_STATUS_BYTES {
        return Err(not_ftvm(format!(
            "it sent more than {MAX_STATUS_BYTES} bytes"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(body.trim_ascii())
        .map_err(|e| not_ftvm(format!("its reply is not JSON ({e})")))?;
    if v.get("role").and_then(|r| r.as_str()).is_none() {
        return Err(not_ftvm("its JSON has no \"role\"".to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_snapshot() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(7));
        let n2 = n.clone();
        let addr = serve(
            "127.0.0.1:0",
            Arc::new(move || serde_json::json!({"role": "primary", "seq": n2.load(std::sync::atomic::Ordering::Relaxed)})),
        )
        .unwrap();
        let v = query(&addr, Duration::from_secs(2)).unwrap();
        assert_eq!(v["role"], "primary");
        assert_eq!(v["seq"], 7);
        n.store(9, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(query(&addr, Duration::from_secs(2)).unwrap()["seq"], 9);
        assert!(query("127.0.0.1:1", Duration::from_millis(200)).is_err());
    }

    /// A server that is not ftvm: valid JSON of another shape, an endless
    /// stream, and one that never finishes — each refused, saying which.
    #[test]
    fn refuses_what_is_not_an_ftvm_status_endpoint() {
        fn server(reply: impl Fn(TcpStream) + Send + 'static) -> String {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap().to_string();
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    reply(c);
                }
            });
            a
        }
        let hello = server(|mut c| {
            let _ = c.write_all(br#"{"hello":"world"}"#);
        });
        let e = query(&hello, Duration::from_secs(2))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("is not an ftvm status endpoint: its JSON has no \"role\""),
            "{e}"
        );
        let endless = server(|mut c| while c.write_all(&[b'x'; 8192]).is_ok() {});
        let e = query(&endless, Duration::from_secs(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sent more than 65536 bytes"), "{e}");
        let silent = server(|c| {
            std::thread::sleep(Duration::from_secs(3));
            drop(c);
        });
        let e = query(&silent, Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "timed out after 0.3 s");
    }
}

//! A VMM's status endpoint: each TCP connection to `--status ADDR` gets one
//! JSON object (role, mode, exit ordinal, last seq sent / ACKed / replayed,
//! lag, held outputs, bytes logged) and is closed. `ftvm status ADDR` reads it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

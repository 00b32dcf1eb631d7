//! A VMM's status endpoint: each TCP connection to `--status ADDR` gets one
//! JSON object (role, mode, exit ordinal, last seq sent / ACKed / replayed,
//! lag, held outputs, bytes logged) and is closed. `ftvm status ADDR` reads it.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

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

/// Reads the status of the VMM at `addr`.
pub fn query(addr: &str, timeout: Duration) -> io::Result<serde_json::Value> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no address for {addr}")))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    serde_json::from_str(body.trim()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("status from {addr} is not JSON ({e}): {body:?}"),
        )
    })
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
}

//! The named scenarios: what the source end measures and what the sink end does.
//!
//! Every run starts with a [`Preamble`] sent by the source over the raw
//! transport: it names the scenario, the payload size and the count, so one
//! sink (local thread or `--role sink` on another host) serves any scenario.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ftvm_channel::transport::{Transport, TransportError};
use ftvm_channel::{AckGate, AppendError, Appender, Backup, HelloParams, Primary, idler_for};
use ftvm_tuning::Settings;
use ftvm_wire::control::Ack;
use ftvm_wire::{Kind, frame_len};
use indicatif::ProgressBar;

use crate::cpu::process_cpu_seconds;
use crate::hist::Latency;

/// What a source run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Latencies, if the scenario measures any.
    pub hist: Option<Latency>,
    /// Entries (or pings) moved.
    pub entries: u64,
    /// Bytes per entry on the wire (whole frame).
    pub frame_bytes: usize,
    /// Wall time of the measured part.
    pub secs: f64,
    /// Process CPU use as % of one core (idle-cpu).
    pub cpu_pct: Option<f64>,
    /// Anything worth a note in the table.
    pub note: String,
}

/// Parameters both ends agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Payload bytes per entry.
    pub payload: usize,
    /// Entries, round trips, or (idle-cpu) milliseconds.
    pub count: u64,
    /// mixed: plain entries per OUTPUT entry.
    pub output_every: u32,
    /// mixed: offered rate in entries per second.
    pub rate: u64,
}

/// A named scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name used by `--filter` and in reports.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    /// Code in the preamble.
    pub code: u32,
    /// Drives the connected source end.
    pub source: fn(&Settings, Params, Box<dyn Transport>, &ProgressBar) -> Result<Outcome>,
    /// Drives the accepted sink end.
    pub sink: fn(&Settings, Params, Box<dyn Transport>) -> Result<()>,
}

/// Every scenario, in run order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "floor",
        about: "raw ping-pong of an entry frame and an ACK frame on the transport (no channel logic)",
        code: 1,
        source: floor_source,
        sink: floor_sink,
    },
    Scenario {
        name: "open-floor",
        about: "raw ping-pong started at --rate pings/s; latency from the intended start (open-loop floor of `mixed`)",
        code: 7,
        source: open_floor_source,
        sink: floor_sink,
    },
    Scenario {
        name: "stream-floor",
        about: "raw one-way streaming of the same bytes as `throughput` (no channel logic)",
        code: 2,
        source: stream_source,
        sink: stream_sink,
    },
    Scenario {
        name: "output-rule",
        about: "closed loop: append one OUTPUT entry, latency until the AckGate releases it",
        code: 3,
        source: output_rule_source,
        sink: backup_sink,
    },
    Scenario {
        name: "mixed",
        about: "open loop at --rate: --output-every plain entries then one OUTPUT; latency from intended time",
        code: 4,
        source: mixed_source,
        sink: backup_sink,
    },
    Scenario {
        name: "throughput",
        about: "stream entries as fast as the channel takes them, with ACKs",
        code: 5,
        source: throughput_source,
        sink: backup_sink,
    },
    Scenario {
        name: "idle-cpu",
        about: "connected idle channel (balanced profile): process CPU as % of one core",
        code: 6,
        source: idle_source,
        sink: backup_sink,
    },
];

/// Looks a scenario up by its preamble code.
pub fn by_code(code: u32) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.code == code)
}

/// The first bytes of every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// Scenario code.
    pub code: u32,
    /// Parameters.
    pub params: Params,
}

const PREAMBLE_MAGIC: u32 = u32::from_le_bytes(*b"FTVB");
const PREAMBLE_LEN: usize = 32;

impl Preamble {
    fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let mut b = [0u8; PREAMBLE_LEN];
        b[0..4].copy_from_slice(&PREAMBLE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.code.to_le_bytes());
        b[8..12].copy_from_slice(&(self.params.payload as u32).to_le_bytes());
        b[12..16].copy_from_slice(&self.params.output_every.to_le_bytes());
        b[16..24].copy_from_slice(&self.params.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.params.rate.to_le_bytes());
        b
    }

    fn decode(b: &[u8; PREAMBLE_LEN]) -> Result<Preamble> {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let magic = u32_at(0);
        ensure!(
            magic == PREAMBLE_MAGIC,
            "bench preamble magic {magic:#x}, expected {PREAMBLE_MAGIC:#x} (peer is not an ftvm bench source)"
        );
        Ok(Preamble {
            code: u32_at(4),
            params: Params {
                payload: u32_at(8) as usize,
                output_every: u32_at(12),
                count: u64_at(16),
                rate: u64_at(24),
            },
        })
    }

    /// Sends the preamble (busy-polling; the transport is fresh).
    pub fn send(&self, t: &mut dyn Transport) -> Result<()> {
        send_all(t, &self.encode(), Duration::from_secs(5)).context("send bench preamble")
    }

    /// Receives a preamble.
    pub fn recv(t: &mut dyn Transport) -> Result<Preamble> {
        let mut b = [0u8; PREAMBLE_LEN];
        recv_exact(t, &mut b, Duration::from_secs(10)).context("receive bench preamble")?;
        Preamble::decode(&b)
    }
}

/// Sends all of `buf`, busy-polling, within `timeout`.
fn send_all(t: &mut dyn Transport, buf: &[u8], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut off = 0;
    while off < buf.len() {
        off += t.send(&[&buf[off..]])?;
        t.progress()?;
        if start.elapsed() > timeout {
            bail!("sent {off} of {} bytes in {timeout:?}", buf.len());
        }
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes, busy-polling, within `timeout`.
fn recv_exact(t: &mut dyn Transport, buf: &mut [u8], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut off = 0;
    while off < buf.len() {
        off += t.recv(&mut buf[off..])?;
        if start.elapsed() > timeout {
            bail!("received {off} of {} bytes in {timeout:?}", buf.len());
        }
    }
    Ok(())
}

/// Round trips not recorded (connection and cache warm-up).
fn warmup(count: u64) -> u64 {
    (count / 10).min(1000)
}

/// Ping and pong sizes of the floor: an entry frame and an ACK frame.
fn floor_sizes(payload: usize) -> (usize, usize) {
    (frame_len(payload), frame_len(Ack::LEN))
}

fn floor_source(
    _: &Settings,
    p: Params,
    mut t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    let (ping_len, pong_len) = floor_sizes(p.payload);
    let ping = vec![0xA5u8; ping_len];
    let mut pong = vec![0u8; pong_len];
    let mut hist = Latency::new();
    let warm = warmup(p.count);
    let started = Instant::now();
    for i in 0..warm + p.count {
        let t0 = Instant::now();
        // Busy-polled both ways: this is the physical floor.
        let mut off = 0;
        while off < ping_len {
            off += t.send(&[&ping[off..]])?;
        }
        let mut got = 0;
        while got < pong_len {
            got += t.recv(&mut pong[got..])?;
        }
        if i >= warm {
            hist.record_ns(t0.elapsed().as_nanos() as u64);
        }
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(t);
    Ok(Outcome {
        hist: Some(hist),
        entries: p.count,
        frame_bytes: ping_len,
        secs,
        ..Outcome::default()
    })
}

fn open_floor_source(
    _: &Settings,
    p: Params,
    mut t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    ensure!(p.rate > 0, "open-floor: --rate must be > 0 pings/s");
    let (ping_len, pong_len) = floor_sizes(p.payload);
    let ping = vec![0xA5u8; ping_len];
    let mut pong = vec![0u8; pong_len];
    let mut hist = Latency::new();
    let interval = Duration::from_secs_f64(1.0 / p.rate as f64);
    let start = Instant::now();
    for i in 0..p.count {
        let intended = start + interval.mul_f64(i as f64);
        while Instant::now() < intended {
            // Idle like a channel between entries: poll the transport.
            let n = t.recv(&mut pong)?;
            ensure!(n == 0, "open-floor: {n} unexpected bytes from the sink");
        }
        let mut off = 0;
        while off < ping_len {
            off += t.send(&[&ping[off..]])?;
        }
        let mut got = 0;
        while got < pong_len {
            got += t.recv(&mut pong[got..])?;
        }
        hist.record_ns(intended.elapsed().as_nanos() as u64);
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Outcome {
        hist: Some(hist),
        entries: p.count,
        frame_bytes: ping_len,
        secs,
        note: format!("offered {} pings/s", p.rate),
        ..Outcome::default()
    })
}

fn floor_sink(_: &Settings, p: Params, mut t: Box<dyn Transport>) -> Result<()> {
    let (ping_len, pong_len) = floor_sizes(p.payload);
    let mut ping = vec![0u8; ping_len];
    let pong = vec![0x5Au8; pong_len];
    loop {
        let mut got = 0;
        while got < ping_len {
            match t.recv(&mut ping[got..]) {
                Ok(n) => got += n,
                Err(TransportError::Closed) if got == 0 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        let mut off = 0;
        while off < pong_len {
            off += t.send(&[&pong[off..]])?;
        }
    }
}

/// Entries streamed by `throughput` (and bytes by `stream-floor`): at least
/// `count`, and at least `min_bytes` of frames so the rate is measurable.
pub fn stream_entries(payload: usize, count: u64, min_bytes: u64) -> u64 {
    count.max(min_bytes / frame_len(payload) as u64)
}

fn stream_source(
    _: &Settings,
    p: Params,
    mut t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    let frame = frame_len(p.payload);
    let total = p.count * frame as u64;
    let chunk = vec![0x3Cu8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(chunk.len() as u64) as usize;
        let k = t.send(&[&chunk[..n]])?;
        sent += k as u64;
        if k == 0 {
            t.progress()?;
        }
        pb.set_position(sent / frame as u64);
    }
    // The sink answers once it has every byte.
    let mut done = [0u8; 8];
    recv_exact(t.as_mut(), &mut done, Duration::from_secs(60))
        .context("stream-floor completion")?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        u64::from_le_bytes(done) == total,
        "sink counted {} bytes, sent {total}",
        u64::from_le_bytes(done)
    );
    Ok(Outcome {
        entries: p.count,
        frame_bytes: frame,
        secs,
        ..Outcome::default()
    })
}

fn stream_sink(_: &Settings, p: Params, mut t: Box<dyn Transport>) -> Result<()> {
    let total = p.count * frame_len(p.payload) as u64;
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    while got < total {
        got += t.recv(&mut buf)? as u64;
    }
    send_all(t.as_mut(), &got.to_le_bytes(), Duration::from_secs(5))?;
    // Keep the connection until the source has read the answer and closed.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        match t.recv(&mut buf) {
            Ok(_) => t.progress().map(drop)?,
            Err(_) => break,
        }
    }
    Ok(())
}

fn hello(settings: &Settings, next_seq: u64) -> HelloParams {
    HelloParams {
        next_seq,
        ..HelloParams::of_settings(settings)
    }
}

/// Appends one entry, polling the primary while the ring is full.
fn append(
    p: &mut Primary,
    a: &mut Appender,
    kind: Kind,
    ordinal: u64,
    payload: &[u8],
) -> Result<u64> {
    loop {
        match a.append(kind, ordinal, payload) {
            Ok(seq) => return Ok(seq),
            Err(AppendError::Full { .. }) => {
                p.poll()?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ships the rest and says goodbye.
fn finish(mut p: Primary, settings: &Settings) -> Result<()> {
    p.finish(Duration::from_millis(
        settings.channel.peer_timeout_ms.max(2000),
    ))?;
    Ok(())
}

fn output_rule_source(
    s: &Settings,
    p: Params,
    t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    let (mut primary, mut app) = Primary::establish(t, &s.channel, hello(s, 1))?;
    let payload = vec![0x11u8; p.payload];
    let mut gate = AckGate::<Instant>::new();
    let mut hist = Latency::new();
    let warm = warmup(p.count);
    let started = Instant::now();
    for i in 0..warm + p.count {
        let t0 = Instant::now();
        let seq = append(&mut primary, &mut app, Kind::OpaqueOutput, i, &payload)?;
        gate.hold(seq, t0)?;
        let mut released = 0;
        while released == 0 {
            primary.poll()?;
            released = gate.release(primary.acked_seq(), |_, t0| {
                if i >= warm {
                    hist.record_ns(t0.elapsed().as_nanos() as u64);
                }
            });
        }
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    finish(primary, s)?;
    Ok(Outcome {
        hist: Some(hist),
        entries: p.count,
        frame_bytes: frame_len(p.payload),
        secs,
        ..Outcome::default()
    })
}

fn mixed_source(
    s: &Settings,
    p: Params,
    t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    ensure!(p.rate > 0, "mixed: --rate must be > 0 entries/s");
    let (mut primary, mut app) = Primary::establish(t, &s.channel, hello(s, 1))?;
    let payload = vec![0x22u8; p.payload];
    let mut gate = AckGate::<Instant>::new();
    let mut hist = Latency::new();
    let group = u64::from(p.output_every) + 1;
    let interval = Duration::from_secs_f64(1.0 / p.rate as f64);
    let start = Instant::now();
    let mut record =
        |_: u64, intended: Instant| hist.record_ns(intended.elapsed().as_nanos() as u64);
    for i in 0..p.count {
        // Open loop: entry i is due at start + i * interval whatever happened
        // before; latency counts from that intended time (no coordinated omission).
        let intended = start + interval.mul_f64(i as f64);
        while Instant::now() < intended {
            primary.poll()?;
            gate.release(primary.acked_seq(), &mut record);
        }
        let output = i % group == group - 1;
        let kind = if output {
            Kind::OpaqueOutput
        } else {
            Kind::Opaque
        };
        let seq = append(&mut primary, &mut app, kind, i, &payload)?;
        if output {
            gate.hold(seq, intended)?;
        }
        primary.poll()?;
        gate.release(primary.acked_seq(), &mut record);
        if i % 1024 == 0 {
            pb.set_position(i);
        }
    }
    while gate.held() > 0 {
        primary.poll()?;
        gate.release(primary.acked_seq(), &mut record);
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "mixed: outputs still held after 120 s"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    finish(primary, s)?;
    let achieved = p.count as f64 / secs;
    Ok(Outcome {
        hist: Some(hist),
        entries: p.count,
        frame_bytes: frame_len(p.payload),
        secs,
        note: format!("offered {} entries/s, achieved {:.0}", p.rate, achieved),
        ..Outcome::default()
    })
}

fn throughput_source(
    s: &Settings,
    p: Params,
    t: Box<dyn Transport>,
    pb: &ProgressBar,
) -> Result<Outcome> {
    let (mut primary, mut app) = Primary::establish(t, &s.channel, hello(s, 1))?;
    let payload = vec![0x33u8; p.payload];
    let start = Instant::now();
    let mut n = 0u64;
    while n < p.count {
        while n < p.count {
            match app.append(Kind::Opaque, n, &payload) {
                Ok(_) => n += 1,
                Err(AppendError::Full { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        primary.poll()?;
        if n % 4096 < 64 {
            pb.set_position(n);
        }
    }
    // Done when the last entry is ACKed.
    let stats = primary.finish(Duration::from_millis(s.channel.peer_timeout_ms.max(5000)))?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        stats.entries_sent == p.count,
        "sent {} entries of {}",
        stats.entries_sent,
        p.count
    );
    Ok(Outcome {
        entries: p.count,
        frame_bytes: frame_len(p.payload),
        secs,
        ..Outcome::default()
    })
}

fn idle_source(
    s: &Settings,
    p: Params,
    t: Box<dyn Transport>,
    _pb: &ProgressBar,
) -> Result<Outcome> {
    let (mut primary, _app) = Primary::establish(t, &s.channel, hello(s, 1))?;
    let mut idler = idler_for(&s.channel);
    // Settle (handshake spin, first ticks), then measure.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(300) {
        let w = primary.poll()?;
        idler.idle(w);
    }
    let dur = Duration::from_millis(p.count);
    let cpu0 = process_cpu_seconds()?;
    let start = Instant::now();
    while start.elapsed() < dur {
        let w = primary.poll()?;
        idler.idle(w);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()? - cpu0;
    finish(primary, s)?;
    Ok(Outcome {
        secs,
        cpu_pct: Some(100.0 * cpu / secs),
        note: format!(
            "idle={:?} park_us={} over {:.1} s, both ends in this process",
            s.channel.idle, s.channel.park_us, secs
        ),
        ..Outcome::default()
    })
}

/// The backup end for every channel scenario: validate, count, ACK per policy.
fn backup_sink(s: &Settings, _p: Params, t: Box<dyn Transport>) -> Result<()> {
    let mut backup = Backup::establish(t, &s.channel, hello(s, 0))?;
    let mut idler = idler_for(&s.channel);
    let mut entries = 0u64;
    while !backup.is_ended() {
        let w = backup.poll(|_, _| entries += 1)?;
        idler.idle(w);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trips_and_rejects_foreign_bytes() {
        let p = Preamble {
            code: 4,
            params: Params {
                payload: 4096,
                count: 123_456_789_012,
                output_every: 10,
                rate: 250_000,
            },
        };
        assert_eq!(Preamble::decode(&p.encode()).unwrap(), p);
        let mut bad = p.encode();
        bad[0] = b'X';
        let e = Preamble::decode(&bad).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn scenario_codes_are_unique() {
        for (i, a) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[i + 1..]
                    .iter()
                    .all(|b| b.code != a.code && b.name != a.name)
            );
            assert_eq!(by_code(a.code).map(|s| s.name), Some(a.name));
        }
    }
}

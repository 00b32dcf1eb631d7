//! `ftvm bench e2e`: the whole system, unprotected against FT, in one run on
//! one machine: kv throughput and latency, the latency FT adds beside the
//! channel's round-trip floor, logging bandwidth, an echo-guest network
//! test in the style of the VMware FT paper's network table, and the dns
//! guest under the real dnsperf ([`crate::dns`]).

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{ChannelOptions, Latency, Report, Row, percentile_svg};
use anyhow::{Context, bail};
use ftvm_ft::breakdown::BreakdownSnapshot;
use ftvm_ft::local::{LocalPair, PairOutcome, Protection};
use ftvm_kvproto::load::{LoadConfig, LoadReport, run_load};
use ftvm_tuning::{Settings, TransportKind};
use ftvm_vmm::RunOutcome;

#[derive(Debug, clap::Args)]
pub struct BenchE2eArgs {
    /// tcp, shm, uring or all.
    #[arg(long, default_value = "all")]
    pub transport: String,
    /// kv operations per run.
    #[arg(long, default_value_t = 20_000)]
    pub ops: u64,
    /// kv client ids (closed loop, one outstanding request each).
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Echo packets per run.
    #[arg(long, default_value_t = 20_000)]
    pub echo_packets: u64,
    /// Echo packet payload bytes.
    #[arg(long, default_value_t = 1024)]
    pub echo_bytes: usize,
    /// Echo packets in flight.
    #[arg(long, default_value_t = 32)]
    pub echo_window: usize,
    /// JSON report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Directory for HdrHistogram `.hgrm` files.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// SVG percentile plot.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub dns: crate::dns::DnsArgs,
}

/// A backup for `kind`: a free loopback port, or an shm name unique to this process.
pub fn protection(kind: TransportKind, tag: &str) -> Protection {
    match kind {
        TransportKind::Shm => Protection::on(&format!("bench-{tag}-{}", std::process::id())),
        _ => Protection::on("127.0.0.1:0"),
    }
}

fn to_latency(r: &LoadReport) -> Latency {
    let mut l = Latency::new();
    for v in r.latency_ns.iter_recorded() {
        for _ in 0..v.count_at_value() {
            l.record_ns(v.value_iterated_to());
        }
    }
    l
}

/// What one FT run adds up to.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub test: &'static str,
    pub transport: String,
    pub ops_per_s: f64,
    pub ratio_to_unprotected: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub added_p50_us: Option<f64>,
    pub channel_rtt_p50_us: Option<f64>,
    pub added_p50_in_rtts: Option<f64>,
    pub log_mbit_s: Option<f64>,
    pub digests_equal: Option<bool>,
    pub rx_pps: Option<f64>,
    pub tx_pps: Option<f64>,
    pub rx_mbit_s: Option<f64>,
    pub tx_mbit_s: Option<f64>,
    pub lost: Option<u64>,
    /// Where the output rule's time goes (FT kv rows): the driver's per-output
    /// breakdown, p50 µs of each stage and of their sum.
    pub rule: Option<ftvm_ft::breakdown::BreakdownSnapshot>,
}

/// A pair run that ended cleanly: the primary's outcome, and for a
/// protected run the logging bandwidth (the backup replayed to the same state).
#[derive(Debug)]
pub struct PairCheck {
    /// The primary VM's run.
    pub primary: RunOutcome,
    /// Log Mbit/s over the primary's run (protected runs only).
    pub log_mbit_s: Option<f64>,
}

/// Checks that both ends ran and that the backup ended in the primary's state.
pub fn check_pair(out: PairOutcome) -> anyhow::Result<PairCheck> {
    let p = out.primary.map_err(anyhow::Error::msg).context("primary")?;
    let Some(b) = out.backup else {
        return Ok(PairCheck {
            primary: p,
            log_mbit_s: None,
        });
    };
    let b = b.map_err(anyhow::Error::msg).context("backup replay")?;
    if b.state != p.state || b.exits != p.exits {
        bail!(
            "the backup diverged: primary {:016x} at exit {}, backup {:016x} at exit {}",
            p.state.digest,
            p.exits,
            b.state.digest,
            b.exits
        );
    }
    let bytes = out.channel.map_or(0, |c| c.entry_bytes_sent);
    let mbit = bytes as f64 * 8.0 / p.elapsed.as_secs_f64().max(1e-9) / 1e6;
    Ok(PairCheck {
        primary: p,
        log_mbit_s: Some(mbit),
    })
}

/// Runs the kv guest (protected or not) under `clients` closed-loop clients
/// for `ops` operations; fails on any verification error.
pub fn kv_run(
    s: &Settings,
    protection: Protection,
    clients: u32,
    ops: u64,
) -> anyhow::Result<(LoadReport, PairOutcome)> {
    kv_run_measured(s, protection, clients, ops).map(|(r, o, _)| (r, o))
}

/// [`kv_run`], with the driver's output-rule breakdown of a protected run.
pub fn kv_run_measured(
    s: &Settings,
    protection: Protection,
    clients: u32,
    ops: u64,
) -> anyhow::Result<(LoadReport, PairOutcome, Option<BreakdownSnapshot>)> {
    let pair = LocalPair::start("kv", s, protection).map_err(anyhow::Error::msg)?;
    let gate = pair.gate.clone();
    let mut cfg = LoadConfig::new(pair.service);
    cfg.clients = clients;
    cfg.ops = ops;
    cfg.keys = 8;
    cfg.timeout = Duration::from_millis(500);
    // Both VMs and the clients share this host's cores: a spinning client
    // would take the core the backup replays on.
    cfg.spin = false;
    let report = run_load(&cfg);
    let out = pair.stop();
    let report = report.context("kv load")?;
    if report.errors > 0 {
        bail!(
            "kv load: {} errors: {:?}",
            report.errors,
            report.first_errors
        );
    }
    let rule = gate.map(|g| g.breakdown.snapshot());
    Ok((report, out, rule))
}

/// An ACK-only backup in a process of its own (`ftvm bench ack-backup`),
/// listening for one primary.
struct AckBackup {
    child: std::process::Child,
    addr: String,
    /// Holds the settings file the child read.
    _dir: tempfile::TempDir,
}

impl AckBackup {
    /// Starts this executable as `bench ack-backup` with `s` (written to a
    /// profile file, so the handshake's settings fingerprint matches).
    fn spawn(s: &Settings, kind: TransportKind) -> anyhow::Result<AckBackup> {
        use std::io::BufRead;
        let dir = tempfile::tempdir()?;
        let profile = dir.path().join("settings.toml");
        std::fs::write(&profile, s.to_toml())?;
        let listen = match kind {
            TransportKind::Shm => format!("bench-ack-{}", std::process::id()),
            _ => "127.0.0.1:0".to_string(),
        };
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut child = std::process::Command::new(&exe)
            .arg("--profile")
            .arg(&profile)
            .args(["bench", "ack-backup", "--listen", &listen, "--guest", "kv"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} bench ack-backup", exe.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = match lines.next() {
            Some(Ok(l)) if l.starts_with(crate::ackonly::LISTENING) => {
                l[crate::ackonly::LISTENING.len()..].to_string()
            }
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the ACK-only backup did not start listening: {other:?}");
            }
        };
        // The rest of its output (the counts) goes to this process's stderr.
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("{l}");
            }
        });
        Ok(AckBackup {
            child,
            addr,
            _dir: dir,
        })
    }

    /// Waits for the child to end after the primary's goodbye (killed after
    /// 10 s); its exit status must be success.
    fn finish(mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    bail!("the ACK-only backup failed: {st}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the ACK-only backup did not end 10 s after the primary stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The kv run against an ACK-only backup process.
fn kv_ack_only(
    s: &Settings,
    kind: TransportKind,
    clients: u32,
    ops: u64,
) -> anyhow::Result<(LoadReport, Option<BreakdownSnapshot>)> {
    let backup = AckBackup::spawn(s, kind)?;
    let connect = backup.addr.clone();
    let run = kv_run_measured(s, Protection::External { connect }, clients, ops);
    let ended = backup.finish();
    let (report, out, rule) = run?;
    out.primary.map_err(anyhow::Error::msg).context("primary")?;
    ended?;
    Ok((report, rule))
}

/// Echo counters of one run.
#[derive(Debug)]
struct Echo {
    sent: u64,
    received: u64,
    secs: f64,
    latency: Latency,
}

/// Sends `n` packets of `bytes` with `window` in flight to an echo server;
/// a packet not answered within 200 ms counts as lost and is replaced.
fn echo_load(server: SocketAddr, n: u64, bytes: usize, window: usize) -> anyhow::Result<Echo> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0u8; bytes.max(8)];
    let mut rbuf = vec![0u8; 65536];
    let mut sent_at: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut latency = Latency::new();
    let (mut next, mut received) = (0u64, 0u64);
    let start = Instant::now();
    while received < n && start.elapsed() < Duration::from_secs(60) {
        while sent_at.len() < window && received + (sent_at.len() as u64) < n {
            buf[..8].copy_from_slice(&next.to_le_bytes());
            loop {
                match sock.send_to(&buf, server) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.map(|_| ())?,
                };
            }
            sent_at.insert(next, Instant::now());
            next += 1;
        }
        match sock.recv_from(&mut rbuf) {
            Ok((len, _)) if len >= 8 => {
                let id = u64::from_le_bytes(rbuf[..8].try_into().unwrap_or_default());
                if let Some(t) = sent_at.remove(&id) {
                    latency.record_ns(t.elapsed().as_nanos() as u64);
                    received += 1;
                }
            }
            Ok(_) => {}
            // A signal aimed at another thread of this process (the VMM kicks
            // its vCPU threads) may interrupt the wait: just wait again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Everything in flight is presumed lost; refill the window.
                sent_at.clear();
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Echo {
        sent: next,
        received,
        secs: start.elapsed().as_secs_f64(),
        latency,
    })
}

fn echo_run(
    a: &BenchE2eArgs,
    s: &Settings,
    protection: Protection,
) -> anyhow::Result<(Echo, PairOutcome)> {
    let pair = LocalPair::start("echo", s, protection).map_err(anyhow::Error::msg)?;
    let r = echo_load(pair.service, a.echo_packets, a.echo_bytes, a.echo_window);
    let out = pair.stop();
    Ok((r?, out))
}

/// The ping-pong floor (p50, p99 µs) of a transport, measured now.
fn floor(s: &Settings, kind: TransportKind) -> Option<(f64, f64)> {
    let opts = ChannelOptions {
        transports: vec![kind],
        filter: Some("floor".into()),
        entries: 5_000,
        duration: Duration::from_secs(1),
        payloads: vec![64],
        rate: 10_000,
        stream_bytes: 1 << 20,
        output_every: 10,
        report: None,
        hgrm: None,
        plot: None,
        role: crate::Role::Local,
    };
    let report = crate::run(&opts, s).ok().flatten()?;
    report
        .results
        .iter()
        .find(|r| r.scenario == "floor")
        .and_then(|r| Some((r.p50_us?, r.p99_us?)))
}

pub fn run(a: BenchE2eArgs, settings: &Settings) -> anyhow::Result<()> {
    if let Err(why) = ftvm_vmm::kvm_available() {
        bail!("ftvm bench e2e needs KVM: /dev/kvm not accessible ({why})");
    }
    let kinds = transports(Some(&a.transport), settings)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut summaries = Vec::new();
    let mut skipped = Vec::new();

    eprintln!("kv, unprotected ...");
    let (base, _) = kv_run(settings, Protection::Off, a.clients, a.ops)?;
    let base_ops = base.ops_per_sec();
    let base_p50 = base.latency_us(0.5);
    rows.push(
        Row::new("kv", "none", 0)
            .with_latency(to_latency(&base))
            .with_rate(base.ops, 0, base.elapsed.as_secs_f64()),
    );
    summaries.push(Summary {
        test: "kv",
        transport: "none".into(),
        ops_per_s: base_ops,
        ratio_to_unprotected: None,
        p50_us: base_p50,
        p99_us: base.latency_us(0.99),
        p999_us: base.latency_us(0.999),
        added_p50_us: None,
        channel_rtt_p50_us: None,
        added_p50_in_rtts: None,
        log_mbit_s: None,
        digests_equal: None,
        rx_pps: None,
        tx_pps: None,
        rx_mbit_s: None,
        tx_mbit_s: None,
        lost: None,
        rule: None,
    });
    eprintln!("echo, unprotected ...");
    let (echo_base, _) = echo_run(&a, settings, Protection::Off)?;
    let echo_row = |name: &str, tr: &str, e: &Echo| {
        Row::new(name, tr, a.echo_bytes)
            .with_latency(e.latency.clone())
            .with_rate(e.received, a.echo_bytes, e.secs)
    };
    let echo_summary = |tr: String, e: &Echo, mbit: Option<f64>, eq: Option<bool>| Summary {
        test: "echo",
        transport: tr,
        ops_per_s: e.received as f64 / e.secs.max(1e-9),
        ratio_to_unprotected: None,
        p50_us: e.latency.quantile_us(0.5),
        p99_us: e.latency.quantile_us(0.99),
        p999_us: e.latency.quantile_us(0.999),
        added_p50_us: None,
        channel_rtt_p50_us: None,
        added_p50_in_rtts: None,
        log_mbit_s: mbit,
        digests_equal: eq,
        rx_pps: Some(e.received as f64 / e.secs.max(1e-9)),
        tx_pps: Some(e.received as f64 / e.secs.max(1e-9)),
        rx_mbit_s: Some(e.received as f64 * a.echo_bytes as f64 * 8.0 / e.secs.max(1e-9) / 1e6),
        tx_mbit_s: Some(e.received as f64 * a.echo_bytes as f64 * 8.0 / e.secs.max(1e-9) / 1e6),
        lost: Some(e.sent - e.received),
        rule: None,
    };
    rows.push(echo_row("echo", "none", &echo_base));
    summaries.push(echo_summary("none".into(), &echo_base, None, None));
    let echo_base_pps = echo_base.received as f64 / echo_base.secs.max(1e-9);
    let dns_base =
        crate::dns::unprotected(&a.dns, settings, &mut rows, &mut summaries, &mut skipped);

    for kind in kinds {
        let mut s = settings.clone();
        s.channel.transport = kind;
        let name = kind.name();
        eprintln!("{name}: floor ...");
        let fl = floor(&s, kind);
        if fl.is_none() {
            skipped.push(format!(
                "{name}: the ping-pong floor could not run (see above)"
            ));
        }
        eprintln!("{name}: kv with FT ...");
        let (ft, out, rule) = match kv_run_measured(&s, protection(kind, "kv"), a.clients, a.ops) {
            Ok(r) => r,
            Err(e) => {
                skipped.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        let checked = check_pair(out)?;
        let (mbit, equal) = (checked.log_mbit_s, checked.log_mbit_s.map(|_| true));
        let kv = KvRow {
            transport: name,
            base_ops,
            base_p50,
            floor: fl,
        };
        let (row, summary) = kv.row("kv", "kv-ft", &ft, mbit, equal, rule);
        rows.push(row);
        summaries.push(summary);
        eprintln!("{name}: kv with an ACK-only backup process ...");
        match kv_ack_only(&s, kind, a.clients, a.ops) {
            Ok((ack, rule)) => {
                let (row, summary) = kv.row("kv-ack", "kv-ack", &ack, None, None, rule);
                rows.push(row);
                summaries.push(summary);
            }
            Err(e) => skipped.push(format!("{name}: kv with an ACK-only backup: {e:#}")),
        }
        eprintln!("{name}: echo with FT ...");
        let (e, out) = echo_run(&a, &s, protection(kind, "echo"))?;
        let checked = check_pair(out)?;
        let (mbit, equal) = (checked.log_mbit_s, checked.log_mbit_s.map(|_| true));
        rows.push(echo_row("echo-ft", name, &e));
        let mut sum = echo_summary(name.into(), &e, mbit, equal);
        sum.ratio_to_unprotected = Some(sum.ops_per_s / echo_base_pps);
        summaries.push(sum);
        if let Some(base) = &dns_base {
            let (r, su, sk) = (&mut rows, &mut summaries, &mut skipped);
            crate::dns::protected(&a.dns, &s, kind, fl, base, r, su, sk);
        }
    }

    println!(
        "\n{:<6} {:<6} {:>10} {:>7} {:>9} {:>9} {:>9} {:>10} {:>8} {:>10} {:>9} {:>7} {:>6}",
        "test",
        "trans",
        "ops/s",
        "ratio",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "added p50",
        "RTT p50",
        "log Mbit/s",
        "Mbit/s",
        "digests",
        "lost"
    );
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |x| format!("{x:.d$}"));
    for s in &summaries {
        println!(
            "{:<6} {:<6} {:>10.0} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>8} {:>10} {:>9} {:>7} {:>6}",
            s.test,
            s.transport,
            s.ops_per_s,
            f(s.ratio_to_unprotected, 3),
            s.p50_us,
            s.p99_us,
            s.p999_us,
            f(s.added_p50_us, 1),
            f(s.channel_rtt_p50_us, 1),
            f(s.log_mbit_s, 2),
            f(s.rx_mbit_s, 1),
            s.digests_equal
                .map_or("-", |e| if e { "equal" } else { "DIFFER" }),
            s.lost.map_or("-".to_string(), |l| l.to_string()),
        );
    }
    print_breakdown(&summaries, a.clients);
    for s in &skipped {
        println!("skipped: {s}");
    }
    println!("(ran {:.1} s)", started.elapsed().as_secs_f64());

    if let Some(dir) = &a.hgrm {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for r in &rows {
            if let Some(h) = &r.hist {
                h.write_hgrm(&dir.join(format!("{}-{}.hgrm", r.scenario, r.transport)))?;
            }
        }
    }
    if let Some(p) = &a.plot {
        percentile_svg(
            &rows,
            "ftvm bench e2e: client latency, unprotected vs FT",
            p,
        )?;
    }
    if let Some(path) = &a.report {
        let options = serde_json::json!({
                "transport": a.transport, "ops": a.ops, "clients": a.clients,
                "echo_packets": a.echo_packets, "echo_bytes": a.echo_bytes, "echo_window": a.echo_window,
                "dns_seconds": a.dns.dns_seconds, "dns_clients": a.dns.dns_clients,
                "dns_outstanding": a.dns.dns_outstanding, "dns_skip_updates": a.dns.dns_skip_updates,
        });
        let report = Report::new(settings, options, rows, skipped)?;
        let mut v = serde_json::to_value(&report)?;
        v["e2e"] = serde_json::to_value(&summaries)?;
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What a protected kv row is measured against: the unprotected run and
/// the transport's floor, from the same `bench e2e` run.
struct KvRow<'a> {
    transport: &'a str,
    base_ops: f64,
    base_p50: f64,
    floor: Option<(f64, f64)>,
}

impl KvRow<'_> {
    /// The report row and summary of one protected kv run.
    fn row(
        &self,
        test: &'static str,
        scenario: &str,
        r: &LoadReport,
        log_mbit_s: Option<f64>,
        digests_equal: Option<bool>,
        rule: Option<BreakdownSnapshot>,
    ) -> (Row, Summary) {
        let p50 = r.latency_us(0.5);
        let added = p50 - self.base_p50;
        let row = Row::new(scenario, self.transport, 0)
            .with_latency(to_latency(r))
            .with_floor(self.floor)
            .with_rate(r.ops, 0, r.elapsed.as_secs_f64());
        let summary = Summary {
            test,
            transport: self.transport.into(),
            ops_per_s: r.ops_per_sec(),
            ratio_to_unprotected: Some(r.ops_per_sec() / self.base_ops),
            p50_us: p50,
            p99_us: r.latency_us(0.99),
            p999_us: r.latency_us(0.999),
            added_p50_us: Some(added),
            channel_rtt_p50_us: self.floor.map(|f| f.0),
            added_p50_in_rtts: self.floor.map(|f| added / f.0),
            log_mbit_s,
            digests_equal,
            rx_pps: None,
            tx_pps: None,
            rx_mbit_s: None,
            tx_mbit_s: None,
            lost: None,
            rule,
        };
        (row, summary)
    }
}

/// The output-rule breakdown of the FT kv rows: where the added p50 goes.
fn print_breakdown(summaries: &[Summary], clients: u32) {
    let rows: Vec<_> = summaries.iter().filter(|s| s.rule.is_some()).collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nkv, {clients} clients: the output rule per output (p50 us; rule = to ship + ACK + send, rest = added - rule)"
    );
    println!(
        "{:<7} {:<6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "test",
        "trans",
        "added p50",
        "RTT p50",
        "rule",
        "to ship",
        "ACK",
        "send",
        "rest",
        "outputs"
    );
    let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
    for s in rows {
        let Some(r) = s.rule else { continue };
        println!(
            "{:<7} {:<6} {:>10} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>9}",
            s.test,
            s.transport,
            f(s.added_p50_us),
            f(s.channel_rtt_p50_us),
            r.total.p50_us,
            r.to_ship.p50_us,
            r.ack.p50_us,
            r.send.p50_us,
            f(s.added_p50_us.map(|a| a - r.total.p50_us)),
            r.outputs,
        );
    }
}

/// The transports `--transport` names (`all`, or one), or the settings' one.
pub fn transports(arg: Option<&str>, settings: &Settings) -> anyhow::Result<Vec<TransportKind>> {
    Ok(match arg {
        None => vec![settings.channel.transport],
        Some("all") => vec![
            TransportKind::Tcp,
            TransportKind::Uring,
            TransportKind::Shm,
            TransportKind::Rdma,
        ],
        Some("tcp") => vec![TransportKind::Tcp],
        Some("uring") => vec![TransportKind::Uring],
        Some("shm") => vec![TransportKind::Shm],
        Some("rdma") => vec![TransportKind::Rdma],
        Some(other) => bail!("--transport {other:?}: expected tcp, uring, shm, rdma or all"),
    })
}

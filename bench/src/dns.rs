//! The dns workload of `ftvm bench e2e`: the real `dnsperf` against the dns
//! guest, unprotected and as a pair per transport — `dns` (queries over the
//! built-in zone, a mix of answers, a CNAME chain, MX with additional data,
//! NODATA and NXDOMAIN) and `dnsupd` (RFC 2136 updates, each one changing the
//! zone: the writes the pair must log and the backup replay). Queries/s,
//! latency percentiles (from dnsperf's per-query lines) and lost queries, in
//! the report format of the kv and echo rows.

use std::path::Path;

use crate::{Latency, Row};
use anyhow::Context;
use ftvm_dnsproto::dnsperf::{self, DnsperfConfig, DnsperfReport, update_file};
use ftvm_ft::local::{LocalPair, Protection};
use ftvm_tuning::{Settings, TransportKind};

use crate::e2e::{Summary, check_pair};

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// Seconds of each dnsperf run (queries, then updates).
    #[arg(long, default_value_t = 3.0)]
    pub dns_seconds: f64,
    /// dnsperf clients (sockets).
    #[arg(long, default_value_t = 4)]
    pub dns_clients: u32,
    /// dnsperf queries outstanding at most.
    #[arg(long, default_value_t = 16)]
    pub dns_outstanding: u32,
    /// No dnsupd rows (dnsperf sending updates).
    #[arg(long)]
    pub dns_skip_updates: bool,
}

/// Distinct updates in the update file, which dnsperf loops over: more
/// than the guest's duplicate window (256), so no update of the loop looks
/// like a retransmission of an earlier one.
const UPDATES_IN_FILE: u32 = 1000;

/// The query file: every kind of answer of the built-in zone.
const QUERIES: &str = "www.example.test A\nwww.example.test AAAA\nexample.test NS\n\
example.test MX\nexample.test SOA\nalias.example.test A\nmail.example.test A\n\
ns1.example.test A\nexample.test TXT\nwww.example.test TXT\nnx.example.test A\n\
b.deep.example.test A\n";

/// Which dnsperf run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Queries,
    Updates,
}

/// An unprotected run's figures: (kind, queries/s, p50 µs).
pub(crate) type Measured = (Kind, f64, f64);

impl Kind {
    fn test(self) -> &'static str {
        match self {
            Kind::Queries => "dns",
            Kind::Updates => "dnsupd",
        }
    }
}

/// One dnsperf run against a fresh dns guest; fails on any lost query.
fn run(
    a: &DnsArgs,
    s: &Settings,
    protection: Protection,
    kind: Kind,
    dir: &Path,
) -> anyhow::Result<(DnsperfReport, Option<f64>)> {
    let pair = LocalPair::start("dns", s, protection).map_err(anyhow::Error::msg)?;
    let data = dir.join(format!("{}.txt", kind.test()));
    let mut cfg = DnsperfConfig::new(pair.service, data.clone());
    cfg.clients = a.dns_clients;
    cfg.outstanding = a.dns_outstanding;
    cfg.seconds = Some(a.dns_seconds);
    match kind {
        Kind::Queries => std::fs::write(&data, QUERIES)?,
        Kind::Updates => {
            std::fs::write(&data, update_file("example.test.", UPDATES_IN_FILE))?;
            cfg.updates = true;
        }
    }
    // The guest boots in well under a second; dnsperf's first queries would
    // otherwise wait in the socket and count against the run's latency.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let report = dnsperf::run(&cfg);
    let checked = check_pair(pair.stop())?;
    let report = report.with_context(|| format!("dnsperf ({})", kind.test()))?;
    if report.completed == 0 {
        anyhow::bail!(
            "dnsperf ({}): {} sent, none answered",
            kind.test(),
            report.sent
        );
    }
    Ok((report, checked.log_mbit_s))
}

fn latency(r: &DnsperfReport) -> Latency {
    let mut l = Latency::new();
    for v in r.latency_ns.iter_recorded() {
        for _ in 0..v.count_at_value() {
            l.record_ns(v.value_iterated_to());
        }
    }
    l
}

/// The dns rows of one protection (`base`: the unprotected queries/s of
/// the same kind, for the ratio).
#[allow(clippy::too_many_arguments)]
fn rows_for(
    a: &DnsArgs,
    s: &Settings,
    transport: Option<TransportKind>,
    floor: Option<(f64, f64)>,
    base: &[Measured],
    rows: &mut Vec<Row>,
    summaries: &mut Vec<Summary>,
    skipped: &mut Vec<String>,
) -> Vec<Measured> {
    let tr = transport.map_or("none", TransportKind::name);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            skipped.push(format!("dns ({tr}): no temporary directory: {e}"));
            return Vec::new();
        }
    };
    let kinds: &[Kind] = if a.dns_skip_updates {
        &[Kind::Queries]
    } else {
        &[Kind::Queries, Kind::Updates]
    };
    let mut measured = Vec::new();
    for &kind in kinds {
        eprintln!(
            "{}, {} ...",
            kind.test(),
            transport.map_or("unprotected".to_string(), |k| format!(
                "{} with FT",
                k.name()
            ))
        );
        let protection = match transport {
            None => Protection::Off,
            Some(k) => crate::e2e::protection(k, kind.test()),
        };
        let (r, mbit) = match run(a, s, protection, kind, dir.path()) {
            Ok(r) => r,
            Err(e) => {
                skipped.push(format!("{} ({tr}): {e:#}", kind.test()));
                continue;
            }
        };
        let lat = latency(&r);
        let name = match transport {
            None => kind.test().to_string(),
            Some(_) => format!("{}-ft", kind.test()),
        };
        rows.push(
            Row::new(&name, tr, 0)
                .with_latency(lat.clone())
                .with_floor(floor.filter(|_| transport.is_some()))
                .with_rate(r.completed, 0, r.run_time_s),
        );
        let (p50, added) = (lat.quantile_us(0.5), base.iter().find(|b| b.0 == kind));
        let added_p50 = added.map(|b| p50 - b.2);
        summaries.push(Summary {
            test: kind.test(),
            transport: tr.into(),
            ops_per_s: r.qps,
            ratio_to_unprotected: added.map(|b| r.qps / b.1),
            p50_us: p50,
            p99_us: lat.quantile_us(0.99),
            p999_us: lat.quantile_us(0.999),
            added_p50_us: added_p50,
            channel_rtt_p50_us: floor.map(|f| f.0).filter(|_| transport.is_some()),
            added_p50_in_rtts: added_p50.zip(floor).map(|(d, f)| d / f.0),
            log_mbit_s: mbit,
            digests_equal: mbit.map(|_| true),
            rx_pps: None,
            tx_pps: None,
            rx_mbit_s: None,
            tx_mbit_s: None,
            lost: Some(r.lost),
            rule: None,
        });
        measured.push((kind, r.qps, p50));
    }
    measured
}

/// The unprotected dns rows; returns what the FT rows are compared with
/// (`None` without dnsperf).
pub(crate) fn unprotected(
    a: &DnsArgs,
    s: &Settings,
    rows: &mut Vec<Row>,
    summaries: &mut Vec<Summary>,
    skipped: &mut Vec<String>,
) -> Option<Vec<Measured>> {
    if let Err(why) = dnsperf::probe() {
        skipped.push(format!("dns: {why} (Debian: apt-get install dnsperf)"));
        return None;
    }
    Some(rows_for(a, s, None, None, &[], rows, summaries, skipped))
}

/// The FT dns rows for transport `kind`, compared with `base` from [`unprotected`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn protected(
    a: &DnsArgs,
    s: &Settings,
    kind: TransportKind,
    floor: Option<(f64, f64)>,
    base: &[Measured],
    rows: &mut Vec<Row>,
    summaries: &mut Vec<Summary>,
    skipped: &mut Vec<String>,
) {
    rows_for(a, s, Some(kind), floor, base, rows, summaries, skipped);
}

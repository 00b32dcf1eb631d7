//! Percentile plot (SVG): latency against percentile, tail axis log-scaled.
//!
//! The x axis is `1/(1-q)` on a log scale, so p50, p90, p99, p99.9 and p99.99
//! are evenly spaced and the tail gets the room it deserves; the y axis is
//! latency in µs, log-scaled. One line per scenario × transport.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::Row;

/// The largest `1/(1-q)` drawn (q = 99.999%).
const X_MAX: f64 = 1e5;

/// Draws every row that has a histogram into an SVG file at `path`.
pub fn percentile_svg(rows: &[Row], title: &str, path: &Path) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .filter_map(|r| {
            let h = r.hist.as_ref()?;
            let pts: Vec<(f64, f64)> = h
                .percentile_curve()
                .into_iter()
                .filter(|&(q, _)| q < 1.0)
                .map(|(q, us)| ((1.0 / (1.0 - q)).min(X_MAX), us.max(0.01)))
                .collect();
            (!pts.is_empty()).then(|| {
                (
                    format!("{} {} {}B", r.scenario, r.transport, r.payload_bytes),
                    pts,
                )
            })
        })
        .collect();
    if series.is_empty() {
        return Err(anyhow!("no latency results to plot"));
    }
    let y_min = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(f64::MAX, f64::min)
        * 0.8;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max)
        * 1.25;

    let root = SVGBackend::new(path, (1100, 700)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..X_MAX).log_scale(), (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| {
            // 1/(1-q) = 10^k  =>  q = 1 - 10^-k: print k-2 decimals of nines.
            let q = 100.0 * (1.0 - 1.0 / x);
            let decimals = (x.log10().round() as usize).saturating_sub(2);
            format!("{q:.decimals$}%")
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hist::Latency;

    #[test]
    fn writes_an_svg_with_one_line_per_row() {
        let mut rows = Vec::new();
        for (t, base) in [("tcp", 10_000u64), ("uring", 12_000)] {
            let mut h = Latency::new();
            for i in 0..10_000u64 {
                h.record_ns(base + (i * i) % 50_000);
            }
            rows.push(Row::new("floor", t, 64).with_latency(h));
        }
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one.svg");
        let two = dir.path().join("two.svg");
        percentile_svg(&rows[..1], "test", &one).unwrap();
        percentile_svg(&rows, "test", &two).unwrap();
        let one = std::fs::read_to_string(&one).unwrap();
        let two = std::fs::read_to_string(&two).unwrap();
        assert!(two.starts_with("<svg"), "{}", &two[..two.len().min(80)]);
        assert!(two.contains("floor tcp 64B") && two.contains("floor uring 64B"));
        // Each row adds its line and its legend sample.
        let lines = |s: &str| s.matches("<polyline").count();
        assert_eq!(lines(&two), lines(&one) + 2);
    }
}

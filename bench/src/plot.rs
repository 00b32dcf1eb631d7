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

/// Tick label size (px).
const LABEL_PX: u32 = 13;

/// The canvas (px).
const SIZE: (u32, u32) = (1100, 700);

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

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        // Room for the last tick label, centred on the right edge (99.999%).
        .margin_right(60)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..X_MAX).log_scale(), (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .label_style(("sans-serif", LABEL_PX))
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
        frame_holds_lines_and_labels(&two);
    }

    /// A numeric attribute of an SVG element's text.
    fn attr(el: &str, name: &str) -> Option<f64> {
        let at = el.find(&format!(" {name}=\""))? + name.len() + 3;
        el[at..].split('"').next()?.parse().ok()
    }

    /// Every point of every data line lies inside the mesh (the frame the
    /// grid lines span), and no tick label reaches past the canvas.
    fn frame_holds_lines_and_labels(svg: &str) {
        let grid: Vec<&str> = svg
            .split('<')
            .filter(|e| e.starts_with("line ") && e.contains("opacity=\"0.1\""))
            .collect();
        let xs: Vec<f64> = grid.iter().filter_map(|e| attr(e, "x1")).collect();
        let ys: Vec<f64> = grid
            .iter()
            .flat_map(|e| [attr(e, "y1"), attr(e, "y2")])
            .flatten()
            .collect();
        let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        let (left, right, top, bottom) = (min(&xs), max(&xs), min(&ys), max(&ys));
        let mut points = 0;
        for line in svg.split("<polyline").skip(1) {
            let pts = line
                .split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let pts: Vec<(f64, f64)> = pts
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            if pts.len() <= 2 {
                continue; // a legend sample
            }
            for (x, y) in pts {
                assert!(
                    (left..=right).contains(&x) && (top..=bottom).contains(&y),
                    "({x}, {y}) outside the frame x {left}..{right}, y {top}..{bottom}"
                );
                points += 1;
            }
        }
        assert!(points > 0);
        // Labels: centred (or start-anchored) text, about 0.6 em per glyph.
        for t in svg.split("<text").skip(1) {
            let (Some(x), Some(size)) = (attr(t, "x"), attr(t, "font-size")) else {
                continue;
            };
            let text = (t.split('>').nth(1).unwrap_or("").split('<').next())
                .unwrap_or("")
                .trim();
            let width = text.chars().count() as f64 * size * 0.6;
            let right_edge = match () {
                _ if t.contains("text-anchor=\"middle\"") => x + width / 2.0,
                _ if t.contains("text-anchor=\"end\"") => x,
                _ => x + width,
            };
            assert!(
                right_edge <= f64::from(SIZE.0),
                "label {text:?} ends at {right_edge} px, past the canvas ({} px)",
                SIZE.0
            );
        }
    }
}

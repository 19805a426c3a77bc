//! Plots of a report as small standalone SVG files.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::report::Report;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 48.0;

struct Plot {
    svg: String,
}

impl Plot {
    fn new(title: &str, x_label: &str, y_label: &str) -> Plot {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="14" y="{}" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>
<line x1="{MARGIN}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{}" stroke="black"/>
"#,
            WIDTH / 2.0,
            escape(title),
            WIDTH / 2.0,
            HEIGHT - 8.0,
            escape(x_label),
            HEIGHT / 2.0,
            HEIGHT / 2.0,
            escape(y_label),
            HEIGHT - MARGIN,
            WIDTH - MARGIN,
            HEIGHT - MARGIN,
            HEIGHT - MARGIN,
        );
        Plot { svg }
    }

    fn x(&self, fraction: f64) -> f64 {
        MARGIN + fraction.clamp(0.0, 1.0) * (WIDTH - 2.0 * MARGIN)
    }

    fn y(&self, fraction: f64) -> f64 {
        HEIGHT - MARGIN - fraction.clamp(0.0, 1.0) * (HEIGHT - 2.0 * MARGIN)
    }

    fn tick_x(&mut self, fraction: f64, label: &str) {
        let x = self.x(fraction);
        let _ = writeln!(
            self.svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            HEIGHT - MARGIN + 16.0,
            escape(label)
        );
    }

    fn tick_y(&mut self, fraction: f64, label: &str) {
        let y = self.y(fraction);
        let _ = writeln!(
            self.svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            MARGIN - 4.0,
            y + 4.0,
            escape(label)
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)]) {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y)))
            .collect();
        let _ = writeln!(
            self.svg,
            r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
            coords.join(" ")
        );
    }

    fn bar(&mut self, x0: f64, x1: f64, height: f64) {
        let (left, right) = (self.x(x0), self.x(x1));
        let (top, bottom) = (self.y(height), self.y(0.0));
        let _ = writeln!(
            self.svg,
            r#"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="steelblue"/>"#,
            (right - left - 2.0).max(1.0),
            bottom - top
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes `hops.svg`, `latency_cdf.svg` and `success.svg` into `dir`.
pub fn write_plots(report: &Report, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("hops.svg"), hops(report))?;
    std::fs::write(dir.join("latency_cdf.svg"), latency_cdf(report))?;
    std::fs::write(dir.join("success.svg"), success(report))?;
    Ok(())
}

fn hops(report: &Report) -> String {
    let title = format!("Hops per lookup — {} peers, seed {}", report.peers, report.seed);
    let mut plot = Plot::new(&title, "hops", "lookups");
    let bins = report.hop_histogram.len().max(1) as f64;
    let most = report.hop_histogram.iter().copied().max().unwrap_or(1).max(1) as f64;
    for (h, count) in report.hop_histogram.iter().enumerate() {
        plot.bar(h as f64 / bins, (h + 1) as f64 / bins, *count as f64 / most);
        plot.tick_x((h as f64 + 0.5) / bins, &h.to_string());
    }
    plot.tick_y(1.0, &format!("{most:.0}"));
    plot.tick_y(0.0, "0");
    plot.finish()
}

fn latency_cdf(report: &Report) -> String {
    let title = format!("Lookup latency CDF — {} peers", report.peers);
    let mut plot = Plot::new(&title, "latency (ms, virtual)", "fraction of lookups");
    let lat = &report.latencies_ms;
    let max = lat.last().copied().unwrap_or(1.0).max(1e-9);
    let step = (lat.len() / 400).max(1);
    let points: Vec<(f64, f64)> = lat
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, v)| (v / max, (i + 1) as f64 / lat.len() as f64))
        .collect();
    plot.polyline(&points);
    plot.tick_x(0.0, "0");
    plot.tick_x(1.0, &format!("{max:.1}"));
    plot.tick_y(0.0, "0");
    plot.tick_y(1.0, "1");
    plot.finish()
}

fn success(report: &Report) -> String {
    let title = format!("Lookup success over time — {}", report.scenario);
    let mut plot = Plot::new(&title, "virtual time (s)", "success rate");
    let (Some(first), Some(last)) = (report.timeline.first(), report.timeline.last()) else {
        return plot.finish();
    };
    let (t0, span) = (first.0, (last.0 - first.0).max(1e-9));
    let floor = report.timeline.iter().map(|w| w.1).fold(1.0f64, f64::min).min(0.99);
    let points: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .map(|(t, s, _)| ((t - t0) / span, (s - floor) / (1.0 - floor).max(1e-9)))
        .collect();
    plot.polyline(&points);
    plot.tick_x(0.0, &format!("{t0:.0}"));
    plot.tick_x(1.0, &format!("{:.0}", last.0));
    plot.tick_y(0.0, &format!("{floor:.3}"));
    plot.tick_y(1.0, "1.000");
    plot.finish()
}

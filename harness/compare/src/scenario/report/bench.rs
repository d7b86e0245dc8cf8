//! The benchmarks' table and latency chart.

use std::fmt::Write as _;

use super::html::*;
use super::*;

/// Labels of the benchmark metrics, in table order: (metric, column title).
pub(super) const BENCH_COLUMNS: [(&str, &str); 11] = [
    (
        "acquire_release_p50",
        "acquire+release p50 µs (floor, ratio)",
    ),
    ("acquire_release_p99", "p99 µs (floor)"),
    ("shared_acquire_release_p50", "shared p50 µs (floor, ratio)"),
    ("permit_acquire_release_p50", "permit p50 µs (floor, ratio)"),
    ("acquire_release_tls_p50", "over TLS p50 µs (plain, ratio)"),
    ("handoff_p50", "handoff p50 µs (1 round trip)"),
    ("handoff_p99", "handoff p99 µs"),
    ("throughput_64_tasks", "64 tasks, ops/s"),
    ("hold_many_seconds", "many locks: acquire s"),
    ("hold_many_rss_mib", "+MiB resident"),
    ("hold_many_connections", "connections"),
];

pub(super) fn bench_entry<'a>(
    r: &'a Report,
    backend: &str,
    metric: &str,
) -> Option<&'a BenchEntry> {
    r.benchmarks
        .iter()
        .find(|e| e.backend == backend && e.metric == metric)
}

/// How a benchmark number is shown: latencies with their floor (and the p50 ratio), the
/// rest plain.
pub(super) fn bench_text(e: &BenchEntry) -> String {
    let value = match e.unit.as_str() {
        "us" | "ops/s" | "connections" => format!("{:.0}", e.value),
        _ => format!("{:.1}", e.value),
    };
    match (e.metric.as_str(), e.floor) {
        (
            "acquire_release_p50"
            | "acquire_release_tls_p50"
            | "shared_acquire_release_p50"
            | "permit_acquire_release_p50",
            Some(f),
        ) => {
            format!("{value} ({f:.0}, {:.2}×)", e.value / f.max(1e-9))
        }
        (_, Some(f)) => format!("{value} ({f:.0})"),
        (_, None) => value,
    }
}

/// The benchmark table (markdown), or `None` without benchmarks.
pub fn bench_markdown(r: &Report) -> Option<String> {
    if r.benchmarks.is_empty() && r.benchmark_failures.is_empty() {
        return None;
    }
    let mut md = String::from("| backend |");
    for (_, title) in BENCH_COLUMNS {
        let _ = write!(md, " {title} |");
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(BENCH_COLUMNS.len()));
    md.push('\n');
    for b in backends_of(r) {
        if !r.benchmarks.iter().any(|e| e.backend == b) {
            continue;
        }
        let _ = write!(md, "| {b} |");
        for (metric, _) in BENCH_COLUMNS {
            let t = bench_entry(r, b, metric).map_or_else(|| "—".into(), bench_text);
            let _ = write!(md, " {t} |");
        }
        md.push('\n');
    }
    for f in &r.benchmark_failures {
        let _ = writeln!(
            md,
            "\nBenchmarks of {} failed: {}",
            f.backend,
            f.reason.replace('|', "\\|")
        );
    }
    let mut notes: Vec<String> = Vec::new();
    for e in &r.benchmarks {
        let n = format!("- {} `{}`: {}", e.backend, e.metric, e.notes);
        if matches!(
            e.metric.as_str(),
            "acquire_release_p50"
                | "acquire_release_tls_p50"
                | "handoff_p50"
                | "throughput_64_tasks"
                | "hold_many_seconds"
        ) {
            notes.push(n);
        }
    }
    md.push('\n');
    md.push_str(&notes.join("\n"));
    md.push('\n');
    Some(md)
}

/// Latency distributions of uncontended acquire + release beside the floor: per backend, two
/// horizontal rows of percentile marks (p1 … p99.9) on a log scale (10 µs to 100 ms).
pub fn latency_svg(r: &Report) -> Option<String> {
    let rows: Vec<&BenchEntry> = r
        .benchmarks
        .iter()
        .filter(|e| e.metric == "acquire_release_p50" && e.distribution.is_some())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let (left, right, top, row_h) = (150.0, 30.0, 20.0, 34.0);
    let plot_w = 640.0;
    let width = left + plot_w + right;
    let height = top + rows.len() as f64 * row_h + 60.0;
    let x_of = |us: f64| left + ((us.max(10.0).log10() - 1.0) / 4.0).min(1.0) * plot_w;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" style="max-width:100%;height:auto" font-family="sans-serif" font-size="11">"#
    );
    for (i, label) in ["10 µs", "100 µs", "1 ms", "10 ms", "100 ms"]
        .iter()
        .enumerate()
    {
        let x = x_of(10f64.powi(i as i32 + 1));
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            height - 40.0,
            height - 26.0
        );
    }
    for (i, e) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let _ = write!(
            s,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 15.0,
            esc(&e.backend)
        );
        let series = [
            (e.distribution.as_deref(), "#336699", y + 8.0, "dlock"),
            (
                e.floor_distribution.as_deref(),
                "#999999",
                y + 20.0,
                "floor",
            ),
        ];
        for (dist, color, yy, what) in series {
            let Some(d) = dist else { continue };
            let (Some(lo), Some(hi)) = (d.first(), d.last()) else {
                continue;
            };
            let _ = write!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="{color}" stroke-width="2"/>"#,
                x_of(*lo),
                x_of(*hi)
            );
            for (p, us) in crate::bench::DISTRIBUTION.iter().zip(d) {
                let h = if *p == 50.0 { 7.0 } else { 4.0 };
                let _ = write!(
                    s,
                    r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2"><title>{} {what} p{p}: {us:.0} µs</title></line>"#,
                    yy - h,
                    yy + h,
                    esc(&e.backend),
                    x = x_of(*us)
                );
            }
        }
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="{:.0}"><tspan fill="#336699">■ dlock acquire+release</tspan>  <tspan fill="#999999">■ raw floor</tspan>  — marks at p1, p10, p25, p50 (tall), p75, p90, p95, p99, p99.9</text></svg>"##,
        height - 8.0
    );
    Some(s)
}

/// The benchmark section of `index.html` (empty without benchmarks).
pub(super) fn bench_html(r: &Report) -> String {
    if r.benchmarks.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h2>Uncontended acquire + release latency beside the raw floor</h2>");
    if let Some(svg) = latency_svg(r) {
        h.push_str(&svg);
    }
    h.push_str("<h2>Benchmarks</h2><table><tr><th>backend</th>");
    for (_, title) in BENCH_COLUMNS {
        let _ = write!(h, "<th>{}</th>", esc(title));
    }
    h.push_str("</tr>");
    for b in backends_of(r) {
        if !r.benchmarks.iter().any(|e| e.backend == b) {
            continue;
        }
        let _ = write!(h, "<tr><th>{}</th>", esc(b));
        for (metric, _) in BENCH_COLUMNS {
            let t = bench_entry(r, b, metric).map_or_else(|| "—".into(), bench_text);
            let _ = write!(h, "<td>{}</td>", esc(&t));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    for f in &r.benchmark_failures {
        let _ = write!(
            h,
            "<p>Benchmarks of {} failed: {}</p>",
            esc(&f.backend),
            esc(&f.reason)
        );
    }
    h
}

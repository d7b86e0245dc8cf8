//! `index.html`: the tables and the charts as inline SVG.

use std::fmt::Write as _;

use super::bench::*;
use super::*;
use crate::scenario::Timeline;

/// Escapes text for HTML.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(super) const COLORS: [&str; 8] = [
    "#336699", "#cc3333", "#993399", "#339966", "#cc8800", "#5588cc", "#ee7766", "#777777",
];

/// The failover chart: one group of bars per measured scenario, one bar per backend, height
/// on a log scale (1 ms to 10 s); a cell without a grant is drawn as a marker at the top.
pub fn failover_svg(r: &Report) -> String {
    let cols = measured_scenarios(r);
    let backends = backends_of(r);
    let (bar, gap) = (14.0, 2.0);
    // Wide enough for the scenario's name under the group.
    let group_w = (backends.len() as f64 * (bar + gap) + 26.0).max(120.0);
    let group_gap = group_w - backends.len() as f64 * (bar + gap);
    let (left, top, plot_h) = (56.0, 16.0, 260.0);
    // Wide enough for the legend (four backends a row) and its note.
    let width = (left + cols.len() as f64 * group_w + 20.0).max(left + 620.0);
    let height = top + plot_h + 110.0;
    let y_of = |ms: f64| top + plot_h - (ms.max(1.0).log10() / 4.0).min(1.0) * plot_h;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" style="max-width:100%;height:auto" font-family="sans-serif" font-size="11">"#
    );
    for (i, label) in ["1 ms", "10 ms", "100 ms", "1 s", "10 s"]
        .iter()
        .enumerate()
    {
        let y = y_of(10f64.powi(i as i32));
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{label}</text>"##,
            width - 10.0,
            left - 4.0,
            y + 4.0
        );
    }
    for (g, scenario) in cols.iter().enumerate() {
        let x0 = left + g as f64 * group_w + group_gap / 2.0;
        for (i, b) in backends.iter().enumerate() {
            let x = x0 + i as f64 * (bar + gap);
            let Some(c) = cell(r, b, scenario) else {
                continue;
            };
            let color = COLORS[i % COLORS.len()];
            match (c.status, c.failover_ms) {
                (Status::Measured, Some(f)) => {
                    let y = y_of(f.median);
                    let _ = write!(
                        s,
                        r#"<rect x="{x:.1}" y="{y:.1}" width="{bar}" height="{:.1}" fill="{color}"><title>{} × {}: median {:.0} ms (min {:.0}, max {:.0})</title></rect>"#,
                        top + plot_h - y,
                        esc(b),
                        esc(scenario),
                        f.median,
                        f.min,
                        f.max
                    );
                }
                (Status::Measured, None) => {
                    let _ = write!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{color}" font-weight="bold">×<title>{} × {}: {}</title></text>"#,
                        x + bar / 2.0,
                        top + 10.0,
                        esc(b),
                        esc(scenario),
                        esc(&super::failover_text(c))
                    );
                }
                _ => {}
            }
        }
        let cx = x0 + backends.len() as f64 * (bar + gap) / 2.0;
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + plot_h + 16.0,
            esc(scenario)
        );
    }
    for (i, b) in backends.iter().enumerate() {
        let x = left + (i % 4) as f64 * 150.0;
        let y = top + plot_h + 40.0 + (i / 4) as f64 * 18.0;
        let _ = write!(
            s,
            r#"<rect x="{x:.0}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{y:.0}">{}</text>"#,
            y - 9.0,
            COLORS[i % COLORS.len()],
            x + 14.0,
            esc(b)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.0}">× at the top: no other holder got the lock within the bound (kept by the live holder, or stranded: hover)</text></svg>"#,
        height - 8.0
    );
    s
}

/// `<table>` with its header row: backend, then each scenario.
fn table_head(cols: &[&str]) -> String {
    let mut h = String::from("<table><tr><th>backend</th>");
    for c in cols {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    h
}

pub(super) fn html_table(r: &Report, text: impl Fn(&Cell) -> String) -> String {
    let cols = measured_scenarios(r);
    let mut h = table_head(&cols);
    for row in rows_of(r) {
        let _ = write!(h, "<tr><th>{}</th>", esc(&row.label()));
        for s in &cols {
            let t = row.cell(r, s).map_or_else(|| "—".into(), &text);
            let _ = write!(h, "<td>{}</td>", esc(&t));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// The safety table: each cell's verdict as a colour and a word, the details beneath (and,
/// for a documented overlap, where the backend's README says so, on hover).
fn safety_html(r: &Report) -> String {
    let cols = measured_scenarios(r);
    let mut h = table_head(&cols);
    for row in rows_of(r) {
        let _ = write!(h, "<tr><th>{}</th>", esc(&row.label()));
        for s in &cols {
            let Some(c) = row.cell(r, s) else {
                h.push_str("<td>—</td>");
                continue;
            };
            let v = Verdict::of(c);
            let title = match v {
                Verdict::DocumentedOverlap(why) => format!(r#" title="{}""#, esc(why)),
                _ => String::new(),
            };
            let _ = write!(
                h,
                r#"<td style="background:{}"{title}><b>{}</b><br><small>{}</small></td>"#,
                v.colour(),
                v.word(),
                esc(&safety_text(c))
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// `index.html`: self-contained (no external files), the failover chart as inline SVG and
/// the two tables.
pub fn html(r: &Report) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dlock: backend vs reliability</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}
th{{background:#f4f4f4;text-align:left}}</style></head><body>
<h1>dlock: backend vs reliability</h1>
<p>Measured on <code>{host}</code> ({cpus} CPUs), {repeat} repetition(s) per cell, in {dur:.0} s.
Faults: {faults}. Full data: <a href="comparison.json">comparison.json</a>; reading guide:
<a href="comparison.md">comparison.md</a>.</p>
<h2>Failover time (median, log scale)</h2>
{svg}
<h2>Failover time, ms: median (min–max)</h2>
{failover}
<h2>Safety</h2>
{safety}
{timelines}
{bench}
{peers}
{strategies}
</body></html>
"#,
        host = esc(&r.run.host),
        cpus = r.run.cpus,
        repeat = r.run.repeat,
        dur = r.run.duration_s,
        faults = esc(&r.run.fault_injection),
        svg = failover_svg(r),
        failover = html_table(r, failover_text),
        safety = safety_html(r),
        bench = bench_html(r),
        peers = super::peers::peers_html(r),
        strategies = super::strategies::strategies_html(r),
        timelines = timeline_svg(r).map_or_else(String::new, |t| format!(
            "<h2>Who held the lock around the fault</h2><p>First repetition of each cell; time \
             relative to the fault (for latency and quorum_loss: the start of the step or the \
             majority's return, as the failover is measured).</p>{t}"
        )),
    )
}

pub(super) const HOLDER_COLORS: [&str; 3] = ["#336699", "#e08a00", "#2a9d5c"];

/// A tick step (ms) that gives about six ticks over `span` ms.
pub(super) fn tick_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let pow = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * pow)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * pow)
}

/// Timelines of who held the lock around the fault: per measured scenario, one row per
/// backend (first repetition with a failover), the faulty holder's critical section on top,
/// the next holders' below, time relative to the fault (red line).
pub fn timeline_svg(r: &Report) -> Option<String> {
    let mut out = String::new();
    for scenario in measured_scenarios(r) {
        let rows: Vec<(&str, &Timeline)> = backends_of(r)
            .into_iter()
            .filter_map(|b| {
                let c = cell(r, b, scenario)?;
                Some((b, c.timeline.as_ref()?))
            })
            .collect();
        if !rows.is_empty() {
            timeline_chart(&mut out, scenario, &rows);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The time axis of a timeline chart: ms relative to the fault → x.
struct TimeAxis {
    lo: f64,
    hi: f64,
    left: f64,
    plot_w: f64,
}

impl TimeAxis {
    /// From the sections' ends: at least ±500 ms around the fault, at most 3 s before and
    /// 15 s after it.
    fn of(rows: &[(&str, &Timeline)], left: f64, plot_w: f64) -> TimeAxis {
        let ends = rows
            .iter()
            .flat_map(|(_, t)| t.sections.iter())
            .flat_map(|s| [Some(s.from_ms), s.to_ms])
            .flatten();
        let (mut lo, mut hi) = (-500i64, 500i64);
        for e in ends {
            lo = lo.min(e);
            hi = hi.max(e);
        }
        TimeAxis {
            lo: lo.max(-3_000) as f64,
            hi: (hi.min(15_000) as f64) * 1.05 + 50.0,
            left,
            plot_w,
        }
    }

    fn x_of(&self, ms: f64) -> f64 {
        self.left + (ms.clamp(self.lo, self.hi) - self.lo) / (self.hi - self.lo) * self.plot_w
    }

    /// The grid lines and their labels, from `top` down to `height`.
    fn ticks(&self, out: &mut String, top: f64, height: f64) {
        let step = tick_step(self.hi - self.lo);
        let mut t = (self.lo / step).ceil() * step;
        while t <= self.hi {
            let x = self.x_of(t);
            let t0 = if t.abs() < 1e-6 { 0.0 } else { t };
            let label = if step >= 1000.0 {
                format!("{:.0} s", t0 / 1000.0)
            } else {
                format!("{t0:.0} ms")
            };
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                height - 28.0,
                height - 16.0
            );
            t += step;
        }
    }
}

/// One scenario's chart: a row per backend, a bar per critical section.
fn timeline_chart(out: &mut String, scenario: &str, rows: &[(&str, &Timeline)]) {
    let (left, plot_w, top, row_h) = (140.0, 640.0, 22.0, 26.0);
    let axis = TimeAxis::of(rows, left, plot_w);
    let width = left + plot_w + 20.0;
    let height = top + rows.len() as f64 * row_h + 34.0;
    let _ = write!(
        out,
        r#"<h3>{}</h3><svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" style="max-width:100%;height:auto" font-family="sans-serif" font-size="11">"#,
        esc(scenario)
    );
    axis.ticks(out, top, height);
    for (i, (backend, timeline)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let _ = write!(
            out,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 14.0,
            esc(backend)
        );
        for s in &timeline.sections {
            let color = HOLDER_COLORS[s.holder.min(HOLDER_COLORS.len() - 1)];
            let lane = if s.holder == 0 { 2.0 } else { 12.0 };
            let (x1, x2) = (
                axis.x_of(s.from_ms as f64),
                axis.x_of(s.to_ms.map_or(axis.hi, |t| t as f64)),
            );
            let to = s
                .to_ms
                .map_or("still inside".to_string(), |t| format!("{t} ms"));
            let _ = write!(
                out,
                r#"<rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="9" fill="{color}"><title>{} × {}: holder {} inside from {} ms to {to}</title></rect>"#,
                y + lane,
                (x2 - x1).max(1.5),
                esc(backend),
                esc(scenario),
                s.holder,
                s.from_ms
            );
        }
    }
    let x0 = axis.x_of(0.0);
    let _ = write!(
        out,
        r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{:.1}" y2="{:.1}" stroke="#cc0000" stroke-width="1.5"/><text x="{x0:.1}" y="{:.1}" fill="#cc0000" text-anchor="middle">fault</text>"##,
        top - 4.0,
        height - 28.0,
        top - 8.0
    );
    let _ = write!(
        out,
        r##"<text x="{:.0}" y="{:.0}"><tspan fill="{}">■ hit by the fault</tspan>  <tspan fill="{}">■ next holder</tspan>  <tspan fill="{}">■ replacement waiter</tspan> · a bar ends at the release or the reported loss</text></svg>"##,
        left - 100.0,
        height - 2.0,
        HOLDER_COLORS[0],
        HOLDER_COLORS[1],
        HOLDER_COLORS[2]
    );
}

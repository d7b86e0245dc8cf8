//! Writing the report: `comparison.json`, `comparison.md`, `index.html` (inline SVG), and
//! the main table for the terminal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{BACKENDS, Cell, Report, SCENARIOS, Status};
use crate::bench::BenchEntry;

/// `yes`, `no` or `—` for an optional flag.
pub fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// The failover text of a cell as the tables show it: `median (min–max)` in whole ms for a
/// measured cell, else a word saying why there is no number.
pub fn failover_text(c: &Cell) -> String {
    match c.status {
        Status::NotApplicable => "n/a".into(),
        Status::NotMeasured => "not measured".into(),
        Status::Failed => "failed".into(),
        Status::Measured => match c.failover_ms {
            Some(f) if c.repetitions > 1 => {
                format!("{:.0} ({:.0}–{:.0})", f.median, f.min, f.max)
            }
            Some(f) => format!("{:.0}", f.median),
            None => "not freed".into(),
        },
    }
}

/// The safety text of a cell: overlap, stale write, holder learned first.
pub fn safety_text(c: &Cell) -> String {
    match c.status {
        Status::Measured => {
            let mut s = format!(
                "overlap {} · stale write rejected {}",
                yes_no(c.overlap_observed),
                yes_no(c.stale_write_rejected)
            );
            if let Some(l) = c.holder_learned_before_handoff {
                let _ = write!(s, " · learned first {}", yes_no(Some(l)));
                if let Some(ms) = c.learned_before_handoff_ms {
                    let _ = write!(s, " ({ms:+.0} ms)");
                }
            }
            s
        }
        _ => failover_text(c),
    }
}

fn cell<'a>(r: &'a Report, backend: &str, scenario: &str) -> Option<&'a Cell> {
    r.scenarios
        .iter()
        .find(|c| c.backend == backend && c.scenario == scenario)
}

fn backends_of(r: &Report) -> Vec<&str> {
    BACKENDS
        .iter()
        .copied()
        .filter(|b| r.backends.iter().any(|x| x.name == *b))
        .collect()
}

/// The scenarios with at least one measured (or failed) cell: the columns worth a table.
fn measured_scenarios(r: &Report) -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .copied()
        .filter(|s| {
            r.scenarios
                .iter()
                .any(|c| c.scenario == *s && matches!(c.status, Status::Measured | Status::Failed))
        })
        .collect()
}

fn table(r: &Report, text: impl Fn(&Cell) -> String) -> String {
    let cols = measured_scenarios(r);
    let mut out = String::new();
    let _ = writeln!(out, "| backend | {} |", cols.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
    for b in backends_of(r) {
        let row: Vec<String> = cols
            .iter()
            .map(|s| cell(r, b, s).map_or_else(|| "—".into(), &text))
            .collect();
        let _ = writeln!(out, "| {b} | {} |", row.join(" | "));
    }
    out
}

/// The main table: failover medians (ms) per backend × measured scenario.
pub fn main_table(r: &Report) -> String {
    table(r, failover_text)
}

/// `comparison.md`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# dlock: backend vs reliability\n");
    let _ = writeln!(
        md,
        "Measured on `{}` ({} CPUs), {} repetition(s) per cell{}, in {:.0} s. Holders are \
         separate `dlock hold` processes; faults: {}.\n",
        r.run.host,
        r.run.cpus,
        r.run.repeat,
        if r.run.quick { " (`--quick`)" } else { "" },
        r.run.duration_s,
        r.run.fault_injection
    );
    let _ = writeln!(
        md,
        "## Failover time, ms: median (min–max)\n\nFrom the fault to the waiting holder's \
         grant.\n"
    );
    md.push_str(&main_table(r));
    let _ = writeln!(md, "\n## Safety\n");
    md.push_str(&table(r, safety_text));
    let _ = writeln!(md, "\n## Backends\n");
    let _ = writeln!(
        md,
        "| backend | ttl in force | frees a silent holder by | capabilities |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for b in &r.backends {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            b.name,
            b.ttl_ms
                .map_or_else(|| "none".to_string(), |t| format!("{t} ms")),
            b.frees_by,
            b.capabilities
        );
    }
    let _ = writeln!(
        md,
        "\n## Reading guide\n\n\
         - **Failover** is wall-clock time from the fault (release requested, SIGKILL, SIGSTOP) \
         to the `acquired` event of a holder that was already waiting (`dlock hold --wait \
         forever`). Lease-based backends free a dead or frozen holder only when its lease / \
         session / `at_most` runs out, so expect up to one ttl there (what was left of the \
         lease when the fault hit; renewals restart it); PostgreSQL frees a \
         killed holder as soon as its connection closes, and never frees a *paused* one whose \
         connection stays open (`not freed`).\n\
         - **overlap**: the harness-owned resource saw two holders inside the critical section \
         at once (by the holders' own timestamps). A paused holder is inside until it reports \
         the loss, so `holder_paused` shows overlap wherever the lock moved on while it slept.\n\
         - **stale write rejected**: after the hand-over, a write carrying the previous \
         holder's fencing token reaches the resource (a delayed request of the dead or paused \
         holder). `yes`: the token was lower than the new holder's and the resource refused \
         it; `no`: the backend has no fencing token (or it did not increase), so nothing could \
         stop it; `—`: no stale write was possible (the old holder still held the lock).\n\
         - **learned first**: the faulty holder reported `lost` before the other holder's \
         grant (ms: by how much; negative = after). Only where the holder survives the fault.\n\
         - **holder_partitioned / connection_reset** put an in-process TCP fault proxy between \
         the holder and each of its servers (blackhole that keeps the sockets open; RST for \
         200 ms then pass); the waiter connects directly. Where the run is root on Linux, \
         `holder_partitioned` instead puts the holder in a network namespace and takes its \
         link down (the cell's partition note says which): a real partition, which the \
         server's TCP stack sees. A proxy blackhole is not: the server's kernel keeps talking \
         to the proxy, so a lock that the server frees only when the client's TCP connection \
         dies (PostgreSQL) stays taken there (`not freed`). `not freed` after a 200 ms reset \
         means the holder reconnected and kept its lock.\n\
         - **server_restart**: the server (Redlock: all three) is SIGKILLed and started again \
         on the same port and data; the failover includes the restart time (in the notes). A waiter that gives up \
         when its connection dies is replaced by a fresh one (holder 2 in the notes). `not \
         freed`: the lock survived the restart for the whole bound.\n\
         - **latency**: the holder reaches every server (each of Redlock's three too) through \
         a fault proxy that delays each chunk, in order, in each direction. A probe holder \
         first acquires through ttl/{} (its time, or why it failed, is in the notes); the \
         holder, connected on a clean link, then gets the same delay and ttl/{} (a round \
         trip of half the lease), each for {} ttl — renewals should survive them (`kept the \
         lock … in N of M` in the notes) — then 1.5 ttl, longer than the lease. The climb stops \
         at the first step where the holder reports trouble or the waiter is granted; failover \
         runs from the start of that step (which step: in the notes).\n\
         - **quorum_loss** (3 servers: Redlock's instances, a 3-node etcd cluster, a 3-member \
         ZooKeeper ensemble started for this scenario): two are SIGKILLed (etcd / ZooKeeper: \
         the leader and one more) for {} ttl (at least {} s), then restarted. Nothing may be \
         granted while the majority is down (a grant would be in the notes); failover runs \
         from the restart of the majority to another holder's grant (the servers' start-up \
         included) (a waiter that gave up \
         during the outage is replaced). Single servers: `n/a`.\n\
         - **clock_skew**: the holder's wall clock is {} h ahead, the waiter's as far behind \
         (libfaketime; `CLOCK_MONOTONIC` untouched, as when a host's clock is set wrong or \
         stepped). Each holds 1.5 ttl against a waiting holder (the notes say whether the lock \
         stayed put); failover = SIGKILL of the ahead holder → the behind waiter's grant; the \
         behind holder then releases cleanly to an unskewed one. The skew is verified from the \
         holders' own timestamps, which the harness shifts back before using them.\n\
         - The fault is injected once the waiter has printed `waiting` (its first try found the \
         lock held) and {} ms more for its waiting request to reach the server; a waiter that \
         had not queued yet could only make a failover look slower, never faster.\n\
         - Cells `not measured` could not be run here (the reason says why, e.g. libfaketime \
         missing, external servers); `n/a` cannot apply (reason in `comparison.json`). No \
         number in these tables is estimated.",
        super::nemesis::latency::ACQUIRE_LINK_DIVISOR,
        super::nemesis::latency::SLOW_LINK_DIVISOR,
        super::nemesis::latency::SLOW_PHASE_TTLS,
        super::nemesis::quorum::OUTAGE_TTLS,
        super::nemesis::quorum::OUTAGE_MIN.as_secs(),
        super::nemesis::SKEW_MS / 3_600_000,
        super::WAITER_SETTLE.as_millis()
    );
    if let Some(table) = bench_markdown(r) {
        let _ = writeln!(
            md,
            "\n## Benchmarks\n\nShort runs on the same servers, after the scenarios; the raw \
             floor is the backend's minimal commands on a raw client of the same server, \
             measured alternately with dlock, one operation each. Latencies in µs. `make bench` \
             runs the longer criterion set.\n"
        );
        md.push_str(&table);
    }
    if let Some(t) = targets_markdown(r) {
        let _ = writeln!(md, "\n## Targets\n");
        md.push_str(&t);
    }
    let others: Vec<&Cell> = r
        .scenarios
        .iter()
        .filter(|c| c.status != Status::Measured)
        .collect();
    if !others.is_empty() {
        let _ = writeln!(md, "\n## Cells without measurements\n");
        let _ = writeln!(md, "| backend | scenario | status | reason |");
        let _ = writeln!(md, "|---|---|---|---|");
        for c in others {
            let status = match c.status {
                Status::NotApplicable => "not_applicable",
                Status::NotMeasured => "not_measured",
                Status::Failed => "failed",
                Status::Measured => "measured",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {status} | {} |",
                c.backend,
                c.scenario,
                c.reason.as_deref().unwrap_or("").replace('|', "\\|")
            );
        }
    }
    let notes: Vec<&Cell> = r
        .scenarios
        .iter()
        .filter(|c| c.status == Status::Measured && c.notes.len() > 1)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for c in notes {
            for n in &c.notes[1..] {
                let _ = writeln!(md, "- {} × {}: {n}", c.backend, c.scenario);
            }
        }
    }
    md
}

/// Writes `comparison.json`, `comparison.md` and `index.html` into `dir` (created if needed).
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    let path = dir.join("comparison.json");
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("comparison.md");
    std::fs::write(&path, markdown(r))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("index.html");
    std::fs::write(&path, html(r)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 7] = [
    "#336699", "#cc3333", "#993399", "#339966", "#cc8800", "#5588cc", "#ee7766",
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
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{color}" font-weight="bold">×<title>{} × {}: not freed</title></text>"#,
                        x + bar / 2.0,
                        top + 10.0,
                        esc(b),
                        esc(scenario)
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
        r#"<text x="{left}" y="{:.0}">× at the top: no other holder got the lock within the bound (not freed)</text></svg>"#,
        height - 8.0
    );
    s
}

fn html_table(r: &Report, text: impl Fn(&Cell) -> String) -> String {
    let cols = measured_scenarios(r);
    let mut h = String::from("<table><tr><th>backend</th>");
    for c in &cols {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for b in backends_of(r) {
        let _ = write!(h, "<tr><th>{}</th>", esc(b));
        for s in &cols {
            let t = cell(r, b, s).map_or_else(|| "—".into(), &text);
            let _ = write!(h, "<td>{}</td>", esc(&t));
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
</body></html>
"#,
        host = esc(&r.run.host),
        cpus = r.run.cpus,
        repeat = r.run.repeat,
        dur = r.run.duration_s,
        faults = esc(&r.run.fault_injection),
        svg = failover_svg(r),
        failover = html_table(r, failover_text),
        safety = html_table(r, safety_text),
        bench = bench_html(r),
        timelines = timeline_svg(r).map_or_else(String::new, |t| format!(
            "<h2>Who held the lock around the fault</h2><p>First repetition of each cell; time \
             relative to the fault (for latency and quorum_loss: the start of the step or the \
             majority's return, as the failover is measured).</p>{t}"
        )),
    )
}

/// Labels of the benchmark metrics, in table order: (metric, column title).
const BENCH_COLUMNS: [(&str, &str); 8] = [
    (
        "acquire_release_p50",
        "acquire+release p50 µs (floor, ratio)",
    ),
    ("acquire_release_p99", "p99 µs (floor)"),
    ("handoff_p50", "handoff p50 µs (1 round trip)"),
    ("handoff_p99", "handoff p99 µs"),
    ("throughput_64_tasks", "64 tasks, ops/s"),
    ("hold_many_seconds", "many locks: acquire s"),
    ("hold_many_rss_mib", "+MiB resident"),
    ("hold_many_connections", "connections"),
];

fn bench_entry<'a>(r: &'a Report, backend: &str, metric: &str) -> Option<&'a BenchEntry> {
    r.benchmarks
        .iter()
        .find(|e| e.backend == backend && e.metric == metric)
}

/// How a benchmark number is shown: latencies with their floor (and the p50 ratio), the
/// rest plain.
fn bench_text(e: &BenchEntry) -> String {
    let value = match e.unit.as_str() {
        "us" | "ops/s" | "connections" => format!("{:.0}", e.value),
        _ => format!("{:.1}", e.value),
    };
    match (e.metric.as_str(), e.floor) {
        ("acquire_release_p50", Some(f)) => {
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
            "acquire_release_p50" | "handoff_p50" | "throughput_64_tasks" | "hold_many_seconds"
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
fn bench_html(r: &Report) -> String {
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

const HOLDER_COLORS: [&str; 3] = ["#336699", "#e08a00", "#2a9d5c"];

/// A tick step (ms) that gives about six ticks over `span` ms.
fn tick_step(span: f64) -> f64 {
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
        let rows: Vec<(&str, &super::Timeline)> = backends_of(r)
            .into_iter()
            .filter_map(|b| {
                let c = cell(r, b, scenario)?;
                Some((b, c.timeline.as_ref()?))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
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
        let lo = lo.max(-3_000) as f64;
        let hi = (hi.min(15_000) as f64) * 1.05 + 50.0;
        let (left, plot_w, top, row_h) = (140.0, 640.0, 22.0, 26.0);
        let width = left + plot_w + 20.0;
        let height = top + rows.len() as f64 * row_h + 34.0;
        let x_of = |ms: f64| left + (ms.clamp(lo, hi) - lo) / (hi - lo) * plot_w;
        let _ = write!(
            out,
            r#"<h3>{}</h3><svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" style="max-width:100%;height:auto" font-family="sans-serif" font-size="11">"#,
            esc(scenario)
        );
        let step = tick_step(hi - lo);
        let mut t = (lo / step).ceil() * step;
        while t <= hi {
            let x = x_of(t);
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
                    x_of(s.from_ms as f64),
                    x_of(s.to_ms.map_or(hi, |t| t as f64)),
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
        let x0 = x_of(0.0);
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
    (!out.is_empty()).then_some(out)
}

/// One row of the targets table: (backend, target, measured, met).
fn target_rows(r: &Report) -> Vec<(String, &'static str, String, Option<bool>)> {
    let mut rows = Vec::new();
    for b in &r.backends {
        let name = b.name.as_str();
        if let Some(e) = bench_entry(r, name, "acquire_release_p50") {
            if let Some(f) = e.floor.filter(|f| *f > 0.0) {
                let ratio = e.value / f;
                rows.push((
                    name.to_string(),
                    "acquire + release p50 ≤ 1.10× the raw floor",
                    format!("{ratio:.2}× ({:.0} / {f:.0} µs)", e.value),
                    Some(ratio <= 1.10),
                ));
            }
        }
        if b.capabilities.split_whitespace().any(|c| c == "notify") {
            if let Some(e) = bench_entry(r, name, "handoff_p50") {
                if let Some(f) = e.floor.filter(|f| *f > 0.0) {
                    rows.push((
                        name.to_string(),
                        "handoff p50 ≤ 2 round trips (backends that notify waiters)",
                        format!(
                            "{:.1} round trips ({:.0} / {f:.0} µs)",
                            e.value / f,
                            e.value
                        ),
                        Some(e.value <= 2.0 * f),
                    ));
                }
            }
        }
        if let Some(c) = cell(r, name, "holder_killed").filter(|c| c.status == Status::Measured) {
            let (target, met) = match (name, c.failover_ms, c.ttl_ms) {
                ("postgres", Some(f), _) => ("SIGKILL failover < 100 ms", Some(f.median < 100.0)),
                (_, Some(f), Some(ttl)) => (
                    "SIGKILL failover within 10 % of the lease / session / at_most",
                    Some(f.median <= ttl as f64 * 1.1),
                ),
                _ => ("SIGKILL failover", None),
            };
            let measured = match (c.failover_ms, c.ttl_ms) {
                (Some(f), Some(ttl)) => format!("{:.0} ms (ttl {ttl} ms)", f.median),
                (Some(f), None) => format!("{:.0} ms", f.median),
                (None, _) => "not freed".to_string(),
            };
            rows.push((name.to_string(), target, measured, met));
        }
        if name == "postgres" {
            if let Some(c) =
                cell(r, name, "holder_partitioned").filter(|c| c.status == Status::Measured)
            {
                let netns = c.notes.iter().any(|n| n.contains("network namespace"));
                let met = c
                    .failover_ms
                    .map(|f| f.max <= 10_000.0 && c.holder_learned_before_handoff == Some(true));
                rows.push((
                    name.to_string(),
                    "partition: freed within 10 s, the holder learning first",
                    format!(
                        "{} ({}), learned first: {}",
                        c.failover_ms
                            .map_or("not freed".to_string(), |f| format!("{:.0} ms", f.max)),
                        if netns {
                            "network namespace"
                        } else {
                            "fault proxy"
                        },
                        yes_no(c.holder_learned_before_handoff)
                    ),
                    met,
                ));
            }
        }
    }
    rows
}

/// The targets of the comparison, met or missed, from the measurements above (markdown).
pub fn targets_markdown(r: &Report) -> Option<String> {
    let rows = target_rows(r);
    if rows.is_empty() {
        return None;
    }
    let mut md = String::from("| backend | target | measured | |\n|---|---|---|---|\n");
    for (b, target, measured, met) in rows {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "—",
        };
        let _ = writeln!(md, "| {b} | {target} | {measured} | {verdict} |");
    }
    md.push_str(
        "\nWhy a target is missed, with longer measurements: each backend's README \
         (`lock-*/README.md`, section *Measured*). The latency ratios come from the short \
         benchmark run above (single-threaded, 500 samples); `make bench` measures longer.\n",
    );
    Some(md)
}

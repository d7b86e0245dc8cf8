//! The peers section: dlock beside each peer library, a table and a chart per metric.

use std::fmt::Write as _;

use super::html::esc;
use super::*;
use crate::peers::{METRICS, PeerRow};

/// Column titles of the metrics.
fn title(metric: &str) -> &'static str {
    match metric {
        "acquire_release_p50" => "uncontended acquire+release p50 (µs)",
        "acquire_release_p99" => "uncontended acquire+release p99 (µs)",
        "handoff_p50" => "handoff to the next of 8 waiting processes, p50 (µs)",
        "throughput_64_distinct" => "64 tasks on distinct names (acquire+release/s)",
        "throughput_64_same" => "64 tasks on one name (acquire+release/s)",
        "failover_sigkill" => "SIGKILLed holder → next grant, median (ms)",
        _ => "",
    }
}

fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// `dlock | peer | ratio (spread)` of one row, or why it has none.
fn cells(r: &PeerRow) -> [String; 3] {
    match (r.dlock, r.peer_value, r.ratio) {
        (Some(d), Some(p), Some(ratio)) => {
            let spread = r
                .spread
                .map_or_else(String::new, |[a, b]| format!(" ({a:.2}–{b:.2})"));
            [number(d), number(p), format!("{ratio:.2}×{spread}")]
        }
        _ => [
            "—".into(),
            "—".into(),
            format!(
                "{}: {}",
                r.status,
                r.reason.as_deref().unwrap_or("no reason given")
            ),
        ],
    }
}

/// The peer's name, with the option dlock ran with in this comparison if any.
pub(crate) fn label(p: &PeerRow) -> String {
    let (query, mode): (Vec<&str>, Vec<&str>) = p
        .dlock_options
        .split(' ')
        .filter(|w| !w.is_empty())
        .partition(|w| !w.starts_with("--") && !w.chars().all(|c| c.is_ascii_digit()));
    match (query.is_empty(), mode.is_empty()) {
        (true, true) => p.peer.clone(),
        (false, true) => format!("{} (dlock ?{})", p.peer, query.join("&")),
        (true, false) => format!("{} (dlock peer {})", p.peer, mode.join(" ")),
        (false, false) => format!(
            "{} (dlock peer {} ?{})",
            p.peer,
            mode.join(" "),
            query.join("&")
        ),
    }
}

/// Each peer once (its first row): the facts that do not change per metric.
fn peers_once(r: &Report) -> Vec<&PeerRow> {
    let mut seen: Vec<(&str, &str, &str)> = Vec::new();
    let mut out = Vec::new();
    for row in &r.peers {
        let key = (&row.backend[..], &row.peer[..], &row.dlock_options[..]);
        if !seen.contains(&key) {
            seen.push(key);
            out.push(row);
        }
    }
    out
}

/// The peers section (markdown), or `None` without one.
pub fn peers_markdown(r: &Report) -> Option<String> {
    if r.peers.is_empty() {
        return None;
    }
    let mut md = String::from(
        "Each peer runs its own client library with its own defaults (only the ttl is \
         dlock's) in a harness process speaking `peers/README.md`'s protocol; dlock runs in \
         one too (`dlock peer URL`); the two alternate round by round on the same servers. \
         Times are read inside the harnesses (`CLOCK_MONOTONIC`). Ratio = dlock ÷ peer \
         (lower is better for times, higher for throughput), with its spread over the \
         rounds.\n\n| backend | peer | version | harness | waits by | does less than dlock | floor |\n|---|---|---|---|---|---|---|\n",
    );
    for p in peers_once(r) {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            p.backend,
            label(p),
            if p.peer_version.is_empty() {
                "—"
            } else {
                &p.peer_version
            },
            p.harness,
            p.waits_by,
            if p.does_less.is_empty() {
                "—"
            } else {
                &p.does_less
            },
            p.floor
        );
    }
    for (metric, _, better) in METRICS {
        let rows: Vec<&PeerRow> = r
            .peers
            .iter()
            .filter(|p| p.metric == *metric || (p.metric == "all" && *metric == METRICS[0].0))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "\n### {} — {better} is better\n\n| backend | peer | dlock | peer | dlock ÷ peer (spread) | samples per side |\n|---|---|---|---|---|---|",
            title(metric)
        );
        for p in rows {
            let [d, v, ratio] = cells(p);
            let _ = writeln!(
                md,
                "| {} | {} | {d} | {v} | {ratio} | {} |",
                p.backend,
                label(p),
                p.samples
            );
        }
        if let Some(n) = r
            .peers
            .iter()
            .find(|p| p.metric == *metric && !p.notes.is_empty())
        {
            let _ = writeln!(md, "\n{}", n.notes);
        }
    }
    Some(md)
}

/// Bars for one metric: dlock beside each peer, on one linear scale per chart.
fn chart(rows: &[&PeerRow], metric: &str, unit: &str) -> String {
    let measured: Vec<&&PeerRow> = rows
        .iter()
        .filter(|p| p.dlock.is_some() && p.peer_value.is_some())
        .collect();
    if measured.is_empty() {
        return String::new();
    }
    let max = measured
        .iter()
        .flat_map(|p| [p.dlock.unwrap_or(0.0), p.peer_value.unwrap_or(0.0)])
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let (left, width, bar, gap) = (260.0, 420.0, 10.0, 8.0);
    let height = measured.len() as f64 * (2.0 * bar + gap) + 30.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height:.0}" font-family="sans-serif" font-size="11" role="img" aria-label="{}">"#,
        left + width + 90.0,
        esc(title(metric))
    );
    for (i, p) in measured.iter().enumerate() {
        let y = i as f64 * (2.0 * bar + gap) + 4.0;
        let (d, v) = (p.dlock.unwrap_or(0.0), p.peer_value.unwrap_or(0.0));
        let _ = write!(
            s,
            r##"<text x="{:.0}" y="{:.0}" text-anchor="end">{} · {}</text><rect x="{left}" y="{y:.0}" width="{:.1}" height="{bar}" fill="#336699"/><text x="{:.1}" y="{:.0}">{} {unit}</text><rect x="{left}" y="{:.0}" width="{:.1}" height="{bar}" fill="#e08a00"/><text x="{:.1}" y="{:.0}">{} {unit}</text>"##,
            left - 6.0,
            y + bar + 3.0,
            esc(&p.backend),
            esc(&label(p)),
            width * d / max,
            left + width * d / max + 4.0,
            y + bar - 1.0,
            number(d),
            y + bar,
            width * v / max,
            left + width * v / max + 4.0,
            y + 2.0 * bar - 1.0,
            number(v),
        );
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="{:.0}"><tspan fill="#336699">■ dlock</tspan>  <tspan fill="#e08a00">■ peer</tspan></text></svg>"##,
        height - 6.0
    );
    s
}

/// The peers section of `index.html` (empty without one).
pub(super) fn peers_html(r: &Report) -> String {
    if r.peers.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>dlock beside the peer libraries</h2><p>Each peer with its own client and \
         defaults (only the ttl is dlock's), alternating round by round with dlock on the \
         same servers. Ratio = dlock ÷ peer, with its spread over the rounds.</p>\
         <table><tr><th>backend</th><th>peer</th><th>version</th><th>waits by</th><th>does less than dlock</th></tr>",
    );
    for p in peers_once(r) {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.backend),
            esc(&label(p)),
            esc(&p.peer_version),
            esc(&p.waits_by),
            esc(if p.does_less.is_empty() {
                "—"
            } else {
                &p.does_less
            })
        );
    }
    h.push_str("</table>");
    for (metric, unit, better) in METRICS {
        let rows: Vec<&PeerRow> = r.peers.iter().filter(|p| p.metric == *metric).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = write!(h, "<h3>{} — {better} is better</h3>", esc(title(metric)));
        h.push_str(&chart(&rows, metric, unit));
        h.push_str("<table><tr><th>backend</th><th>peer</th><th>dlock</th><th>peer</th><th>dlock ÷ peer (spread)</th></tr>");
        for p in rows {
            let [d, v, ratio] = cells(p);
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.backend),
                esc(&label(p)),
                esc(&d),
                esc(&v),
                esc(&ratio)
            );
        }
        h.push_str("</table>");
    }
    for p in r.peers.iter().filter(|p| p.metric == "all") {
        let _ = write!(
            h,
            "<p>{} × {}: {}: {}</p>",
            esc(&p.backend),
            esc(&label(p)),
            esc(&p.status),
            esc(p.reason.as_deref().unwrap_or(""))
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, reason: Option<&str>, values: Option<(f64, f64)>) -> PeerRow {
        PeerRow {
            backend: "redis".into(),
            peer: "redis-py".into(),
            dlock_options: String::new(),
            peer_version: "8.2.0".into(),
            harness: "python".into(),
            metric: "all".into(),
            unit: "us".into(),
            better: "lower".into(),
            dlock: values.map(|v| v.0),
            peer_value: values.map(|v| v.1),
            ratio: values.map(|v| v.0 / v.1),
            samples: 0,
            spread: values.map(|_| [0.5, 0.7]),
            rounds: 0,
            does_less: String::new(),
            waits_by: "polls".into(),
            floor: String::new(),
            status: status.into(),
            reason: reason.map(String::from),
            notes: String::new(),
        }
    }

    #[test]
    fn a_peer_that_could_not_run_says_why_and_a_measured_one_has_its_ratio() {
        let why = "the python harness is not installed: run scripts/install-peers";
        let [d, p, ratio] = cells(&row("unavailable", Some(why), None));
        assert_eq!((d.as_str(), p.as_str()), ("—", "—"));
        assert_eq!(ratio, format!("unavailable: {why}"));
        let [d, p, ratio] = cells(&row("measured", None, Some((300.0, 500.0))));
        assert_eq!((d.as_str(), p.as_str()), ("300", "500"));
        assert_eq!(ratio, "0.60× (0.50–0.70)");
        let mut r = row("measured", None, None);
        assert_eq!(label(&r), "redis-py");
        r.dlock_options = "fencing=off".into();
        assert_eq!(label(&r), "redis-py (dlock ?fencing=off)");
        r.dlock_options = "--permits 2".into();
        assert_eq!(label(&r), "redis-py (dlock peer --permits 2)");
        r.dlock_options = "--shared".into();
        assert_eq!(label(&r), "redis-py (dlock peer --shared)");
    }
}

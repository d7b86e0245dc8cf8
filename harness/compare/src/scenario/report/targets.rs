//! What each backend's lock targets, measured: the table under the failover table.

use std::fmt::Write as _;

use super::bench::bench_entry;
use super::*;

/// One row of the targets table: (backend, target, measured, met).
pub(super) fn target_rows(r: &Report) -> Vec<(String, &'static str, String, Option<bool>)> {
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
                ("postgres" | "mariadb", Some(f), _) => {
                    ("SIGKILL failover < 100 ms", Some(f.median < 100.0))
                }
                (_, Some(f), Some(ttl)) => (
                    "SIGKILL failover within 10 % of the lease / session / at_most",
                    Some(f.median <= ttl as f64 * 1.1),
                ),
                _ => ("SIGKILL failover", None),
            };
            let measured = match (c.failover_ms, c.ttl_ms) {
                (Some(f), Some(ttl)) => format!("{:.0} ms (ttl {ttl} ms)", f.median),
                (Some(f), None) => format!("{:.0} ms", f.median),
                (None, _) => super::failover_text(c),
            };
            rows.push((name.to_string(), target, measured, met));
        }
        // Session locks the server frees by itself after a partition: PostgreSQL when its TCP
        // keepalives give up (about 10 s), MariaDB when the quiet session reaches
        // `wait_timeout` (10 s) — plus one session check for the last statement it got.
        let partition = match name {
            "postgres" => Some((
                10_000.0,
                "partition: freed within 10 s, the holder learning first",
            )),
            "mariadb" => Some((
                11_500.0,
                "partition: freed within 11.5 s, the holder learning first",
            )),
            _ => None,
        };
        if let Some((limit, target)) = partition {
            if let Some(c) =
                cell(r, name, "holder_partitioned").filter(|c| c.status == Status::Measured)
            {
                let netns = c.notes.iter().any(|n| n.contains("network namespace"));
                let met = c
                    .failover_ms
                    .map(|f| f.max <= limit && c.holder_learned_before_handoff == Some(true));
                rows.push((
                    name.to_string(),
                    target,
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

//! Writing the report: `comparison.json`, `comparison.md`, `index.html` (inline SVG), and
//! the main table for the terminal.

mod bench;
mod choosing;
mod html;
mod markdown;
mod peers;
mod strategies;
mod targets;
mod verdict;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::cell::NotFreed;
use super::{BACKENDS, Cell, Library, Report, SCENARIOS, Status};

use crate::bench::BenchEntry;
pub use bench::{bench_markdown, latency_svg};
pub use choosing::choosing_markdown;
pub use html::{failover_svg, html, timeline_svg};
pub use markdown::markdown;
pub use peers::peers_markdown;
pub use strategies::strategies_markdown;
pub use targets::targets_markdown;
pub use verdict::{DOCUMENTED_OVERLAPS, Verdict};

/// `yes`, `no` or `—` for an optional flag.
pub fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// Where the lock stayed when it did not move: `kept by the live holder` (legitimate: its
/// session or lease survived the fault) or `stranded` (the holder had reported the loss, the
/// server kept the lock for it), with counts when not every repetition was alike.
pub fn not_freed_text(n: NotFreed, repetitions: usize) -> String {
    let part = |k: usize, what: &str| match k {
        0 => None,
        k if k == repetitions => Some(what.to_string()),
        k => Some(format!("{what} in {k} of {repetitions}")),
    };
    [
        part(n.kept_by_live_holder, "kept by the live holder"),
        part(n.stranded, "stranded"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ")
}

/// The failover text of a cell as the tables show it: `median (min–max)` in whole ms for a
/// measured cell, else a word saying why there is no number.
pub fn failover_text(c: &Cell) -> String {
    match c.status {
        Status::NotApplicable => "n/a".into(),
        Status::NotMeasured => "not measured".into(),
        Status::Failed => "failed".into(),
        Status::Measured => match c.failover_ms {
            Some(f) => {
                let mut s = if c.repetitions > 1 {
                    format!("{:.0} ({:.0}–{:.0})", f.median, f.min, f.max)
                } else {
                    format!("{:.0}", f.median)
                };
                if let Some(n) = c.not_freed {
                    let _ = write!(s, " · {}", not_freed_text(n, c.repetitions));
                }
                s
            }
            None => c
                .not_freed
                .map_or_else(|| "not freed".into(), |n| not_freed_text(n, c.repetitions)),
        },
    }
}

/// The safety text of a cell: overlap, stale write, holder learned first.
pub fn safety_text(c: &Cell) -> String {
    match c.status {
        Status::Measured => {
            let stale = if c.no_token && c.stale_write_rejected == Some(false) {
                // A peer library's holder writes without a token: the library hands none out.
                let whose = if c.library.is_some() {
                    "library"
                } else {
                    c.backend.as_str()
                };
                format!("no token ({whose})")
            } else {
                yes_no(c.stale_write_rejected).to_string()
            };
            let mut s = format!(
                "overlap {} · stale write rejected {stale}",
                yes_no(c.overlap_observed),
            );
            if c.never_learned > 0 && c.learned_gap_ms.is_none() {
                // It never reported the loss in any repetition in which the lock moved.
                s.push_str(" · never learned");
            } else if let Some(l) = c.holder_learned_before_handoff {
                let _ = write!(s, " · learned first {}", yes_no(Some(l)));
                // The gap, not only its sign: CLOCK_MONOTONIC µs on both sides.
                match c.learned_gap_ms {
                    Some(g) if c.repetitions > 1 => {
                        let _ = write!(s, " ({:+.1} ms; {:+.1} to {:+.1})", g.median, g.min, g.max);
                    }
                    Some(g) => {
                        let _ = write!(s, " ({:+.1} ms)", g.median);
                    }
                    None => {}
                }
                if c.never_learned > 0 {
                    let _ = write!(
                        s,
                        " · never learned in {} of {}",
                        c.never_learned, c.repetitions
                    );
                }
            }
            s
        }
        _ => failover_text(c),
    }
}

/// dlock's own exclusive-lock cell of `backend` × `scenario` (not a peer library's, not a
/// shared lock's or a semaphore's).
pub(super) fn cell<'a>(r: &'a Report, backend: &str, scenario: &str) -> Option<&'a Cell> {
    r.scenarios.iter().find(|c| {
        c.backend == backend
            && c.scenario == scenario
            && c.library.is_none()
            && c.workload.is_none()
    })
}

/// A row of the failure tables: a backend's dlock holders, or a peer library's holders on
/// that backend's servers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row<'a> {
    pub backend: &'a str,
    pub library: Option<&'a Library>,
    /// dlock's shared-lock or semaphore workload (`None`: the exclusive lock).
    pub workload: Option<&'a str>,
}

impl Row<'_> {
    /// `redis`, `redis · redisson 3.27.2`.
    pub fn label(&self) -> String {
        match (self.library, self.workload) {
            (Some(l), _) => format!("{} · {}", self.backend, l.label()),
            (None, Some(w)) => format!("{} · {w}", self.backend),
            (None, None) => self.backend.to_string(),
        }
    }

    /// Its cell of `scenario`.
    pub fn cell<'r>(&self, r: &'r Report, scenario: &str) -> Option<&'r Cell> {
        let name = self.library.map(|l| &l.name);
        r.scenarios.iter().find(|c| {
            c.backend == self.backend
                && c.scenario == scenario
                && c.library.as_ref().map(|l| &l.name) == name
                && c.workload.as_deref() == self.workload
        })
    }
}

/// The rows of the failure tables: each backend's own, then right under it its shared-lock
/// and semaphore rows, then a row per peer library whose holders ran on its servers, in the
/// order they ran.
pub(super) fn rows_of(r: &Report) -> Vec<Row<'_>> {
    let mut rows = Vec::new();
    for b in backends_of(r) {
        rows.push(Row {
            backend: b,
            library: None,
            workload: None,
        });
        let mut workloads: Vec<&str> = Vec::new();
        for w in r
            .scenarios
            .iter()
            .filter(|c| c.backend == b && c.library.is_none())
            .filter_map(|c| c.workload.as_deref())
        {
            if !workloads.contains(&w) {
                workloads.push(w);
                rows.push(Row {
                    backend: b,
                    library: None,
                    workload: Some(w),
                });
            }
        }
        let mut seen: Vec<&str> = Vec::new();
        for l in r
            .scenarios
            .iter()
            .filter(|c| c.backend == b)
            .filter_map(|c| c.library.as_ref())
        {
            if !seen.contains(&l.name.as_str()) {
                seen.push(&l.name);
                rows.push(Row {
                    backend: b,
                    library: Some(l),
                    workload: None,
                });
            }
        }
    }
    rows
}

pub(super) fn backends_of(r: &Report) -> Vec<&str> {
    BACKENDS
        .iter()
        .copied()
        .filter(|b| r.backends.iter().any(|x| x.name == *b))
        .collect()
}

/// The scenarios with at least one measured (or failed) cell: the columns worth a table.
pub(super) fn measured_scenarios(r: &Report) -> Vec<&'static str> {
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

pub(super) fn table(r: &Report, text: impl Fn(&Cell) -> String) -> String {
    let cols = measured_scenarios(r);
    let mut out = String::new();
    let _ = writeln!(out, "| backend | {} |", cols.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(cols.len()));
    for row in rows_of(r) {
        let cells: Vec<String> = cols
            .iter()
            .map(|s| row.cell(r, s).map_or_else(|| "—".into(), &text))
            .collect();
        let _ = writeln!(out, "| {} | {} |", row.label(), cells.join(" | "));
    }
    out
}

/// The main table: failover medians (ms) per backend × measured scenario (and per peer
/// library, under its backend).
pub fn main_table(r: &Report) -> String {
    table(r, failover_text)
}

/// Writes `comparison.json`, `comparison.md`, `choosing.md` (the README's table) and
/// `index.html` into `dir` (created if needed).
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    let path = dir.join("comparison.json");
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("comparison.md");
    std::fs::write(&path, markdown(r))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("choosing.md");
    std::fs::write(&path, choosing_markdown(r))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("index.html");
    std::fs::write(&path, html(r)).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

//! Writing the report: `comparison.json`, `comparison.md`, and the main table for the
//! terminal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::{BACKENDS, Cell, Report, SCENARIOS, Status};

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
         the holder and its one server (blackhole that keeps the sockets open; RST for 200 ms \
         then pass); the waiter connects directly. A proxy blackhole is not a partition the \
         server can see: its kernel keeps talking to the proxy, so a lock that the server \
         frees only when the client's TCP connection dies (PostgreSQL) stays taken here \
         (`not freed`). Redlock's three servers are not proxied yet.\n\
         - The waiter is given {} ms after starting to connect and queue before the fault (the \
         holder process prints nothing while waiting); this can only make a failover look \
         slower, never faster.\n\
         - Cells `not measured` are scenarios this build does not run yet; `n/a` cannot apply \
         (reason in `comparison.json`). No number in these tables is estimated.",
        super::WAITER_SETTLE.as_millis()
    );
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

/// Writes `comparison.json` and `comparison.md` into `dir` (created if needed).
pub fn write(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    let path = dir.join("comparison.json");
    std::fs::write(&path, json + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    let path = dir.join("comparison.md");
    std::fs::write(&path, markdown(r))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

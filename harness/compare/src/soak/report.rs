//! `soak.json` (everything, including the planned schedule for replay checks) and `soak.md`
//! (one table and the violations' windows).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::SoakReport;

/// Writes `soak.json` and `soak.md` into `out`.
pub fn write(report: &SoakReport, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out.join("soak.json"), json)
        .with_context(|| format!("cannot write {}", out.join("soak.json").display()))?;
    std::fs::write(out.join("soak.md"), markdown(report))
        .with_context(|| format!("cannot write {}", out.join("soak.md").display()))?;
    Ok(())
}

/// The markdown report.
pub fn markdown(r: &SoakReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# dlock soak\n\nSeed {} (replay: `dlock compare --soak {}s --seed {}`), {:.0} s split \
         evenly: {:.0} s per backend, {} holders each, ttl {} ms.\n",
        r.seed, r.duration_s, r.seed, r.duration_s, r.per_backend_s, r.holders, r.ttl_ms
    );
    s.push_str(
        "| backend | acquisitions | faults | fencing | violations | documented | stale rejected | overlaps (by latest fault) |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for b in &r.backends {
        if let Some(e) = &b.error {
            let _ = writeln!(s, "| {} | failed to run: {e} | | | | | | |", b.backend);
            continue;
        }
        let f = &b.findings;
        let faults: Vec<String> = b
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let overlaps: Vec<String> = f
            .overlaps_by_fault
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {}{} |",
            b.backend,
            f.acquisitions,
            faults.join(", "),
            if f.fenced { "tokens" } else { "none" },
            if f.fenced {
                f.violations.len().to_string()
            } else {
                "n/a".into()
            },
            f.documented.len(),
            f.rejected,
            f.overlaps,
            if overlaps.is_empty() {
                String::new()
            } else {
                format!(" ({})", overlaps.join(", "))
            },
        );
    }
    s.push_str(
        "\nA violation is a write accepted from a holder whose lock had already been granted to \
         another holder (by the holders' CLOCK_MONOTONIC timestamps): fencing should have \
         rejected it, and the soak fails. Documented: such a write across a server restart on a \
         backend whose tokens do not survive one. Overlaps (two holders inside at once) are \
         counted on every backend; without fencing tokens they are the backend's documented \
         behaviour under these faults, not a failure.\n",
    );
    for b in &r.backends {
        for v in b.findings.violations.iter().chain(&b.findings.documented) {
            let _ = writeln!(
                s,
                "\n## {}: holder {} (slot {}) wrote with token {:?} at +{:.1} ms after holder {} got the lock with {:?} at +{:.1} ms\n\n```\n{}\n```",
                b.backend,
                v.holder,
                v.slot,
                v.token,
                v.write_ms,
                v.taken_over_by,
                v.taken_over_token,
                v.taken_over_ms,
                v.window.join("\n")
            );
        }
    }
    s
}

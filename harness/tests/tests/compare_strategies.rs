//! `dlock compare --quick --only strategies`: the report's strategies section has a measured
//! row per strategy, quiet and beside the live stream, and the live stream's baseline; the
//! markdown and HTML have its table.

use std::process::{Command, Stdio};

use dlock_compare::strategies::contention::RowStrategy;
use dlock_compare::strategies::purge::Strategy;
use serde_json::Value;

#[test]
fn compare_writes_the_strategies_section() {
    let out = std::env::temp_dir().join(format!("dlock-compare-strategies-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "compare",
            "--quick",
            "--only",
            "strategies",
            "--backends",
            "postgres",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run dlock compare");
    let said = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(run.status.code(), Some(0), "dlock compare failed:\n{said}");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json"),
    )
    .expect("JSON");
    let md = std::fs::read_to_string(out.join("comparison.md")).expect("comparison.md");
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    let _ = std::fs::remove_dir_all(&out);
    let rows = json["strategies"]["purge"]
        .as_array()
        .expect("strategies.purge is a list");
    for live in [false, true] {
        for s in Strategy::ALL {
            let r = rows
                .iter()
                .find(|r| r["strategy"] == s.name() && r["live"] == live)
                .unwrap_or_else(|| panic!("no row for {} (live {live}) in {rows:#?}", s.name()));
            assert_eq!(r["status"], "measured", "{r}");
            assert_eq!(r["runs"], 1, "{r}");
            assert_eq!(r["recent_rows_deleted_max"], 0, "{r}");
            assert_eq!(r["live_lock_wait_pct"].is_array(), live, "{r}");
            assert!(
                md.contains(&format!(
                    "| {} | {} |",
                    s.name(),
                    if live { "yes" } else { "no" }
                )),
                "{md}"
            );
        }
    }
    let base = rows
        .iter()
        .find(|r| r["strategy"] == "live stream alone (no purge)")
        .expect("the baseline row");
    assert!(
        base["live_ops_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{base}"
    );
    // The hot row: every strategy at 1, 8 and 64 workers, and no lost update anywhere.
    let contention = json["strategies"]["contention"]
        .as_array()
        .expect("strategies.contention is a list");
    for workers in [1, 8, 64] {
        for s in RowStrategy::ALL {
            let r = contention
                .iter()
                .find(|r| r["strategy"] == s.name() && r["workers"] == workers)
                .unwrap_or_else(|| {
                    panic!("no row for {} × {workers} in {contention:#?}", s.name())
                });
            assert_eq!(r["status"], "measured", "{r}");
            assert_eq!(r["lost_updates_max"], 0, "{r}");
            assert!(r["ops_per_s"][0].as_f64().is_some_and(|v| v > 0.0), "{r}");
        }
    }
    // Idempotency: payment grade runs the effect once in every situation; click grade
    // counts once, except that a click is lost to a dead worker and counted twice across a
    // Redis restart without persistence — its documented at-most-once window.
    let idem = json["strategies"]["idempotency"]
        .as_array()
        .expect("strategies.idempotency is a list");
    for scenario in dlock_compare::strategies::idempotency::SCENARIOS {
        for grade in ["payment (PostgreSQL)", "click (Redis)"] {
            let r = idem
                .iter()
                .find(|r| r["grade"] == grade && r["scenario"] == scenario)
                .unwrap_or_else(|| panic!("no row for {grade} × {scenario} in {idem:#?}"));
            assert_eq!(r["status"], "measured", "{r}");
            let want = match (grade, scenario) {
                ("click (Redis)", "worker killed mid-request") => 0.0,
                ("click (Redis)", "server crash mid-request") => 2.0,
                _ => 1.0,
            };
            assert_eq!(r["executions"][0].as_f64(), Some(want), "{r}");
        }
    }
    assert!(md.contains("## The seed's strategies"), "{md}");
    assert!(
        html.contains("The seed&#39;s strategies") || html.contains("The seed's strategies"),
        "index.html lacks the section"
    );
    assert!(said.contains("[strategies]"), "no progress lines:\n{said}");
}

//! `dlock compare --quick --only peers` on etcd and PostgreSQL: the report's `peers` list has
//! the documented fields for every peer of those backends, and comparison.md its table.

use std::process::{Command, Stdio};

use serde_json::Value;

const FIELDS: [&str; 20] = [
    "backend",
    "peer",
    "dlock_options",
    "peer_version",
    "harness",
    "metric",
    "unit",
    "better",
    "dlock",
    "peer_value",
    "ratio",
    "samples",
    "spread",
    "rounds",
    "does_less",
    "waits_by",
    "floor",
    "status",
    "notes",
    "reason",
];

#[test]
fn compare_writes_the_peers_section() {
    let out = std::env::temp_dir().join(format!("dlock-compare-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "compare",
            "--quick",
            "--only",
            "peers",
            "--backends",
            "postgres,etcd",
            "--out",
        ])
        .arg(&out)
        .env(
            dlock_compare::peers::catalog::PEERS_DIR_ENV,
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../peers"),
        )
        .stdin(Stdio::null())
        .status()
        .expect("run dlock compare");
    assert_eq!(status.code(), Some(0), "dlock compare failed");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json"),
    )
    .expect("comparison.json is JSON");
    let md = std::fs::read_to_string(out.join("comparison.md")).expect("comparison.md");
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    let _ = std::fs::remove_dir_all(&out);

    let rows = json["peers"].as_array().expect("peers is a list");
    for want in dlock_compare::peers::PEERS
        .iter()
        .filter(|p| p.backend == "postgres" || p.backend == "etcd")
    {
        let of_peer: Vec<&Value> = rows
            .iter()
            .filter(|r| r["backend"] == want.backend && r["peer"] == want.peer)
            .collect();
        // Every metric measured: an `unavailable` or `failed` row would say why, but on this
        // machine every peer installs (make test runs scripts/install-peers first).
        let metrics: Vec<&str> = of_peer
            .iter()
            .map(|r| r["metric"].as_str().unwrap())
            .collect();
        for (m, _, _) in dlock_compare::peers::METRICS {
            assert!(
                metrics.contains(m),
                "{} × {}: no {m} row in {of_peer:#?}",
                want.backend,
                want.peer
            );
        }
        for r in of_peer {
            let obj = r.as_object().expect("a row is an object");
            for f in FIELDS {
                assert!(
                    obj.contains_key(f) || (f == "reason" && r["status"] == "measured"),
                    "{f} missing from {r}"
                );
            }
            assert_eq!(r["status"], "measured", "{r}");
            assert!(!r["peer_version"].as_str().unwrap().is_empty(), "{r}");
            let (d, p, ratio) = (
                r["dlock"].as_f64().expect("dlock"),
                r["peer_value"].as_f64().expect("peer_value"),
                r["ratio"].as_f64().expect("ratio"),
            );
            assert!(d >= 0.0 && p > 0.0, "{r}");
            assert!((ratio - d / p).abs() < 1e-6 * ratio.max(1.0), "{r}");
            let spread = r["spread"].as_array().expect("spread");
            assert!(
                spread[0].as_f64().unwrap() <= spread[1].as_f64().unwrap(),
                "{r}"
            );
            assert!(r["samples"].as_u64().unwrap() > 0, "{r}");
            assert!(
                ["lower", "higher"].contains(&r["better"].as_str().unwrap()),
                "{r}"
            );
        }
        assert!(
            md.contains(&format!("| {} | {} |", want.backend, want.peer)),
            "{md}"
        );
        assert!(html.contains(want.peer), "index.html lacks {}", want.peer);
    }
    // Readers beside dlock's readers: measured where a reader's grant has the metric, `n/a`
    // with the reason where it has not (no handoff or failover between readers).
    for want in dlock_compare::peers::MULTI_PEERS
        .iter()
        .filter(|p| p.backend == "etcd")
    {
        let of_peer: Vec<&Value> = rows
            .iter()
            .filter(|r| r["backend"] == want.backend && r["peer"] == want.peer)
            .collect();
        for (m, _, _) in dlock_compare::peers::METRICS {
            let r = of_peer
                .iter()
                .find(|r| r["metric"] == *m)
                .unwrap_or_else(|| panic!("{}: no {m} row in {of_peer:#?}", want.peer));
            let na = ["handoff_p50", "failover_sigkill"].contains(m);
            assert_eq!(r["status"], if na { "n/a" } else { "measured" }, "{r}");
            assert_eq!(r["dlock_options"], "--shared", "{r}");
            if na {
                assert!(!r["reason"].as_str().unwrap_or("").is_empty(), "{r}");
            } else {
                assert!(r["ratio"].as_f64().is_some_and(|x| x > 0.0), "{r}");
            }
        }
        assert!(
            md.contains(&format!("{} (dlock peer --shared)", want.peer)),
            "{md}"
        );
    }
    assert!(md.contains("## dlock beside the peer libraries"), "{md}");
}

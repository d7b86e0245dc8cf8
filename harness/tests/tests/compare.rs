//! `dlock compare --quick` on PostgreSQL and Redis: the report has every cell with the
//! documented fields, and the numbers in comparison.md are the ones in comparison.json; a
//! peer library's holders (one per backend with `--quick`) have a row of their own. MariaDB's
//! row on its own.

use std::process::{Command, Stdio};

use serde_json::Value;

const SCENARIOS: [&str; 10] = [
    "clean_handoff",
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "connection_reset",
    "server_restart",
    "latency",
    "quorum_loss",
    "primary_failover",
    "clock_skew",
];

/// The scenarios peer holders go through.
const PEER_SCENARIOS: [&str; 5] = [
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "connection_reset",
    "server_restart",
];

const CELL_FIELDS: [&str; 12] = [
    "library",
    "never_learned",
    "overlap_observed",
    "stale_write_rejected",
    "failover_ms",
    "holder_learned_before_handoff",
    "learned_before_handoff_ms",
    "learned_gap_ms",
    "not_freed",
    "ttl_ms",
    "notes",
    "status",
];

/// The cells of the first markdown table after `heading`: backend → column → text.
fn md_table(md: &str, heading: &str) -> Vec<(String, Vec<(String, String)>)> {
    let start = md.find(heading).unwrap_or_else(|| panic!("no {heading:?}"));
    let mut lines = md[start..].lines().skip_while(|l| !l.starts_with('|'));
    let header: Vec<String> = split_row(lines.next().expect("table header"));
    lines.next(); // |---|
    let mut rows = Vec::new();
    for l in lines.take_while(|l| l.starts_with('|')) {
        let cells = split_row(l);
        let pairs = header[1..]
            .iter()
            .cloned()
            .zip(cells[1..].iter().cloned())
            .collect();
        rows.push((cells[0].clone(), pairs));
    }
    rows
}

fn split_row(l: &str) -> Vec<String> {
    l.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// Whether `text` holds the TLS benchmark's password: `bench-` followed by the hex of a
/// random u64 (lock names start `bench-` too, but go on with a word).
fn carries_bench_password(text: &str) -> bool {
    text.match_indices("bench-").any(|(i, m)| {
        let rest = &text[i + m.len()..];
        let hex = rest.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        let next = rest[hex..].chars().next();
        hex >= 8 && !next.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[test]
fn the_password_check_tells_a_password_from_a_lock_name() {
    assert!(carries_bench_password(
        "redis://locker:bench-9f3a0c4d2e1b77aa@x"
    ));
    assert!(carries_bench_password("password bench-00ff00ff00ff."));
    assert!(!carries_bench_password(
        "lock bench-tls-4242 and bench-floor-1a2b3c4d5e"
    ));
    assert!(!carries_bench_password("bench-deadbeefcafe1234x"));
}

#[test]
fn compare_quick_writes_a_consistent_report() {
    let out = std::env::temp_dir().join(format!("dlock-compare-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "compare",
            "--quick",
            "--backends",
            "postgres,redis",
            // The peers section has its own test (compare_peers.rs).
            "--only",
            "scenarios,bench",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run dlock compare");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(0), "dlock compare failed:\n{said}");
    // Nor may what the run printed (its log and progress lines).
    assert!(
        !carries_bench_password(&said),
        "dlock compare printed a password: {said}"
    );

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json"),
    )
    .expect("comparison.json is JSON");
    let md = std::fs::read_to_string(out.join("comparison.md")).expect("comparison.md");
    // The TLS benchmark's servers take a password made for the run (`bench-<hex>`): no file
    // of the report may carry it (URLs are redacted to `user:***@`).
    for f in [
        "comparison.json",
        "comparison.md",
        "index.html",
        "choosing.md",
    ] {
        let text = std::fs::read_to_string(out.join(f)).expect(f);
        assert!(
            !text.contains(":bench-") && !carries_bench_password(&text),
            "{f} carries a password: {text}"
        );
    }
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    let choosing = std::fs::read_to_string(out.join("choosing.md")).expect("choosing.md");
    let _ = std::fs::remove_dir_all(&out);

    // The README's table: a row per backend and the run's conditions.
    assert!(
        choosing.contains("| postgres | yes, with `fencing=table` |")
            && choosing.contains("| redis | yes |"),
        "{choosing}"
    );
    assert!(choosing.contains("repetition(s) per cell"), "{choosing}");
    // The safety table names a verdict in each cell (clean_handoff is safe everywhere).
    assert!(html.contains("<b>safe</b>"), "{html}");

    // The page is self-contained: inline SVG, nothing fetched.
    assert!(html.contains("<svg") && html.contains("</html>"), "{html}");
    assert!(
        !html.contains("src=\"http") && !html.contains("<script"),
        "{html}"
    );

    // Shape.
    let backends: Vec<&str> = json["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().expect("backend name"))
        .collect();
    assert_eq!(backends, ["postgres", "redis"]);
    assert_eq!(json["benchmark_failures"], Value::Array(vec![]));
    let benches = json["benchmarks"].as_array().expect("benchmarks");
    for b in &backends {
        let entry = |metric: &str| {
            benches
                .iter()
                .find(|e| e["backend"] == *b && e["metric"] == metric)
                .unwrap_or_else(|| panic!("no benchmark {b} {metric}: {benches:?}"))
        };
        let p50 = entry("acquire_release_p50");
        assert_eq!(p50["unit"], "us", "{p50}");
        let (value, floor) = (p50["value"].as_f64(), p50["floor"].as_f64());
        assert!(value.is_some_and(|v| v > 0.0), "{p50}");
        assert!(floor.is_some_and(|v| v > 0.0), "{p50}");
        // The table shows the same number as the JSON.
        assert!(
            md.contains(&format!("{:.0} ({:.0}, ", value.unwrap(), floor.unwrap())),
            "{md}"
        );
        // Shared and permit acquire + release beside their own floors (both backends have
        // both modes).
        for metric in ["shared_acquire_release_p50", "permit_acquire_release_p50"] {
            let e = entry(metric);
            assert!(e["value"].as_f64().is_some_and(|v| v > 0.0), "{e}");
            assert!(e["floor"].as_f64().is_some_and(|v| v > 0.0), "{e}");
            assert!(
                e["notes"].as_str().is_some_and(|n| n.contains("floor:")),
                "{e}"
            );
        }
        // What TLS costs on the same server: a floor (plain text) and a value, both > 0.
        let tls = entry("acquire_release_tls_p50");
        assert!(tls["value"].as_f64().is_some_and(|v| v > 0.0), "{tls}");
        assert!(tls["floor"].as_f64().is_some_and(|v| v > 0.0), "{tls}");
        for (metric, unit) in [
            ("handoff_p50", "us"),
            ("throughput_64_tasks", "ops/s"),
            ("hold_many_seconds", "s"),
            ("hold_many_connections", "connections"),
        ] {
            let e = entry(metric);
            assert_eq!(e["unit"], unit, "{e}");
            assert!(e["value"].as_f64().is_some_and(|v| v > 0.0), "{e}");
        }
    }
    // The targets section judges every backend's latency against its floor, and PostgreSQL's
    // SIGKILL failover against 100 ms.
    assert!(md.contains("## Targets"), "{md}");
    for b in &backends {
        assert!(
            md.contains(&format!(
                "| {b} | acquire + release p50 ≤ 1.10× the raw floor |"
            )),
            "{md}"
        );
    }
    assert!(
        md.contains("| postgres | SIGKILL failover < 100 ms |"),
        "{md}"
    );
    // One lock session holds all of PostgreSQL's locks (beside it, its session watch: a
    // connection that only reads, so the end of the server's connections is seen at once);
    // Redis multiplexes one connection.
    for b in &backends {
        let c = benches
            .iter()
            .find(|e| e["backend"] == *b && e["metric"] == "hold_many_connections")
            .unwrap();
        let expected = if *b == "postgres" { 2.0 } else { 1.0 };
        assert_eq!(c["value"], expected, "{c}");
    }
    let all_cells = json["scenarios"].as_array().expect("scenarios");
    // dlock's own exclusive-lock cells: every scenario of every backend.
    let cells: Vec<&Value> = all_cells
        .iter()
        .filter(|c| c["library"].is_null() && c["workload"].is_null())
        .collect();
    assert_eq!(cells.len(), 2 * SCENARIOS.len(), "every cell is present");
    for b in &backends {
        for s in SCENARIOS {
            let c = cells
                .iter()
                .find(|c| c["backend"] == *b && c["scenario"] == s)
                .unwrap_or_else(|| panic!("no cell {b} × {s}"));
            for f in CELL_FIELDS {
                assert!(c.get(f).is_some(), "{b} × {s} lacks {f}: {c}");
            }
            let status = c["status"].as_str().unwrap();
            assert!(
                ["measured", "not_applicable", "not_measured"].contains(&status),
                "{b} × {s}: {status} ({})",
                c["reason"]
            );
            if status != "measured" {
                // Said aloud: a cell that could not be measured here (e.g. no root for the
                // network namespace) must not pass unnoticed.
                eprintln!("{b} × {s}: {status}: {}", c["reason"]);
                assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
                assert!(c["failover_ms"].is_null(), "{c}");
                continue;
            }
            assert_eq!(c["repetitions"], 1, "{c}");
            assert!(c["overlap_observed"].is_boolean(), "{c}");
            // A lock that did not move says who had it: kept by the live holder or stranded.
            if c["failover_ms"].is_null() {
                let n = &c["not_freed"];
                let total = n["kept_by_live_holder"].as_u64().unwrap_or(0)
                    + n["stranded"].as_u64().unwrap_or(0);
                assert_eq!(total, 1, "{b} × {s}: no failover and no explanation: {c}");
            }
            if let Some(f) = c["failover_ms"].as_object() {
                for k in ["median", "min", "max"] {
                    assert!(f[k].as_f64().is_some_and(|v| v >= 0.0), "{c}");
                }
                // The timeline: the faulty holder entered before the fault, the next holder's
                // grant is at the failover time.
                let sections = c["timeline"]["sections"].as_array().expect("timeline");
                let first = |h: u64| sections.iter().find(|x| x["holder"] == h);
                let a = first(0).expect("the faulty holder's section");
                assert!(a["from_ms"].as_i64().is_some_and(|t| t <= 0), "{c}");
                let b = first(1)
                    .or_else(|| first(2))
                    .expect("the next holder's section");
                let median = f["median"].as_f64().unwrap();
                assert!(
                    (b["from_ms"].as_i64().unwrap() as f64 - median).abs() <= 1.0,
                    "{c}"
                );
            }
        }
    }
    let cell = |b: &str, s: &str| {
        *cells
            .iter()
            .find(|c| c["backend"] == b && c["scenario"] == s)
            .unwrap()
    };
    multi_rows(all_cells, &md, &backends);
    let peer_rows = peer_rows(all_cells, &md);
    // What the two backends are known to do: a clean hand-over never overlaps, a killed
    // PostgreSQL holder's lock is freed by its connection closing, both fence (PostgreSQL
    // through the fencing table the comparison turns on).
    for b in &backends {
        for s in ["clean_handoff", "holder_killed"] {
            assert_eq!(cell(b, s)["overlap_observed"], false, "{b} × {s}");
            assert!(cell(b, s)["failover_ms"]["median"].is_number(), "{b} × {s}");
        }
    }
    for b in &backends {
        let c = cell(b, "holder_killed");
        assert_eq!(c["stale_write_rejected"], true, "{c}");
        assert_eq!(c["no_token"], false, "{c}");
    }
    assert_eq!(cell("redis", "holder_killed")["ttl_ms"], 2000);
    assert!(cell("postgres", "holder_killed")["ttl_ms"].is_null());
    // Single servers have no quorum; the slow link is measured on both; a skewed wall clock
    // changes nothing for locks whose leases run on monotonic or server clocks.
    for b in &backends {
        assert_eq!(cell(b, "quorum_loss")["status"], "not_applicable", "{b}");
        let latency = cell(b, "latency");
        assert_eq!(latency["status"], "measured", "{b}: {latency}");
        assert!(
            latency["failover_ms"]["median"].is_number(),
            "{b}: {latency}"
        );
        let skew = cell(b, "clock_skew");
        if skew["status"] == "not_measured" {
            // Only when libfaketime is missing, and then the reason says so.
            assert!(
                skew["reason"].as_str().unwrap().contains("libfaketime"),
                "{skew}"
            );
            continue;
        }
        assert_eq!(skew["status"], "measured", "{b}: {skew}");
        assert_eq!(skew["overlap_observed"], false, "{b}: {skew}");
        assert!(skew["failover_ms"]["median"].is_number(), "{b}: {skew}");
        let notes = skew["notes"].as_array().unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.as_str().unwrap().contains("holder +1.0 h, waiter -1.0 h")),
            "the skew was not verified: {skew}"
        );
    }
    if cell("redis", "clock_skew")["status"] == "measured" {
        // The killed +1 h holder's late write carries a lower token than the new grant.
        assert_eq!(cell("redis", "clock_skew")["stale_write_rejected"], true);
    }

    // The markdown's failover table carries the JSON's medians, a row per backend and one
    // under it per peer library.
    // Each backend also has its `· shared` and `· semaphore` rows.
    let table = md_table(&md, "## Failover time");
    assert_eq!(table.len(), 2 + 2 * 2 + peer_rows.len(), "{md}");
    let by_label = |label: &str, scenario: &str| -> Option<&Value> {
        if let Some((backend, w)) = label
            .split_once(" · ")
            .filter(|(_, w)| ["shared", "semaphore"].contains(w))
        {
            return all_cells.iter().find(|c| {
                c["scenario"] == scenario && c["backend"] == backend && c["workload"] == w
            });
        }
        match peer_rows.iter().find(|(l, _)| l == label) {
            Some((_, name)) => all_cells.iter().find(|c| {
                c["scenario"] == scenario
                    && c["library"]["name"] == name.as_str()
                    && label.starts_with(c["backend"].as_str().unwrap())
            }),
            None => Some(cell(label, scenario)),
        }
    };
    let mut compared = 0;
    for (label, row) in &table {
        for (scenario, text) in row {
            let Some(c) = by_label(label, scenario) else {
                // A peer or multi-holder row in a scenario it does not go through.
                assert_eq!(text, "—", "{label} × {scenario}");
                continue;
            };
            let backend = label;
            match c["failover_ms"]["median"].as_f64() {
                Some(m) => {
                    assert_eq!(text, &format!("{m:.0}"), "{backend} × {scenario}");
                    compared += 1;
                }
                None => assert!(
                    !text.chars().next().is_some_and(|ch| ch.is_ascii_digit()),
                    "{backend} × {scenario}: {text:?} but no number in the JSON"
                ),
            }
        }
    }
    assert!(compared >= 4, "{md}");
    // The safety table carries the JSON's flags.
    for (backend, row) in md_table(&md, "## Safety") {
        for (scenario, text) in row {
            // A peer row's scenario it does not go through, or a cell not measured here.
            let Some(c) = by_label(&backend, &scenario).filter(|c| c["status"] == "measured")
            else {
                continue;
            };
            let word = |v: &Value| match v.as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "—",
            };
            assert!(
                text.contains(&format!("overlap {}", word(&c["overlap_observed"]))),
                "{backend} × {scenario}: {text}"
            );
            assert!(
                text.contains(&format!(
                    "stale write rejected {}",
                    word(&c["stale_write_rejected"])
                )),
                "{backend} × {scenario}: {text}"
            );
        }
    }
}

/// The shared-lock and semaphore rows (`postgres · shared`, …): the four scenarios they go
/// through, each measured (or not measured with its reason), the lock moving on after a
/// killed holder with no overlap, a semaphore's stale write fenced, a reader's unfenced (no
/// token); and each row in the markdown.
fn multi_rows(all_cells: &[Value], md: &str, backends: &[&str]) {
    for b in backends {
        for w in ["shared", "semaphore"] {
            let row: Vec<&Value> = all_cells
                .iter()
                .filter(|c| c["backend"] == *b && c["workload"] == w)
                .collect();
            let scenarios: Vec<&str> = row
                .iter()
                .map(|c| c["scenario"].as_str().unwrap())
                .collect();
            assert_eq!(
                scenarios,
                [
                    "holder_killed",
                    "holder_paused",
                    "holder_partitioned",
                    "server_restart"
                ],
                "{b} · {w}"
            );
            assert!(
                md.contains(&format!("| {b} · {w} |")),
                "{b} · {w} not in the markdown"
            );
            for c in &row {
                if c["status"] != "measured" {
                    assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
                    continue;
                }
                if c["failover_ms"].is_null() {
                    let n = &c["not_freed"];
                    let total = n["kept_by_live_holder"].as_u64().unwrap_or(0)
                        + n["stranded"].as_u64().unwrap_or(0);
                    assert_eq!(total, 1, "{b} · {w}: no failover and no explanation: {c}");
                }
            }
            let killed = row[0];
            assert_eq!(killed["status"], "measured", "{killed}");
            assert_eq!(killed["overlap_observed"], false, "{killed}");
            assert!(killed["failover_ms"]["median"].is_number(), "{killed}");
            if w == "shared" {
                assert_eq!(killed["no_token"], true, "a reader has no token: {killed}");
            } else {
                assert_eq!(killed["stale_write_rejected"], true, "{killed}");
            }
        }
    }
}

/// The peer libraries' rows: one per backend (`--quick`), every cell of PEER_SCENARIOS
/// present, measured (where the harness is installed: `make test` installs them) or
/// `not_measured` with the reason; a measured library has its version, and its subject's
/// SIGKILL a failover. Returns each row's label in comparison.md and its library's name.
fn peer_rows(cells: &[Value], md: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for (backend, peer) in [("postgres", "jdbc-advisory"), ("redis", "redisson")] {
        let of: Vec<&Value> = cells
            .iter()
            .filter(|c| c["backend"] == backend && !c["library"].is_null())
            .collect();
        assert!(
            of.iter().all(|c| c["library"]["name"] == peer),
            "--quick keeps one peer per backend, {peer} on {backend}: {of:#?}"
        );
        let scenarios: Vec<&str> = of.iter().map(|c| c["scenario"].as_str().unwrap()).collect();
        assert_eq!(scenarios, PEER_SCENARIOS, "{backend} · {peer}");
        let version = of[0]["library"]["version"].as_str().map(str::to_string);
        for c in &of {
            assert_eq!(c["library"]["version"].as_str(), version.as_deref(), "{c}");
            match c["status"].as_str().unwrap() {
                "measured" => {
                    assert!(version.as_deref().is_some_and(|v| !v.is_empty()), "{c}");
                    assert_eq!(c["repetitions"], 1, "{c}");
                    assert!(c["overlap_observed"].is_boolean(), "{c}");
                }
                "not_measured" => {
                    eprintln!(
                        "{backend} · {peer} × {}: not_measured: {}",
                        c["scenario"], c["reason"]
                    );
                    assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
                    assert!(c["failover_ms"].is_null(), "{c}");
                }
                other => panic!("{backend} · {peer} × {}: {other}: {c}", c["scenario"]),
            }
        }
        let killed = of
            .iter()
            .find(|c| c["scenario"] == "holder_killed")
            .unwrap();
        if killed["status"] == "measured" {
            // The killed holder's session ends (the seed's advisory lock) or its lease runs
            // out (Redisson: the watchdog's timeout = the ttl) and the waiter gets the lock;
            // no token stops the dead holder's late write.
            assert!(
                killed["failover_ms"]["median"]
                    .as_f64()
                    .is_some_and(|f| f > 0.0),
                "{killed}"
            );
            assert_eq!(killed["overlap_observed"], false, "{killed}");
            assert_eq!(killed["no_token"], true, "{killed}");
            assert_eq!(killed["stale_write_rejected"], false, "{killed}");
        }
        // Under the backend's own row and its shared-lock and semaphore rows, labelled with
        // the library and its version (as its harness gave it, without the library's name in
        // front).
        let own = md
            .find(&format!("\n| {backend} | "))
            .expect("the backend's row");
        let label = md[own + 1..]
            .lines()
            .skip(1)
            .map(|l| split_row(l)[0].clone())
            .find(|l| ![" · shared", " · semaphore"].iter().any(|w| l.ends_with(w)))
            .expect("a row under the backend's");
        assert!(
            label.starts_with(&format!("{backend} · {peer}")),
            "{label}: {md}"
        );
        if let Some(v) = &version {
            let shown = label.rsplit(' ').next().unwrap();
            assert!(v.ends_with(shown) && shown.len() > 1, "{label} for {v}");
        }
        rows.push((label, peer.to_string()));
    }
    rows
}

/// MariaDB's row (`--quick --backends mariadb`): every cell measured, or `n/a` with its
/// reason (one server: no quorum); a killed holder's lock moves at once; a partitioned
/// holder learns before the server's `wait_timeout` frees its lock; after a server restart
/// and a primary failover the holder learns first (the session watch); no undocumented
/// overlap; the benchmarks beside the raw `GET_LOCK` floor.
#[test]
fn compare_quick_on_mariadb() {
    let out = std::env::temp_dir().join(format!("dlock-compare-mariadb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "compare",
            "--quick",
            "--backends",
            "mariadb",
            "--only",
            "scenarios,bench",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .expect("run dlock compare");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(run.status.code(), Some(0), "dlock compare failed:\n{said}");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json"),
    )
    .expect("comparison.json is JSON");
    let html = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    let choosing = std::fs::read_to_string(out.join("choosing.md")).expect("choosing.md");
    let _ = std::fs::remove_dir_all(&out);

    let cells = json["scenarios"].as_array().expect("scenarios");
    for s in SCENARIOS {
        let c = cells
            .iter()
            .find(|c| c["backend"] == "mariadb" && c["scenario"] == s)
            .unwrap_or_else(|| panic!("no mariadb × {s}"));
        match s {
            "quorum_loss" => {
                assert_eq!(c["status"], "not_applicable", "{c}");
                assert!(c["reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
            }
            _ => assert_eq!(c["status"], "measured", "{c}"),
        }
    }
    let cell = |s: &str| {
        cells
            .iter()
            .find(|c| c["backend"] == "mariadb" && c["scenario"] == s)
            .unwrap()
    };
    let killed = cell("holder_killed");
    assert!(
        killed["failover_ms"]["median"]
            .as_f64()
            .is_some_and(|f| f < 1000.0),
        "{killed}"
    );
    let partitioned = cell("holder_partitioned");
    assert_eq!(
        partitioned["holder_learned_before_handoff"], true,
        "{partitioned}"
    );
    for s in ["server_restart", "primary_failover"] {
        let c = cell(s);
        assert_eq!(c["overlap_observed"], false, "{c}");
        assert_eq!(c["holder_learned_before_handoff"], true, "{c}");
    }
    assert!(!html.contains("undocumented overlap"), "{html}");
    assert!(
        choosing.contains("| mariadb | yes, with `fencing=table` |"),
        "{choosing}"
    );
    let benches = json["benchmarks"].as_array().expect("benchmarks");
    let p50 = benches
        .iter()
        .find(|e| e["backend"] == "mariadb" && e["metric"] == "acquire_release_p50")
        .expect("acquire_release_p50");
    assert!(p50["value"].as_f64().is_some_and(|v| v > 0.0), "{p50}");
    assert!(p50["floor"].as_f64().is_some_and(|v| v > 0.0), "{p50}");
    // Locks taken without waiting share one session; the session watch is the other
    // connection.
    let conns = benches
        .iter()
        .find(|e| e["backend"] == "mariadb" && e["metric"] == "hold_many_connections")
        .expect("hold_many_connections");
    assert_eq!(conns["value"].as_f64(), Some(2.0), "{conns}");
}

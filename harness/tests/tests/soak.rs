//! `dlock compare --soak` on each backend for 30 s (its own servers, 16 holders, random
//! faults): the run exits 0, prints its seed first, and soak.json shows real work (enough
//! grants, at least one fault) and no fencing violation where the backend has tokens. And a
//! seed replays the same fault schedule.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Each backend's soak in `make test`.
const SOAK: &str = "30s";

/// Grants a 30 s soak must reach at least (measured on 2 cores: 75–180, see the README).
const MIN_ACQUISITIONS: u64 = 20;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    json: Value,
}

fn soak(tag: &str, backend: &str, duration: &str, seed: Option<u64>) -> Run {
    let out: PathBuf =
        std::env::temp_dir().join(format!("dlock-soak-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"));
    cmd.args([
        "compare",
        "--soak",
        duration,
        "--backends",
        backend,
        "--out",
    ])
    .arg(&out);
    if let Some(s) = seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run dlock compare --soak");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let json = std::fs::read_to_string(out.join("soak.json"))
        .map(|s| serde_json::from_str(&s).expect("soak.json parses"))
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_dir_all(&out);
    Run {
        code: o.status.code(),
        stdout,
        stderr,
        json,
    }
}

/// A 30 s soak of `backend`; `fenced`: whether its grants must carry tokens (`None`: either).
fn soak_backend(backend: &str, fenced: Option<bool>) {
    let r = soak(backend, backend, SOAK, None);
    let ctx = format!("stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "soak of {backend} failed\n{ctx}");
    let first = r.stdout.lines().next().unwrap_or("");
    let seed: u64 = first
        .strip_prefix("[soak] seed ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the seed is not printed first: {first:?}\n{ctx}"));
    assert_eq!(r.json["seed"], seed, "{ctx}");
    let b = &r.json["backends"][0];
    assert_eq!(b["backend"], backend, "{ctx}");
    assert!(b["error"].is_null(), "{ctx}");
    let f = &b["findings"];
    let acquisitions = f["acquisitions"].as_u64().unwrap_or(0);
    assert!(
        acquisitions >= MIN_ACQUISITIONS,
        "{acquisitions} acquisitions\n{ctx}"
    );
    let faults = b["applied"].as_array().map_or(0, |a| a.len());
    assert!(faults >= 1, "no fault applied\n{ctx}");
    if let Some(fenced) = fenced {
        assert_eq!(f["fenced"], fenced, "{ctx}");
    }
    assert_eq!(
        f["violations"].as_array().map(|v| v.len()),
        Some(0),
        "{ctx}"
    );
}

#[test]
fn soak_postgres() {
    soak_backend("postgres", Some(true));
}

#[test]
fn soak_redis() {
    soak_backend("redis", Some(true));
}

#[test]
fn soak_redlock() {
    soak_backend("redlock", Some(false));
}

#[test]
fn soak_etcd() {
    soak_backend("etcd", Some(true));
}

#[test]
fn soak_zookeeper() {
    soak_backend("zookeeper", Some(true));
}

#[test]
fn soak_shedlock_postgres() {
    soak_backend("shedlock-postgres", Some(true));
}

/// Fenced only where this build's ShedLock-Redis accepts `?fencing=on`.
#[test]
fn soak_shedlock_redis() {
    soak_backend("shedlock-redis", None);
}

/// The same seed twice: the same planned schedule, and the faults applied are its first
/// ones in order (same kinds, same picks); which slot a pick lands on depends on timing.
#[test]
fn a_seed_replays_the_fault_schedule() {
    let runs: Vec<Run> = (0..2)
        .map(|i| soak(&format!("replay{i}"), "redis", "8s", Some(4242)))
        .collect();
    for r in &runs {
        assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
        assert!(r.stdout.starts_with("[soak] seed 4242\n"), "{}", r.stdout);
    }
    let b = |i: usize| &runs[i].json["backends"][0];
    let schedule = b(0)["schedule"].as_array().expect("schedule").clone();
    assert!(!schedule.is_empty());
    assert_eq!(schedule, *b(1)["schedule"].as_array().expect("schedule"));
    for i in 0..2 {
        let applied = b(i)["applied"].as_array().expect("applied");
        assert!(!applied.is_empty(), "run {i} applied no fault");
        for (n, a) in applied.iter().enumerate() {
            assert_eq!(a["n"], n, "run {i}: {a}");
            assert_eq!(a["kind"], schedule[n]["kind"], "run {i}: {a}");
            assert_eq!(a["pick"], schedule[n]["pick"], "run {i}: {a}");
        }
    }
}

//! Runs `examples/purge_job.rs` (built by `cargo test` with the other targets) against a real
//! PostgreSQL and checks its verdict.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn purge_job_example_runs_once_per_tick() {
    // target/<profile>/dlock → target/<profile>/examples/purge_job
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dlock-under-test"));
    let example = bin.parent().unwrap().join("examples").join("purge_job");
    assert!(
        example.is_file(),
        "{} is missing: `cargo test -p dlock-server-tests` builds it",
        example.display()
    );
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tick 1: 1 pod ran the purge, 2 skipped"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tick 2: 1 pod ran the purge, 2 skipped"),
        "{stdout}"
    );
    assert!(stdout.contains("ok: exactly one pod purged"), "{stdout}");
}

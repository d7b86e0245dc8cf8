//! `dlock compare`'s `holder_paused` when something else kills the paused holder: the
//! repetition is void and runs again, instead of being recorded as a live holder that "reported
//! no loss" while the next holder was granted (an overlap that never happened: the dead
//! holder's sessions ended, so the server rightly gave the lock on). Seen once in a full
//! compare run on a loaded machine, where another process SIGKILLed the paused holder.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The state letter and parent pid of `/proc/<pid>/stat`.
fn state_and_ppid(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let mut rest = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// A stopped (SIGSTOPped) child of `parent`, if there is one now.
fn stopped_child(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| matches!(state_and_ppid(pid), Some(('T', p)) if p == parent))
}

#[test]
fn a_paused_holder_killed_by_someone_else_voids_the_repetition() {
    let out = std::env::temp_dir().join(format!("dlock-compare-void-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut compare = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "compare",
            "--backends",
            "postgres",
            "--scenarios",
            "holder_paused",
            "--only",
            "scenarios",
            // dlock's holder is the one this test pauses.
            "--no-peer-holders",
            "--repeat",
            "1",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .spawn()
        .expect("run dlock compare");
    // The subject is the only holder the scenario stops: kill the first one seen stopped,
    // as the unknown process did.
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        if let Some(pid) = stopped_child(compare.id()) {
            break pid;
        }
        if compare.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
            let _ = compare.kill();
            panic!("no paused holder appeared");
        }
        // Polling /proc: a process's stop is not an event another process can wait for.
        std::thread::sleep(Duration::from_millis(2));
    };
    // SAFETY: kill(2) on a stopped `dlock hold` child of the compare run we started.
    assert_eq!(
        unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
        0
    );
    let status = compare.wait().expect("wait for dlock compare");
    assert_eq!(status.code(), Some(0), "dlock compare failed");

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("comparison.json")).expect("comparison.json"),
    )
    .expect("comparison.json is JSON");
    let _ = std::fs::remove_dir_all(&out);
    let cell = json["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|c| c["backend"] == "postgres" && c["scenario"] == "holder_paused")
        .expect("the postgres × holder_paused cell")
        .clone();
    let notes = cell["notes"].to_string();
    assert_eq!(cell["status"], "measured", "{cell:#}");
    assert_eq!(cell["repetitions"], 1, "{cell:#}");
    // The run again: the paused holder kept its lock (PostgreSQL has no lease).
    assert_eq!(cell["overlap_observed"], false, "{cell:#}");
    assert!(
        notes.contains(&format!(
            "the paused holder (pid {victim}) died during the pause"
        )) && notes.contains("SIGKILL")
            && notes.contains("void and run again"),
        "{cell:#}"
    );
}

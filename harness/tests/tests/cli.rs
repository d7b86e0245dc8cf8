//! The `dlock` binary, run as a user would run it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dlock")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_exits_with_the_commands_exit_code() {
    assert_eq!(
        dlock(&["run", "memory://", "job", "--", "true"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        dlock(&["run", "memory://", "job", "--", "sh", "-c", "exit 3"])
            .status
            .code(),
        Some(3)
    );
}

#[test]
fn run_puts_name_and_fencing_token_in_the_environment() {
    let o = dlock(&[
        "run",
        "memory://",
        "nightly-purge",
        "--",
        "sh",
        "-c",
        "echo \"$DLOCK_LOCK_NAME $DLOCK_FENCING_TOKEN\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "nightly-purge 1");
}

#[test]
fn run_with_permits_or_shared_puts_slot_and_token_in_the_environment() {
    let o = dlock(&[
        "run",
        "--permits",
        "2",
        "memory://",
        "reports",
        "--",
        "sh",
        "-c",
        "echo \"$DLOCK_PERMIT_SLOT $DLOCK_FENCING_TOKEN\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0 1");
    // A reader has no token (readers do not write) and no slot.
    let o = dlock(&[
        "run",
        "--shared",
        "memory://",
        "reports",
        "--",
        "sh",
        "-c",
        "echo \"[${DLOCK_PERMIT_SLOT-none}] [${DLOCK_FENCING_TOKEN-none}]\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "[none] [none]");
}

#[test]
fn invalid_arguments_exit_64_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--ttl", "0s", "memory://", "job", "--", "true"],
            "ttl",
        ),
        (&["run", "memory://", "", "--", "true"], "name is empty"),
        (
            &["run", "nosuchscheme://x", "job", "--", "true"],
            "unknown URL scheme",
        ),
        (&["run", "not a url", "job", "--", "true"], "not a lock URL"),
        (
            &["run", "--wait", "soon", "memory://", "job", "--", "true"],
            "not a duration",
        ),
        (
            &[
                "run",
                "--ttl",
                "1s",
                "--at-least",
                "2s",
                "memory://",
                "job",
                "--",
                "true",
            ],
            "at_least",
        ),
        (&["hold", "--ttl", "0s", "memory://", "job"], "ttl"),
        (&["hold", "--permits", "0", "memory://", "job"], "permits"),
        (
            &["hold", "--permits", "1025", "memory://", "job"],
            "permits",
        ),
        (
            &["hold", "--shared", "--permits", "2", "memory://", "job"],
            "cannot be used with",
        ),
        (&["run", "memory://", "job"], "COMMAND"),
    ];
    for (args, needle) in cases {
        let o = dlock(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn credentials_never_reach_the_error_output() {
    let o = dlock(&[
        "run",
        "postgres://app:hunter2@db.invalid/prod",
        "job",
        "--",
        "true",
    ]);
    assert_ne!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("app:***@"), "{err}");
}

#[test]
fn missing_command_exits_127() {
    let o = dlock(&["run", "memory://", "job", "--", "/nonexistent/cmd"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
}

#[test]
fn backends_lists_memory_with_its_capabilities() {
    let o = dlock(&["backends"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let memory = out.lines().find(|l| l.starts_with("memory")).expect(&out);
    assert!(
        memory.contains("fencing") && memory.contains("shared"),
        "{memory}"
    );
    assert!(out.lines().any(|l| l.starts_with("postgres")), "{out}");
}

/// `dlock backends --json` is one JSON document with the fields dlock-cli's README lists;
/// this build has every backend, so every scheme is available with its feature.
#[test]
fn backends_json_is_one_document_with_the_documented_fields() {
    let o = dlock(&["backends", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert!(doc["dlock_version"].is_string(), "{doc}");
    let schemes = doc["schemes"].as_array().expect("schemes");
    for s in schemes {
        assert_eq!(s["status"], "available", "{s}");
        assert!(s["capabilities"]["fencing"].is_boolean(), "{s}");
        assert!(
            s["capabilities"]["min_ttl_ms"].is_u64() || s["capabilities"]["min_ttl_ms"].is_null(),
            "{s}"
        );
    }
    let find = |name: &str| schemes.iter().find(|s| s["scheme"] == name).cloned();
    assert_eq!(find("memory").unwrap()["feature"], serde_json::Value::Null);
    assert_eq!(find("postgres").unwrap()["feature"], "postgres");
    assert_eq!(find("redlock").unwrap()["capabilities"]["fencing"], false);
    assert_eq!(find("zk").unwrap()["feature"], "zookeeper");
}

/// `dlock completions SHELL` prints a script for that shell and exits 0; an unknown shell is
/// a usage error.
#[test]
fn completions_print_a_script_per_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef dlock"),
        ("fish", "complete -c dlock"),
    ] {
        let o = dlock(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0), "{shell}: {}", stderr(&o));
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(
            script.contains(marker),
            "{shell}: no {marker:?} in\n{script}"
        );
    }
    assert_eq!(dlock(&["completions", "cmd.exe"]).status.code(), Some(64));
}

/// Help ends with examples, for dlock itself and each command.
#[test]
fn help_shows_examples() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["hold", "--help"],
        &["backends", "--help"],
        &["completions", "--help"],
        &["conformance", "--help"],
        &["servers", "up", "--help"],
    ] {
        let o = dlock(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("Examples:\n  "), "{args:?}: {help}");
    }
}

fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn hold_for_prints_acquired_then_released() {
    let start = Instant::now();
    let o = dlock(&["hold", "--for", "200ms", "--no-stdin", "memory://", "job"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(start.elapsed() >= Duration::from_millis(200));
    let ev = events(&o.stdout);
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["event"], "acquired");
    assert_eq!(ev[0]["token"], 1);
    assert!(ev[0]["t_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(ev[1]["event"], "released");
    assert_eq!(ev[1]["ours"], true);

    // With --wait on a free lock there is nothing to wait for: no `waiting` event.
    let o = dlock(&[
        "hold",
        "--wait",
        "5s",
        "--for",
        "50ms",
        "--no-stdin",
        "memory://",
        "job",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ev = events(&o.stdout);
    let kinds: Vec<&str> = ev.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["acquired", "released"], "{ev:?}");
}

#[test]
fn hold_releases_when_stdin_closes_or_on_sigterm() {
    for how in ["stdin", "sigterm"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
            .args(["hold", "memory://", "job"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(first["event"], "acquired");
        let mut stdin = child.stdin.take().unwrap();
        if how == "stdin" {
            stdin.flush().unwrap();
            drop(stdin);
        } else {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let second: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(second["event"], "released", "{how}");
        assert_eq!(child.wait().unwrap().code(), Some(0), "{how}");
    }
}

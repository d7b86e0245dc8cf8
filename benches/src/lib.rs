#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

// The percentile code and the measurements live in `conformance::bench`, which `dlock
// compare` uses for the short run in its report; the benches here are the long run.
pub use conformance::bench::{Samples, micros, once, report_vs_floor};

/// The environment variable `var` as a number, else `default`.
pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The runtime every bench measures on: tokio's multi-thread runtime with two workers, or,
/// with `DLOCK_BENCH_CURRENT_THREAD=1`, the current-thread runtime (no cross-thread
/// wake-ups, to tell the cost of task hand-offs from the cost of the work).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::env::var_os("DLOCK_BENCH_CURRENT_THREAD").is_some_and(|v| v != "0") {
        println!("runtime: current-thread (DLOCK_BENCH_CURRENT_THREAD)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
}

/// Unless `DLOCK_BENCH_PIN=0`, on a Linux machine with two or more CPUs: the server processes
/// `pids` (their threads, and their children — also the ones forked later, such as
/// PostgreSQL's backends, which inherit the postmaster's CPUs) on the last CPU, this process
/// on the others. That models a server on another machine: neither side's CPU time delays
/// the other, and the scheduler's placement no longer decides the result (on 2 cores it made
/// PostgreSQL's ratio jump between 0.96× and 1.40× from one round to the next). Uses
/// `taskset` (util-linux). Returns whether it pinned; says what it did either way.
pub fn pin_apart(pids: &[u32]) -> bool {
    if std::env::var_os("DLOCK_BENCH_PIN").is_some_and(|v| v == "0") {
        println!("pinning: off (DLOCK_BENCH_PIN=0)");
        return false;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || pids.is_empty() {
        println!(
            "pinning: skipped ({cpus} CPU(s), {} server process(es))",
            pids.len()
        );
        return false;
    }
    let server_cpu = (cpus - 1).to_string();
    let client_cpus = format!("0-{}", cpus - 2);
    let mut all = Vec::new();
    for &pid in pids {
        descendants(pid, &mut all);
    }
    let mut ok = taskset(&client_cpus, std::process::id());
    for &pid in &all {
        ok &= taskset(&server_cpu, pid);
    }
    println!(
        "pinning: server processes {all:?} on CPU {server_cpu}, this process on CPUs {client_cpus}{}",
        if ok {
            ""
        } else {
            " (some taskset calls failed)"
        }
    );
    ok
}

/// `pid` and every process below it.
fn descendants(pid: u32, out: &mut Vec<u32>) {
    out.push(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            descendants(child, out);
        }
    }
}

/// Every thread of `pid` onto `cpus`.
fn taskset(cpus: &str, pid: u32) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

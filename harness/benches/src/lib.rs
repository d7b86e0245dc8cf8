#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

// The percentile code and the measurements live in `dlock_compare::bench`, which `dlock
// compare` uses for the short run in its report; the benches here are the long run.
pub use dlock_compare::bench::{Samples, micros, once, pin_apart, report_vs_floor};

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

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

#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

// The percentile code and the measurements live in `conformance::bench`, which `dlock
// compare` uses for the short run in its report; the benches here are the long run.
pub use conformance::bench::{Samples, micros, report_vs_floor};

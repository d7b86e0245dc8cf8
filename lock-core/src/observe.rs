//! Metrics, through the `metrics` facade. Install any recorder (Prometheus, StatsD, …) in
//! the application to collect them; without one they cost next to nothing.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `dlock_acquired_total` | counter | `backend` |
//! | `dlock_acquire_failed_total` | counter | `backend`, `kind` |
//! | `dlock_wait_seconds` | histogram: time from asking to the grant | `backend` |
//! | `dlock_hold_seconds` | histogram: time from the grant to release or drop | `backend` |
//! | `dlock_renewals_total` | counter: confirmed lease extensions | `backend` |
//! | `dlock_lost_total` | counter: guards that turned `Lost` | `backend` |

use std::time::Duration;

use crate::error::ErrorKind;

pub(crate) fn acquired(backend: &'static str, waited: Duration) {
    metrics::counter!("dlock_acquired_total", "backend" => backend).increment(1);
    metrics::histogram!("dlock_wait_seconds", "backend" => backend).record(waited.as_secs_f64());
}

/// Counts a failed acquisition. Backends call this for errors they return from `acquire`.
pub fn acquire_failed(backend: &'static str, kind: ErrorKind) {
    metrics::counter!("dlock_acquire_failed_total", "backend" => backend, "kind" => kind.as_str())
        .increment(1);
}

pub(crate) fn released(backend: &'static str, held: Duration) {
    metrics::histogram!("dlock_hold_seconds", "backend" => backend).record(held.as_secs_f64());
}

pub(crate) fn renewed(backend: &'static str) {
    metrics::counter!("dlock_renewals_total", "backend" => backend).increment(1);
}

pub(crate) fn lost(backend: &'static str) {
    metrics::counter!("dlock_lost_total", "backend" => backend).increment(1);
}

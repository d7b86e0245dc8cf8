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

use std::future::Future;
use std::time::Duration;

use crate::backend::BoxFuture;
use crate::error::{ErrorKind, Result};
use crate::guard::Guard;
use crate::name::LockName;
use crate::options::LockOptions;

/// Wraps a backend's acquisition: an `acquire` tracing span (lock, backend, mode) and the
/// `dlock_acquire_failed_total` counter for every error it returns. Every backend's
/// [`Backend::acquire`](crate::Backend::acquire) goes through it, so spans and failure
/// counts are the same everywhere.
pub fn instrument_acquire<'a>(
    backend: &'static str,
    name: &LockName,
    opts: &LockOptions,
    acquisition: impl Future<Output = Result<Guard>> + Send + 'a,
) -> BoxFuture<'a, Result<Guard>> {
    let span = tracing::debug_span!("acquire", lock = %name, backend, mode = %opts.mode());
    Box::pin(tracing::Instrument::instrument(
        async move {
            let result = acquisition.await;
            if let Err(e) = &result {
                acquire_failed(backend, e.kind());
            }
            result
        },
        span,
    ))
}

pub(crate) fn acquired(backend: &'static str, waited: Duration) {
    metrics::counter!("dlock_acquired_total", "backend" => backend).increment(1);
    metrics::histogram!("dlock_wait_seconds", "backend" => backend).record(waited.as_secs_f64());
}

/// Counts a failed acquisition ([`instrument_acquire`] does it for every backend).
pub(crate) fn acquire_failed(backend: &'static str, kind: ErrorKind) {
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

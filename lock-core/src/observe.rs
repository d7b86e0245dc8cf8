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
    let counted = async move {
        let result = acquisition.await;
        if let Err(e) = &result {
            acquire_failed(backend, e.kind());
        }
        result
    };
    // A disabled span still costs its entry and exit at every poll: about 1 % of an
    // uncontended PostgreSQL acquire + release. No span unless a subscriber wants debug.
    if !spans_wanted() {
        return Box::pin(counted);
    }
    let span = tracing::debug_span!("acquire", lock = %name, backend, mode = %opts.mode());
    Box::pin(tracing::Instrument::instrument(counted, span))
}

/// Whether a tracing subscriber takes debug spans (the level of `acquire` and `release`).
pub(crate) fn spans_wanted() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

pub(crate) fn acquired(backend: &'static str, waited: Duration) {
    let keys = grant_keys(backend);
    metrics::with_recorder(|r| {
        r.register_counter(&keys.acquired, &METADATA).increment(1);
        r.register_histogram(&keys.wait, &METADATA)
            .record(waited.as_secs_f64());
    });
}

/// Counts a failed acquisition ([`instrument_acquire`] does it for every backend).
pub(crate) fn acquire_failed(backend: &'static str, kind: ErrorKind) {
    metrics::counter!("dlock_acquire_failed_total", "backend" => backend, "kind" => kind.as_str())
        .increment(1);
}

pub(crate) fn released(backend: &'static str, held: Duration) {
    let keys = grant_keys(backend);
    metrics::with_recorder(|r| {
        r.register_histogram(&keys.hold, &METADATA)
            .record(held.as_secs_f64());
    });
}

pub(crate) fn renewed(backend: &'static str) {
    metrics::counter!("dlock_renewals_total", "backend" => backend).increment(1);
}

pub(crate) fn lost(backend: &'static str) {
    metrics::counter!("dlock_lost_total", "backend" => backend).increment(1);
}

/// What the `metrics` macros would attach to the per-grant metrics.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The keys of the metrics every grant records, for one backend.
#[derive(Clone)]
struct GrantKeys {
    backend: &'static str,
    acquired: metrics::Key,
    wait: metrics::Key,
    hold: metrics::Key,
}

const ACQUIRED: &str = "dlock_acquired_total";
const WAIT: &str = "dlock_wait_seconds";
const HOLD: &str = "dlock_hold_seconds";

/// `GrantKeys` for each named backend, built (and hashed) at compile time.
macro_rules! static_grant_keys {
    ($($backend:literal),* $(,)?) => {
        [$({
            static LABELS: [metrics::Label; 1] =
                [metrics::Label::from_static_parts("backend", $backend)];
            GrantKeys {
                backend: $backend,
                acquired: metrics::Key::from_static_parts(ACQUIRED, &LABELS),
                wait: metrics::Key::from_static_parts(WAIT, &LABELS),
                hold: metrics::Key::from_static_parts(HOLD, &LABELS),
            }
        }),*]
    };
}

/// The workspace's backends. The `metrics` macros build (allocate and hash) a key on every
/// call when a label's value is not a literal — with or without a recorder — which cost
/// three allocations per acquire + release.
static KNOWN_BACKENDS: [GrantKeys; 8] = static_grant_keys!(
    "memory",
    "postgres",
    "redis",
    "redlock",
    "etcd",
    "zookeeper",
    "shedlock-postgres",
    "shedlock-redis",
);

/// The keys for `backend`: made once for the backends above, made now for any other.
fn grant_keys(backend: &'static str) -> std::borrow::Cow<'static, GrantKeys> {
    if let Some(keys) = KNOWN_BACKENDS.iter().find(|k| k.backend == backend) {
        return std::borrow::Cow::Borrowed(keys);
    }
    let key = |name: &'static str| {
        metrics::Key::from_parts(
            name,
            vec![metrics::Label::from_static_parts("backend", backend)],
        )
    };
    std::borrow::Cow::Owned(GrantKeys {
        backend,
        acquired: key(ACQUIRED),
        wait: key(WAIT),
        hold: key(HOLD),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// Remembers every key registered, as `name{label=value,…}`.
    #[derive(Default, Clone)]
    struct Keys(Arc<Mutex<Vec<String>>>);

    impl Keys {
        fn note(&self, key: &Key) {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let shown = format!("{}{{{}}}", key.name(), labels.join(","));
            self.0.lock().unwrap().push(shown);
        }
    }

    impl Recorder for Keys {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.note(key);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            self.note(key);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.note(key);
            Histogram::noop()
        }
    }

    /// Remembers the names of the spans it is asked to make; takes `max` and below.
    struct Spans {
        max: tracing::Level,
        names: Arc<Mutex<Vec<&'static str>>>,
    }

    impl tracing::Subscriber for Spans {
        fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
            *meta.level() <= self.max
        }
        fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
            Some(self.max.into())
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut names = self.names.lock().unwrap();
            names.push(span.metadata().name());
            tracing::span::Id::from_u64(names.len() as u64)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    async fn spans_of_one_round(max: tracing::Level) -> Vec<&'static str> {
        let names = Arc::new(Mutex::new(Vec::new()));
        let sub = Spans {
            max,
            names: names.clone(),
        };
        let _default = tracing::subscriber::set_default(sub);
        let backend = crate::MemoryBackend::new();
        let name = crate::LockName::new("spans").unwrap();
        let g = crate::Backend::acquire(&backend, &name, &LockOptions::new())
            .await
            .unwrap();
        assert!(g.release().await.unwrap());
        names.lock().unwrap().clone()
    }

    /// `acquire` and `release` spans reach a subscriber that takes debug spans (they are
    /// skipped when none does; that saves time but is not visible to a subscriber, so the
    /// info-level half only checks that nothing is recorded there either).
    #[tokio::test]
    async fn acquire_and_release_spans_reach_a_subscriber_that_takes_debug() {
        assert_eq!(
            spans_of_one_round(tracing::Level::DEBUG).await,
            ["acquire", "release"]
        );
        assert!(spans_of_one_round(tracing::Level::INFO).await.is_empty());
    }

    /// The keys built from the table of known backends and the ones built for any other
    /// backend name look the same to a recorder.
    #[test]
    fn metrics_carry_the_backend_label_for_known_and_other_backends() {
        let keys = Keys::default();
        metrics::with_local_recorder(&keys, || {
            acquired("postgres", Duration::from_millis(1));
            released("postgres", Duration::from_millis(1));
            acquired("someone-elses", Duration::from_millis(1));
            released("someone-elses", Duration::from_millis(1));
        });
        let got = keys.0.lock().unwrap().clone();
        let mut want = Vec::new();
        for b in ["postgres", "someone-elses"] {
            want.push(format!("dlock_acquired_total{{backend={b}}}"));
            want.push(format!("dlock_wait_seconds{{backend={b}}}"));
            want.push(format!("dlock_hold_seconds{{backend={b}}}"));
        }
        assert_eq!(got, want);
    }
}

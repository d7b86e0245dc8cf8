//! Measurements of speed and scale, shared by `dlock compare` (a short run into the report)
//! and the `benches` crate (`make bench`, the full run).
//!
//! Per backend: uncontended acquire + release beside its **raw floor** (the backend's
//! minimal commands on a raw client of the same server, measured alternately one by one so
//! load from elsewhere hits both alike); handoff latency with 8 waiters beside one round
//! trip; throughput with 64 tasks on distinct names; and 10,000 locks held at once by one
//! process (time, resident memory, connections). Every number is measured in this run on
//! this machine; nothing is estimated.

mod floor;
mod measure;
mod pin;
mod run;
mod tls;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use floor::{Floor, Mode, url_hosts};
pub use measure::{
    ManyLocks, handoff, hold_many, hold_many_in_child, once, open_sockets, rss_bytes, throughput,
    uncontended, uncontended_mode,
};
pub use pin::{Pinning, pin_apart, pin_server_apart};
pub use run::run_backend;
pub use tls::{METRIC as TLS_METRIC, tls_entry};

/// Latency samples of one operation.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    /// Runs `op` `warmup` times unmeasured, then `n` times measured, one after another.
    pub async fn collect<F, Fut, E>(warmup: usize, n: usize, mut op: F) -> Result<Samples, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        for _ in 0..warmup {
            op().await?;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            op().await?;
            v.push(t.elapsed());
        }
        Ok(Samples::from(v))
    }

    /// The `p`-th percentile (0.0–100.0), nearest-rank; zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The percentiles of [`DISTRIBUTION`] in microseconds, for the report's charts.
    pub fn distribution_us(&self) -> Vec<f64> {
        DISTRIBUTION
            .iter()
            .map(|p| micros(self.percentile(*p)))
            .collect()
    }
}

impl From<Vec<Duration>> for Samples {
    fn from(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Samples { sorted: v }
    }
}

/// The percentiles a latency distribution is reported at.
pub const DISTRIBUTION: [f64; 9] = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Microseconds as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line comparing an operation with its floor: `p50`, `p99`, and the p50 ratio, which it
/// returns.
pub fn report_vs_floor(label: &str, measured: &Samples, floor: &Samples) -> f64 {
    let ratio = measured.p50().as_secs_f64() / floor.p50().as_secs_f64().max(1e-9);
    println!(
        "{label}: p50 {:>8.1} µs  p99 {:>8.1} µs | floor p50 {:>8.1} µs  p99 {:>8.1} µs | p50 ratio {ratio:.3}× ({} samples each)",
        micros(measured.p50()),
        micros(measured.p99()),
        micros(floor.p50()),
        micros(floor.p99()),
        measured.len(),
    );
    ratio
}

/// One measured number of the report's `benchmarks` list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchEntry {
    /// Backend name (`postgres`, `redlock`, …).
    pub backend: String,
    /// What was measured: `acquire_release_p50`, `acquire_release_p99`, `handoff_p50`,
    /// `handoff_p99`, `throughput_64_tasks`, `hold_many_seconds`, `hold_many_rss_mib`,
    /// `hold_many_connections`.
    pub metric: String,
    /// The number.
    pub value: f64,
    /// Its unit (`us`, `ops/s`, `s`, `MiB`, `connections`).
    pub unit: String,
    /// The same measure for the raw floor (for handoffs: one round trip), when there is one.
    pub floor: Option<f64>,
    /// Latency percentiles at [`DISTRIBUTION`] (µs), for the latency entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Vec<f64>>,
    /// The floor's percentiles at [`DISTRIBUTION`] (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_distribution: Option<Vec<f64>>,
    /// How it was measured (sample count, what the floor is).
    pub notes: String,
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Latency samples per side for acquire + release.
    pub samples: usize,
    /// Waiters queued behind the holder in the handoff measurement.
    pub waiters: usize,
    /// Handoffs measured.
    pub handoffs: usize,
    /// Tasks in the throughput measurement, each on its own name.
    pub tasks: usize,
    /// Acquire + release cycles per task.
    pub per_task: usize,
    /// Locks held at once by one process.
    pub many: usize,
}

impl BenchPlan {
    /// What `dlock compare` runs by default (a couple of seconds per backend, plus the many
    /// locks).
    pub fn short() -> Self {
        BenchPlan {
            samples: 500,
            waiters: 8,
            handoffs: 40,
            tasks: 64,
            per_task: 20,
            many: 10_000,
        }
    }

    /// `dlock compare --quick`: a smoke run.
    pub fn quick() -> Self {
        BenchPlan {
            samples: 100,
            waiters: 8,
            handoffs: 16,
            tasks: 64,
            per_task: 3,
            many: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::from((1..=100).map(Duration::from_micros).collect::<Vec<_>>());
        assert_eq!(s.p50(), Duration::from_micros(50));
        assert_eq!(s.p99(), Duration::from_micros(99));
        assert_eq!(s.percentile(100.0), Duration::from_micros(100));
        assert_eq!(Samples::from(vec![]).p50(), Duration::ZERO);
        assert_eq!(s.distribution_us().len(), DISTRIBUTION.len());
    }
}

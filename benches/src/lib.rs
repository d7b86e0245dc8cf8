#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::future::Future;
use std::time::{Duration, Instant};

/// Latency samples of one operation.
#[derive(Debug, Clone)]
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

    /// The `p`-th percentile (0.0–100.0), nearest-rank.
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
}

impl From<Vec<Duration>> for Samples {
    fn from(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Samples { sorted: v }
    }
}

/// One line comparing an operation with its floor: `p50`, `p99`, and the p50 ratio.
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

/// Microseconds as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
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
    }
}

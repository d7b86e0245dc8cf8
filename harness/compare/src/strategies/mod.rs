//! The report's **strategies** section: the seed's other ways of keeping workers apart,
//! measured on one PostgreSQL. Today: the purge conflict ([`purge`]) — three workers on one
//! tick under no lock, dlock's advisory lock, a ShedLock table, `FOR UPDATE SKIP LOCKED`
//! batches and optimistic batches, quiet and beside a live stream, against the live stream
//! alone.

#[cfg(all(feature = "postgres", feature = "shedlock"))]
pub mod contention;
#[cfg(feature = "idempotency")]
pub mod idempotency;
#[cfg(all(feature = "postgres", feature = "shedlock"))]
pub mod purge;

use serde::Serialize;

/// How much the strategies section measures.
#[derive(Debug, Clone)]
pub struct StrategiesPlan {
    /// Runs per strategy and mode (the spread is over them).
    pub repeat: usize,
    /// Rows of the purge's table; 3 workers.
    pub old_rows: i64,
    /// Recent rows (kept).
    pub recent_rows: i64,
    /// How long each contention run lasts.
    pub contention: std::time::Duration,
    /// The worker counts of the contention runs.
    pub workers: Vec<usize>,
}

impl StrategiesPlan {
    /// What `dlock compare` runs.
    pub fn short() -> Self {
        StrategiesPlan {
            repeat: 3,
            old_rows: 30_000,
            recent_rows: 10_000,
            contention: std::time::Duration::from_secs(1),
            workers: vec![1, 8, 64],
        }
    }

    /// `dlock compare --quick`.
    pub fn quick() -> Self {
        StrategiesPlan {
            repeat: 1,
            old_rows: 10_000,
            recent_rows: 2_000,
            contention: std::time::Duration::from_millis(300),
            workers: vec![1, 8, 64],
        }
    }
}

/// One row of the purge table: a strategy, quiet or beside the live stream, over the runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PurgeRow {
    /// The strategy's report name (`live stream alone` for the baseline).
    pub strategy: String,
    /// Beside the live stream.
    pub live: bool,
    /// Runs.
    pub runs: usize,
    /// `measured` or `failed`.
    pub status: String,
    /// Why, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Serialization failures and deadlocks per run: median, min, max.
    pub serialization_errors: [f64; 3],
    /// Retried attempts per run: median, min, max.
    pub retries: [f64; 3],
    /// Workers that deleted rows / skipped on the lock / gave up, per run (medians).
    pub workers_deleted_skipped_failed: [f64; 3],
    /// Optimistic conflicts per run (median).
    pub conflicts: f64,
    /// Wall time of the purge (ms): median, min, max.
    pub wall_ms: [f64; 3],
    /// Old rows left after the purge, worst run (0: complete).
    pub old_rows_left_max: i64,
    /// Seeded recent rows deleted, worst run (must be 0).
    pub recent_rows_deleted_max: i64,
    /// Share of `pg_stat_activity` samples (every 5 ms) with a live-stream session waiting
    /// on a lock, % : median, min, max.
    pub live_lock_wait_pct: Option<[f64; 3]>,
    /// Live operations per second (median).
    pub live_ops_per_s: Option<f64>,
    /// Live operations' p99 (µs, median over runs): mostly CPU contention on two cores.
    pub live_p99_us: Option<f64>,
    /// Live operations that failed (serialization / deadlock), all runs.
    pub live_errors: Option<u64>,
}

/// One row of the contention table: a strategy and a worker count, over the runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContentionRow {
    /// The strategy's report name.
    pub strategy: String,
    /// Workers on the one hot row.
    pub workers: usize,
    /// Runs.
    pub runs: usize,
    /// `measured` or `failed`.
    pub status: String,
    /// Why, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Completed decrements per second: median, min, max.
    pub ops_per_s: [f64; 3],
    /// Retries per completed decrement (median over runs).
    pub retries_per_op: f64,
    /// Decrements that gave up, all runs.
    pub gave_up: u64,
    /// Lost updates, worst run (must be 0).
    pub lost_updates_max: i64,
}

/// One row of the idempotency table: a grade through one situation, over the runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdemRow {
    /// `payment (PostgreSQL)` or `click (Redis)`.
    pub grade: String,
    /// The situation (`idempotency::SCENARIOS`).
    pub scenario: String,
    /// Runs.
    pub runs: usize,
    /// `measured` or `failed`.
    pub status: String,
    /// Why, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many times the request's effect happened per run: median, min, max.
    pub executions: [f64; 3],
    /// What the clients saw, in words built from the last run's counts.
    pub outcome: String,
    /// For the kill and crash rows: ms from the fault to the answered retry (median, min,
    /// max).
    pub recovered_ms: Option<[f64; 3]>,
}

/// The tables of the section.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct StrategiesReport {
    /// The purge on three workers.
    pub purge: Vec<PurgeRow>,
    /// The hot row under 1, 8 and 64 workers.
    pub contention: Vec<ContentionRow>,
    /// Payment-grade and click-grade idempotency through four situations.
    pub idempotency: Vec<IdemRow>,
}

impl StrategiesReport {
    /// Nothing measured (the section was left out).
    pub fn is_empty(&self) -> bool {
        self.purge.is_empty() && self.contention.is_empty() && self.idempotency.is_empty()
    }
}

/// Median, min and max of `v` (zeros for none).
pub fn spread(v: &[f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    [s[(s.len() - 1) / 2], s[0], s[s.len() - 1]]
}

#[cfg(all(feature = "postgres", feature = "shedlock"))]
mod run;
#[cfg(all(feature = "postgres", feature = "shedlock"))]
pub use run::run;

/// The section: [`run`], or one failed row saying why when this build has no PostgreSQL or
/// ShedLock backend.
pub async fn run_section(plan: &StrategiesPlan) -> StrategiesReport {
    #[cfg(all(feature = "postgres", feature = "shedlock"))]
    {
        run(plan).await
    }
    #[cfg(not(all(feature = "postgres", feature = "shedlock")))]
    {
        let _ = plan;
        let purge = vec![PurgeRow {
            strategy: "all".into(),
            live: false,
            runs: 0,
            status: "failed".into(),
            reason: Some("built without the postgres and shedlock features".into()),
            serialization_errors: [0.0; 3],
            retries: [0.0; 3],
            workers_deleted_skipped_failed: [0.0; 3],
            conflicts: 0.0,
            wall_ms: [0.0; 3],
            old_rows_left_max: 0,
            recent_rows_deleted_max: 0,
            live_lock_wait_pct: None,
            live_ops_per_s: None,
            live_p99_us: None,
            live_errors: None,
        }];
        StrategiesReport {
            purge,
            contention: Vec::new(),
            idempotency: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_are_median_min_max() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), [2.0, 1.0, 3.0]);
        assert_eq!(spread(&[4.0, 1.0]), [1.0, 1.0, 4.0]);
        assert_eq!(spread(&[]), [0.0; 3]);
    }
}

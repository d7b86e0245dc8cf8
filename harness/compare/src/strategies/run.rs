//! Runs the strategies section on a PostgreSQL of its own.

use std::time::{Duration, Instant};

use super::contention::{self, ContentionOutcome, RowStrategy};
use super::purge::{self, LiveImpact, PurgeOutcome, PurgePlan, Strategy};
use super::{ContentionRow, IdemRow, PurgeRow, StrategiesPlan, StrategiesReport, spread};

/// How long the live stream runs alone for the baseline row.
const BASELINE: Duration = Duration::from_millis(500);

/// The purge table, then the contention table, on a PostgreSQL of its own.
pub async fn run(plan: &StrategiesPlan) -> StrategiesReport {
    let pg = match dlock_fixtures::managed_postgres().await {
        Ok(pg) => pg,
        Err(e) => {
            let why = format!("PostgreSQL did not start: {e:#}");
            return StrategiesReport {
                purge: vec![failed("all", false, 0, why)],
                contention: Vec::new(),
                idempotency: Vec::new(),
            };
        }
    };
    let purge = purge_rows(pg.url(), plan).await;
    let contention = contention_rows(pg.url(), plan).await;
    let idempotency = idempotency_rows(&pg, plan).await;
    StrategiesReport {
        purge,
        contention,
        idempotency,
    }
}

/// Both grades through every situation, `plan.repeat` runs each.
#[cfg(feature = "idempotency")]
async fn idempotency_rows(pg: &dlock_fixtures::Server, plan: &StrategiesPlan) -> Vec<IdemRow> {
    use super::idempotency::{self as idem, IdemOutcome};
    let redis = dlock_fixtures::managed_redis(dlock_fixtures::RedisOptions::default()).await;
    let mut rows = Vec::new();
    for grade in ["payment (PostgreSQL)", "click (Redis)"] {
        for scenario in idem::SCENARIOS {
            let mut got: Vec<IdemOutcome> = Vec::new();
            let mut error = None;
            for run in 0..plan.repeat {
                let r = match (grade.starts_with("payment"), &redis) {
                    (true, _) => idem::payment(pg, scenario, run).await,
                    (false, Ok(redis)) => idem::click(redis, scenario, run).await,
                    (false, Err(e)) => Err(anyhow::anyhow!("Redis did not start: {e:#}")),
                };
                match r {
                    Ok(o) => {
                        crate::say!(
                            "[strategies] {grade} × {scenario} run {}/{}: {}",
                            run + 1,
                            plan.repeat,
                            o.outcome
                        );
                        got.push(o);
                    }
                    Err(e) => {
                        error = Some(format!("{e:#}"));
                        break;
                    }
                }
            }
            let recovered: Vec<f64> = got.iter().filter_map(|o| o.recovered_ms).collect();
            rows.push(IdemRow {
                grade: grade.into(),
                scenario: scenario.into(),
                runs: got.len(),
                status: if error.is_some() {
                    "failed"
                } else {
                    "measured"
                }
                .into(),
                reason: error,
                executions: spread(&got.iter().map(|o| o.executions as f64).collect::<Vec<_>>()),
                outcome: got.last().map_or_else(String::new, |o| o.outcome.clone()),
                recovered_ms: (!recovered.is_empty()).then(|| spread(&recovered)),
            });
        }
    }
    rows
}

/// Without the idempotency feature: no rows.
#[cfg(not(feature = "idempotency"))]
async fn idempotency_rows(_: &dlock_fixtures::Server, _: &StrategiesPlan) -> Vec<IdemRow> {
    Vec::new()
}

/// Every strategy at every worker count, `plan.repeat` runs each (alternating strategies
/// within a repetition).
async fn contention_rows(url: &str, plan: &StrategiesPlan) -> Vec<ContentionRow> {
    let mut rows = Vec::new();
    for &workers in &plan.workers {
        let mut got: Vec<Vec<ContentionOutcome>> = vec![Vec::new(); RowStrategy::ALL.len()];
        let mut errors: Vec<Option<String>> = vec![None; RowStrategy::ALL.len()];
        for rep in 0..plan.repeat {
            for (i, s) in RowStrategy::ALL.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                match contention::run(url, *s, workers, plan.contention).await {
                    Ok(o) => {
                        crate::say!(
                            "[strategies] {} × {workers} worker(s) run {}/{}: {:.0} ops/s, {} retries, {} lost updates",
                            s.name(),
                            rep + 1,
                            plan.repeat,
                            o.ops as f64 / o.seconds.max(1e-3),
                            o.retries,
                            o.lost_updates
                        );
                        got[i].push(o);
                    }
                    Err(e) => errors[i] = Some(format!("{e:#}")),
                }
            }
        }
        for (i, s) in RowStrategy::ALL.iter().enumerate() {
            let runs = &got[i];
            let rates: Vec<f64> = runs
                .iter()
                .map(|o| o.ops as f64 / o.seconds.max(1e-3))
                .collect();
            let per_op: Vec<f64> = runs
                .iter()
                .map(|o| o.retries as f64 / o.ops.max(1) as f64)
                .collect();
            rows.push(ContentionRow {
                strategy: s.name().into(),
                workers,
                runs: runs.len(),
                status: if errors[i].is_some() {
                    "failed"
                } else {
                    "measured"
                }
                .into(),
                reason: errors[i].take(),
                ops_per_s: spread(&rates),
                retries_per_op: spread(&per_op)[0],
                gave_up: runs.iter().map(|o| o.gave_up).sum(),
                lost_updates_max: runs.iter().map(|o| o.lost_updates).max().unwrap_or(0),
            });
        }
    }
    rows
}

/// Every purge strategy quiet and beside the live stream, `plan.repeat` runs each
/// (alternating strategies within a repetition), then the live stream alone.
async fn purge_rows(url: &str, plan: &StrategiesPlan) -> Vec<PurgeRow> {
    let mut rows = Vec::new();
    for live in [false, true] {
        let purge_plan = PurgePlan {
            old_rows: plan.old_rows,
            recent_rows: plan.recent_rows,
            live,
            ..PurgePlan::default()
        };
        let mut got: Vec<Vec<PurgeOutcome>> = vec![Vec::new(); Strategy::ALL.len()];
        let mut errors: Vec<Option<String>> = vec![None; Strategy::ALL.len()];
        for rep in 0..plan.repeat {
            for (i, s) in Strategy::ALL.iter().enumerate() {
                if errors[i].is_some() {
                    continue;
                }
                let started = Instant::now();
                match purge::run(url, *s, &purge_plan).await {
                    Ok(o) => {
                        crate::say!(
                            "[strategies] {}{} run {}/{}: {} errors, {} rows deleted, {:.0} ms ({:.1} s)",
                            s.name(),
                            if live { " + live stream" } else { "" },
                            rep + 1,
                            plan.repeat,
                            o.serialization_errors,
                            o.rows_deleted,
                            o.wall_ms,
                            started.elapsed().as_secs_f64()
                        );
                        got[i].push(o);
                    }
                    Err(e) => errors[i] = Some(format!("{e:#}")),
                }
            }
        }
        for (i, s) in Strategy::ALL.iter().enumerate() {
            rows.push(match errors[i].take() {
                Some(why) => failed(s.name(), live, got[i].len(), why),
                None => row(s.name(), live, &got[i]),
            });
        }
    }
    let mut base = Vec::new();
    let base_plan = PurgePlan {
        old_rows: plan.old_rows,
        recent_rows: plan.recent_rows,
        ..PurgePlan::default()
    };
    for _ in 0..plan.repeat {
        match purge::live_baseline(url, &base_plan, BASELINE).await {
            Ok(l) => base.push(l),
            Err(e) => {
                rows.push(failed(
                    "live stream alone",
                    true,
                    base.len(),
                    format!("{e:#}"),
                ));
                return rows;
            }
        }
    }
    rows.push(baseline_row(&base));
    rows
}

fn failed(strategy: &str, live: bool, runs: usize, why: String) -> PurgeRow {
    PurgeRow {
        status: "failed".into(),
        reason: Some(why),
        ..row(strategy, live, &[])
    }
    .with_runs(runs)
}

impl PurgeRow {
    fn with_runs(mut self, runs: usize) -> PurgeRow {
        self.runs = runs;
        self
    }
}

fn row(strategy: &str, live: bool, runs: &[PurgeOutcome]) -> PurgeRow {
    let of = |f: &dyn Fn(&PurgeOutcome) -> f64| spread(&runs.iter().map(f).collect::<Vec<_>>());
    let lives: Vec<&LiveImpact> = runs.iter().filter_map(|o| o.live.as_ref()).collect();
    let (wait_pct, ops, p99, errs) = live_figures(&lives);
    PurgeRow {
        strategy: strategy.into(),
        live,
        runs: runs.len(),
        status: "measured".into(),
        reason: None,
        serialization_errors: of(&|o| f64::from(o.serialization_errors)),
        retries: of(&|o| f64::from(o.retries)),
        workers_deleted_skipped_failed: [
            of(&|o| o.workers_that_deleted as f64)[0],
            of(&|o| o.workers_skipped as f64)[0],
            of(&|o| o.workers_failed as f64)[0],
        ],
        conflicts: of(&|o| o.conflicts as f64)[0],
        wall_ms: of(&|o| o.wall_ms),
        old_rows_left_max: runs.iter().map(|o| o.old_rows_left).max().unwrap_or(0),
        recent_rows_deleted_max: runs
            .iter()
            .map(|o| o.recent_rows_deleted)
            .max()
            .unwrap_or(0),
        live_lock_wait_pct: wait_pct,
        live_ops_per_s: ops,
        live_p99_us: p99,
        live_errors: errs,
    }
}

/// Lock-wait share, ops/s, p99 and errors of live runs.
#[allow(clippy::type_complexity)]
fn live_figures(
    lives: &[&LiveImpact],
) -> (Option<[f64; 3]>, Option<f64>, Option<f64>, Option<u64>) {
    if lives.is_empty() {
        return (None, None, None, None);
    }
    let pct: Vec<f64> = lives
        .iter()
        .map(|l| 100.0 * l.lock_wait_samples as f64 / l.samples.max(1) as f64)
        .collect();
    let ops: Vec<f64> = lives
        .iter()
        .map(|l| l.ops as f64 / l.seconds.max(1e-3))
        .collect();
    let p99: Vec<f64> = lives.iter().map(|l| l.p99_us).collect();
    (
        Some(spread(&pct)),
        Some(spread(&ops)[0]),
        Some(spread(&p99)[0]),
        Some(lives.iter().map(|l| l.errors).sum()),
    )
}

fn baseline_row(base: &[LiveImpact]) -> PurgeRow {
    let refs: Vec<&LiveImpact> = base.iter().collect();
    let (wait_pct, ops, p99, errs) = live_figures(&refs);
    PurgeRow {
        live_lock_wait_pct: wait_pct,
        live_ops_per_s: ops,
        live_p99_us: p99,
        live_errors: errs,
        ..row("live stream alone (no purge)", true, &[])
    }
    .with_runs(base.len())
}

//! The seed's purge conflict, reproduced: three workers fire the same job on the same tick —
//! `DELETE FROM emp_details WHERE last_updated < now() - interval '30 days'`, the statement of
//! `examples/purge_job.rs` and of the Java harness's Spring purge pods — at SERIALIZABLE, as
//! the seed runs it, while a live stream inserts and updates rows. Per strategy: serialization
//! errors, retries, rows deleted and by how many workers, wall time, and what the live stream
//! felt (its sessions seen waiting on a lock in `pg_stat_activity`, and its p99).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Barrier;

/// The job's statement (the seed's, unchanged).
pub const PURGE_SQL: &str =
    "DELETE FROM emp_details WHERE last_updated < now() - interval '30 days'";

/// The lock name the locking strategies use (the Java pods' and the example's).
pub const LOCK_NAME: &str = "emp_details_purge";

/// The live stream's `application_name`, by which the sampler finds its sessions.
const LIVE_APP: &str = "dlock-live-stream";

/// How several workers are kept from purging over each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Nothing: every worker runs the statement (the seed's "before").
    NoLock,
    /// A dlock PostgreSQL advisory lock, tried without waiting: the loser skips.
    Advisory,
    /// dlock on a ShedLock table (`shedlock+postgres://`), tried without waiting.
    ShedLock,
    /// Pessimistic batches: `SELECT id … LIMIT n FOR UPDATE SKIP LOCKED`, then delete them;
    /// every worker works, on disjoint rows. At READ COMMITTED, the isolation the pattern is
    /// made for.
    SkipLocked,
    /// The same batches at SERIALIZABLE, the seed's isolation: a row another worker deleted
    /// and committed after the batch's snapshot is not "locked", so it is not skipped — the
    /// batch fails to serialize instead.
    SkipLockedSerializable,
    /// Optimistic batches: read `(id, version)` of old rows, delete each batch `WHERE id =
    /// ANY(…) AND version = …` at READ COMMITTED (the version check is the safety); a row
    /// another worker deleted first is a conflict, skipped.
    Optimistic,
}

impl Strategy {
    /// Every strategy, in report order.
    pub const ALL: [Strategy; 6] = [
        Strategy::NoLock,
        Strategy::Advisory,
        Strategy::ShedLock,
        Strategy::SkipLocked,
        Strategy::SkipLockedSerializable,
        Strategy::Optimistic,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::NoLock => "no lock",
            Strategy::Advisory => "advisory lock (dlock postgres://)",
            Strategy::ShedLock => "ShedLock table (dlock shedlock+postgres://)",
            Strategy::SkipLocked => "pessimistic: FOR UPDATE SKIP LOCKED batches",
            Strategy::SkipLockedSerializable => "pessimistic: SKIP LOCKED batches at SERIALIZABLE",
            Strategy::Optimistic => "optimistic: version-checked batches",
        }
    }
}

/// The run's size.
#[derive(Debug, Clone)]
pub struct PurgePlan {
    /// Rows older than 30 days (the purge deletes them).
    pub old_rows: i64,
    /// Recent rows (kept).
    pub recent_rows: i64,
    /// Workers firing on the same tick.
    pub workers: usize,
    /// Rows per batch of the batch strategies.
    pub batch: i64,
    /// Attempts per batch (or per job) on a serialization failure; the no-lock strategy
    /// makes one (the seed's job does not retry).
    pub attempts: u32,
    /// Run the live stream beside the purge.
    pub live: bool,
}

impl Default for PurgePlan {
    fn default() -> Self {
        PurgePlan {
            old_rows: 30_000,
            recent_rows: 10_000,
            workers: 3,
            batch: 500,
            attempts: 5,
            live: true,
        }
    }
}

/// What the live stream felt.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveImpact {
    /// Operations it completed (inserts and updates).
    pub ops: u64,
    /// Samples of `pg_stat_activity` (every 5 ms) that found one of its sessions waiting on a
    /// lock (`wait_event_type = 'Lock'`).
    pub lock_wait_samples: u64,
    /// Samples taken.
    pub samples: u64,
    /// Its p99 operation time (µs): CPU contention on two cores dominates it; secondary.
    pub p99_us: f64,
    /// Operations that failed (a serialization failure or a deadlock on the live side).
    pub errors: u64,
    /// How long the stream ran (s).
    pub seconds: f64,
}

/// One strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeOutcome {
    /// The strategy.
    pub strategy: Strategy,
    /// Workers.
    pub workers: usize,
    /// Serialization failures and deadlocks the workers met (SQLSTATE 40001 / 40P01).
    pub serialization_errors: u32,
    /// Attempts beyond each unit's first.
    pub retries: u32,
    /// Rows the workers deleted and committed, together.
    pub rows_deleted: i64,
    /// Workers that deleted at least one row.
    pub workers_that_deleted: usize,
    /// Workers that skipped the job because another held its lock.
    pub workers_skipped: usize,
    /// Workers that ran the statement and had it fail (wasted work).
    pub workers_failed: usize,
    /// Optimistic: rows a batch expected and found already gone (another worker's).
    pub conflicts: u64,
    /// From the tick to the last worker's end (ms).
    pub wall_ms: f64,
    /// Rows still older than 30 days afterwards (0: the purge is complete; an old row the
    /// live stream touched is recent again and rightly kept).
    pub old_rows_left: i64,
    /// Recent rows deleted (must be 0).
    pub recent_rows_deleted: i64,
    /// The live stream during the purge.
    pub live: Option<LiveImpact>,
}

/// Per-worker tallies.
#[derive(Debug, Default)]
struct Tally {
    deleted: i64,
    errors: u32,
    retries: u32,
    skipped: bool,
    failed: bool,
    conflicts: u64,
}

fn is_serialization(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
}

/// Creates `emp_details` afresh: `old_rows` 40 days old, `recent_rows` from today.
pub async fn seed_table(pool: &PgPool, plan: &PurgePlan) -> Result<()> {
    for sql in [
        "DROP TABLE IF EXISTS emp_details",
        "CREATE TABLE emp_details (id bigserial PRIMARY KEY, name text NOT NULL, last_updated timestamptz NOT NULL, version bigint NOT NULL DEFAULT 0)",
    ] {
        sqlx::query(sql).execute(pool).await.context(sql)?;
    }
    sqlx::query(
        "INSERT INTO emp_details (name, last_updated)
         SELECT 'old-' || g, now() - interval '40 days' FROM generate_series(1, $1) g",
    )
    .bind(plan.old_rows)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO emp_details (name, last_updated)
         SELECT 'recent-' || g, now() - interval '1 day' FROM generate_series(1, $1) g",
    )
    .bind(plan.recent_rows)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE emp_details").execute(pool).await?;
    Ok(())
}

/// Runs `strategy` once on the PostgreSQL at `url` (the table is made afresh).
pub async fn run(url: &str, strategy: Strategy, plan: &PurgePlan) -> Result<PurgeOutcome> {
    let pool = PgPoolOptions::new()
        .max_connections(plan.workers as u32 + 4)
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    seed_table(&pool, plan).await?;
    let backend = match strategy {
        Strategy::Advisory => Some(dlock::connect(url).await?),
        Strategy::ShedLock => Some(dlock::connect(&format!("shedlock+{url}")).await?),
        _ => None,
    };
    let live = if plan.live {
        Some(LiveStream::start(url, plan).await?)
    } else {
        None
    };
    let barrier = Arc::new(Barrier::new(plan.workers + 1));
    let mut tasks = Vec::new();
    for _ in 0..plan.workers {
        let (url, plan, barrier, backend) = (
            url.to_string(),
            plan.clone(),
            barrier.clone(),
            backend.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            barrier.wait().await;
            let t = match strategy {
                Strategy::NoLock => whole_job(&mut conn, 1).await,
                Strategy::Advisory | Strategy::ShedLock => {
                    let backend = backend.expect("a backend for a locking strategy");
                    locked_job(&mut conn, &plan, backend.as_ref()).await
                }
                Strategy::SkipLocked => skip_locked(&mut conn, &plan, false).await,
                Strategy::SkipLockedSerializable => skip_locked(&mut conn, &plan, true).await,
                Strategy::Optimistic => optimistic(&mut conn, &plan).await,
            }?;
            Ok::<_, anyhow::Error>((t, Instant::now()))
        }));
    }
    barrier.wait().await;
    let tick = Instant::now();
    let mut tallies = Vec::new();
    let mut last = tick;
    for t in tasks {
        let (tally, ended) = t.await.context("a purge worker panicked")??;
        last = last.max(ended);
        tallies.push(tally);
    }
    let wall_ms = last.duration_since(tick).as_secs_f64() * 1000.0;
    let live = match live {
        Some(l) => Some(l.stop().await?),
        None => None,
    };
    if let Some(b) = backend {
        b.close().await;
    }
    let (old_left, recent_left): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_updated < now() - interval '30 days'),
                count(*) FILTER (WHERE name LIKE 'recent-%') FROM emp_details",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(PurgeOutcome {
        strategy,
        workers: plan.workers,
        serialization_errors: tallies.iter().map(|t| t.errors).sum(),
        retries: tallies.iter().map(|t| t.retries).sum(),
        rows_deleted: tallies.iter().map(|t| t.deleted).sum(),
        workers_that_deleted: tallies.iter().filter(|t| t.deleted > 0).count(),
        workers_skipped: tallies.iter().filter(|t| t.skipped).count(),
        workers_failed: tallies.iter().filter(|t| t.failed).count(),
        conflicts: tallies.iter().map(|t| t.conflicts).sum(),
        wall_ms,
        old_rows_left: old_left,
        recent_rows_deleted: plan.recent_rows - recent_left,
        live,
    })
}

/// Runs the DELETE that `delete` builds in a transaction of its own (at SERIALIZABLE with
/// `serializable`), up to `attempts` times while it fails to serialize, counting the errors
/// and retries in `t`: the rows it deleted, or `None` when every attempt failed.
async fn retried_delete<'q>(
    conn: &mut PgConnection,
    t: &mut Tally,
    attempts: u32,
    serializable: bool,
    delete: impl Fn() -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Option<u64>> {
    for attempt in 1..=attempts {
        t.retries += u32::from(attempt > 1);
        let r: Result<u64, sqlx::Error> = async {
            let mut tx = conn.begin().await?;
            if serializable {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                    .execute(&mut *tx)
                    .await?;
            }
            let n = delete().execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            Ok(n)
        }
        .await;
        match r {
            Ok(n) => return Ok(Some(n)),
            Err(e) if is_serialization(&e) => t.errors += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The seed's job: one SERIALIZABLE transaction running the statement; `attempts` tries.
async fn whole_job(conn: &mut PgConnection, attempts: u32) -> Result<Tally> {
    let mut t = Tally::default();
    match retried_delete(conn, &mut t, attempts, true, || sqlx::query(PURGE_SQL)).await? {
        Some(n) => t.deleted += n as i64,
        None => t.failed = true,
    }
    Ok(t)
}

/// The job under a dlock lock tried without waiting: the holder runs it, the others skip.
async fn locked_job(
    conn: &mut PgConnection,
    plan: &PurgePlan,
    backend: &dyn dlock::Backend,
) -> Result<Tally> {
    let name = dlock::LockName::new(LOCK_NAME)?;
    let opts = dlock::LockOptions::new()
        .with_ttl(Duration::from_secs(30))
        .with_wait(dlock::Wait::No);
    match backend.acquire(&name, &opts).await {
        Ok(guard) => {
            let t = whole_job(conn, plan.attempts).await;
            guard.release().await?;
            t
        }
        Err(e) if e.kind() == dlock::ErrorKind::Contended => Ok(Tally {
            skipped: true,
            ..Tally::default()
        }),
        Err(e) => Err(e.into()),
    }
}

/// Batches of `FOR UPDATE SKIP LOCKED` (at SERIALIZABLE with `serializable`, else READ
/// COMMITTED), each batch retried on a serialization failure.
async fn skip_locked(
    conn: &mut PgConnection,
    plan: &PurgePlan,
    serializable: bool,
) -> Result<Tally> {
    let mut t = Tally::default();
    loop {
        let done = retried_delete(conn, &mut t, plan.attempts, serializable, || {
            sqlx::query(
                "DELETE FROM emp_details WHERE id IN (
                   SELECT id FROM emp_details WHERE last_updated < now() - interval '30 days'
                    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)",
            )
            .bind(plan.batch)
        })
        .await?;
        match done {
            Some(0) => return Ok(t),
            Some(n) => t.deleted += n as i64,
            None => {
                t.failed = true;
                return Ok(t);
            }
        }
    }
}

/// Optimistic batches at READ COMMITTED: read a batch of `(id, version)`, delete those still at
/// that version; rows already gone are conflicts (another worker's), counted and skipped.
async fn optimistic(conn: &mut PgConnection, plan: &PurgePlan) -> Result<Tally> {
    let mut t = Tally::default();
    let mut after = 0_i64;
    loop {
        let batch: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, version FROM emp_details
              WHERE last_updated < now() - interval '30 days' AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(plan.batch)
        .fetch_all(&mut *conn)
        .await?;
        let Some(&(last, _)) = batch.last() else {
            return Ok(t);
        };
        after = last;
        let (ids, versions): (Vec<i64>, Vec<i64>) = batch.iter().copied().unzip();
        let done = retried_delete(conn, &mut t, plan.attempts, false, || {
            sqlx::query(
                "DELETE FROM emp_details e USING unnest($1::bigint[], $2::bigint[]) AS b(id, version)
                  WHERE e.id = b.id AND e.version = b.version",
            )
            .bind(&ids)
            .bind(&versions)
        })
        .await?;
        match done {
            Some(n) => {
                t.deleted += n as i64;
                t.conflicts += ids.len() as u64 - n;
            }
            None => t.failed = true,
        }
    }
}

/// The live stream: one session inserting fresh rows and touching random rows, old and
/// recent alike (`last_updated = now()`: a touched old row is live again and must survive the
/// purge), and a sampler reading `pg_stat_activity` every 5 ms.
struct LiveStream {
    started: Instant,
    stop: Arc<AtomicBool>,
    worker: tokio::task::JoinHandle<Result<(u64, u64, Vec<f64>)>>,
    sampler: tokio::task::JoinHandle<Result<(u64, u64)>>,
}

impl LiveStream {
    async fn start(url: &str, plan: &PurgePlan) -> Result<LiveStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let opts: PgConnectOptions = url.parse()?;
        let mut live = PgConnection::connect_with(&opts.clone().application_name(LIVE_APP)).await?;
        let mut watch = PgConnection::connect_with(&opts).await?;
        let max_id = plan.old_rows + plan.recent_rows;
        let s = stop.clone();
        let worker = tokio::spawn(async move {
            let (mut ops, mut errors, mut times) = (0u64, 0u64, Vec::new());
            let mut x = 0x9e37_79b9_7f4a_7c15_u64;
            while !s.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let started = Instant::now();
                let r = if ops % 2 == 0 {
                    sqlx::query(
                        "INSERT INTO emp_details (name, last_updated) VALUES ('live', now())",
                    )
                    .execute(&mut live)
                    .await
                } else {
                    sqlx::query(
                        "UPDATE emp_details SET last_updated = now(), version = version + 1 WHERE id = $1",
                    )
                        .bind(1 + (x % max_id as u64) as i64)
                        .execute(&mut live)
                        .await
                };
                match r {
                    Ok(_) => {
                        ops += 1;
                        times.push(started.elapsed().as_secs_f64() * 1e6);
                    }
                    Err(e) if is_serialization(&e) => errors += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((ops, errors, times))
        });
        let s = stop.clone();
        let sampler = tokio::spawn(async move {
            let (mut samples, mut waits) = (0u64, 0u64);
            while !s.load(Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
                )
                .bind(LIVE_APP)
                .fetch_one(&mut watch)
                .await?;
                samples += 1;
                waits += u64::from(n > 0);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((samples, waits))
        });
        Ok(LiveStream {
            started: Instant::now(),
            stop,
            worker,
            sampler,
        })
    }

    async fn stop(self) -> Result<LiveImpact> {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let (ops, errors, mut times) = self.worker.await??;
        let (samples, waits) = self.sampler.await??;
        times.sort_by(f64::total_cmp);
        let p99 = if times.is_empty() {
            0.0
        } else {
            times[((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len()) - 1]
        };
        Ok(LiveImpact {
            ops,
            lock_wait_samples: waits,
            samples,
            p99_us: p99,
            errors,
            seconds,
        })
    }
}

/// The live stream alone for `d`, on the same table: the baseline the purge runs are read
/// against.
pub async fn live_baseline(url: &str, plan: &PurgePlan, d: Duration) -> Result<LiveImpact> {
    let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
    seed_table(&pool, plan).await?;
    pool.close().await;
    let live = LiveStream::start(url, plan).await?;
    tokio::time::sleep(d).await;
    live.stop().await
}

//! The seed's inventory under contention: workers decrement one hot row as fast as they can
//! for a fixed time, each decrement a read-modify-write (`SELECT stock`, then `UPDATE … SET
//! stock = <read − 1>`), kept safe by one of four strategies — dlock's advisory lock, dlock on a
//! ShedLock table, optimistic versioning with retries, pessimistic `SELECT … FOR UPDATE`.
//! Counted: completed decrements per second, retries (optimistic conflicts, serialization
//! failures), and lost updates (the row's final stock against the decrements that reported
//! success: 0 for a correct strategy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lock_rowlock::{Ident, RetryPolicy, RowLockTx, RowWait, Versioned, VersionedTable};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Barrier;

/// How the hot row is kept safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStrategy {
    /// dlock `postgres://`, waiting for the lock named after the row.
    Advisory,
    /// dlock `shedlock+postgres://`, waiting.
    ShedLock,
    /// `VersionedTable::update` with a retry policy.
    Optimistic,
    /// `RowLockTx` with `RowWait::Wait`: `FOR UPDATE`, then the update, then commit.
    Pessimistic,
}

impl RowStrategy {
    /// Every strategy, in report order.
    pub const ALL: [RowStrategy; 4] = [
        RowStrategy::Advisory,
        RowStrategy::ShedLock,
        RowStrategy::Optimistic,
        RowStrategy::Pessimistic,
    ];

    /// Its report name.
    pub fn name(self) -> &'static str {
        match self {
            RowStrategy::Advisory => "advisory lock (dlock postgres://)",
            RowStrategy::ShedLock => "ShedLock table (dlock shedlock+postgres://)",
            RowStrategy::Optimistic => "optimistic (version column, retries)",
            RowStrategy::Pessimistic => "pessimistic (SELECT … FOR UPDATE)",
        }
    }
}

/// One run's result.
#[derive(Debug, Clone, Serialize)]
pub struct ContentionOutcome {
    /// Decrements completed.
    pub ops: u64,
    /// How long the workers ran (s).
    pub seconds: f64,
    /// Attempts beyond each decrement's first (conflicts, serialization failures).
    pub retries: u64,
    /// Decrements that gave up (the retry policy ran out, or a lock wait timed out).
    pub gave_up: u64,
    /// Decrements that reported success but are missing from the row (must be 0).
    pub lost_updates: i64,
}

const START_STOCK: i64 = 1_000_000_000;

/// Runs `strategy` with `workers` workers for `dur` on the PostgreSQL at `url`.
pub async fn run(
    url: &str,
    strategy: RowStrategy,
    workers: usize,
    dur: Duration,
) -> Result<ContentionOutcome> {
    let pool = PgPoolOptions::new()
        .max_connections(workers.min(16) as u32 + 1)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")?;
    for sql in [
        "DROP TABLE IF EXISTS inventory",
        "CREATE TABLE inventory (id bigint PRIMARY KEY, stock bigint NOT NULL, version bigint NOT NULL)",
    ] {
        sqlx::query(sql).execute(&pool).await.context(sql)?;
    }
    sqlx::query("INSERT INTO inventory VALUES (1, $1, 0)")
        .bind(START_STOCK)
        .execute(&pool)
        .await?;
    let backend = match strategy {
        RowStrategy::Advisory => Some(dlock::connect(url).await?),
        RowStrategy::ShedLock => Some(dlock::connect(&format!("shedlock+{url}")).await?),
        _ => None,
    };
    let table = Arc::new(VersionedTable::new("inventory")?);
    let barrier = Arc::new(Barrier::new(workers + 1));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (pool, backend, table, barrier) = (
            pool.clone(),
            backend.clone(),
            table.clone(),
            barrier.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let end = Instant::now() + dur;
            let (mut ops, mut retries, mut gave_up) = (0u64, 0u64, 0u64);
            while Instant::now() < end {
                let r = match strategy {
                    RowStrategy::Advisory | RowStrategy::ShedLock => {
                        locked(&pool, backend.as_deref().expect("a backend"), end).await
                    }
                    RowStrategy::Optimistic => optimistic(&pool, &table).await,
                    RowStrategy::Pessimistic => pessimistic(&pool).await,
                };
                match r? {
                    Step::Done(extra) => {
                        ops += 1;
                        retries += extra;
                    }
                    Step::GaveUp(extra) => {
                        gave_up += 1;
                        retries += extra;
                    }
                    Step::Ended => {}
                }
            }
            Ok::<_, anyhow::Error>((ops, retries, gave_up))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let (mut ops, mut retries, mut gave_up) = (0, 0, 0);
    for t in tasks {
        let (o, r, g) = t.await.context("a contention worker panicked")??;
        ops += o;
        retries += r;
        gave_up += g;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(b) = backend {
        b.close().await;
    }
    let stock: i64 = sqlx::query_scalar("SELECT stock FROM inventory WHERE id = 1")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(ContentionOutcome {
        ops,
        seconds,
        retries,
        gave_up,
        lost_updates: (START_STOCK - ops as i64) - stock,
    })
}

enum Step {
    /// Done, after this many extra attempts.
    Done(u64),
    /// Gave up, after this many extra attempts.
    GaveUp(u64),
    /// The run ended while it waited for the lock.
    Ended,
}

/// The read-modify-write on `conn`: read the stock, write it back one less.
async fn decrement(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let stock: i64 = sqlx::query_scalar("SELECT stock FROM inventory WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query("UPDATE inventory SET stock = $1 WHERE id = 1")
        .bind(stock - 1)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn locked(pool: &PgPool, backend: &dyn dlock::Backend, end: Instant) -> Result<Step> {
    let name = dlock::LockName::new("inventory-1")?;
    let left = end.saturating_duration_since(Instant::now());
    let opts = dlock::LockOptions::new()
        .with_ttl(Duration::from_secs(10))
        .with_wait(dlock::Wait::For(left.max(Duration::from_millis(1))));
    let guard = match backend.acquire(&name, &opts).await {
        Ok(g) => g,
        Err(e)
            if matches!(
                e.kind(),
                dlock::ErrorKind::Timeout | dlock::ErrorKind::Contended
            ) =>
        {
            // The run's end came while it waited: not a failure, the run is over.
            return Ok(Step::Ended);
        }
        Err(e) => return Err(e.into()),
    };
    let mut conn = pool.acquire().await?;
    decrement(&mut conn).await?;
    drop(conn);
    guard.release().await?;
    Ok(Step::Done(0))
}

async fn optimistic(pool: &PgPool, table: &VersionedTable) -> Result<Step> {
    let policy = RetryPolicy::new(50, Duration::from_micros(200), Duration::from_millis(20))?;
    let mut attempts = 0u64;
    let r = policy
        .run(|_| {
            attempts += 1;
            async {
                let mut conn = pool.acquire().await?;
                let (stock, version): (i64, i64) =
                    sqlx::query_as("SELECT stock, version FROM inventory WHERE id = 1")
                        .fetch_one(&mut *conn)
                        .await?;
                table
                    .update(&mut conn, Versioned { id: 1, version }, move |q| {
                        q.push("stock = ").push_bind(stock - 1);
                    })
                    .await
            }
        })
        .await;
    match r {
        Ok(_) => Ok(Step::Done(attempts - 1)),
        Err(lock_rowlock::Error::RetriesExhausted { .. }) => Ok(Step::GaveUp(attempts - 1)),
        Err(e) => Err(e.into()),
    }
}

async fn pessimistic(pool: &PgPool) -> Result<Step> {
    let (table, id) = (Ident::new("inventory")?, Ident::new("id")?);
    let mut tx = RowLockTx::begin(pool, RowWait::Wait).await?;
    tx.lock_ids(&table, &id, &[1]).await?;
    decrement(tx.conn()).await?;
    tx.commit().await?;
    Ok(Step::Done(0))
}

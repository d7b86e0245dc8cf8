//! The classic case, end to end: three pods run the same purge job on the same schedule
//! against one PostgreSQL; a ShedLock-compatible lock lets exactly one of them delete.
//!
//! ```text
//! cargo run -p dlock-server-tests --example purge_job
//! ```
//!
//! Uses `DLOCK_TEST_POSTGRES_URL` when set, otherwise starts a throw-away PostgreSQL on a
//! loopback port. Exits non-zero if any tick ran on more or less than one pod, or if a recent
//! or concurrently inserted row was deleted.

use std::sync::Arc;
use std::time::Duration;

use dlock::schedule::ScheduledJob;
use dlock::{JobOutcome, LockName};
use sqlx::Connection;
use tokio::sync::Mutex;

const PODS: usize = 3;
const TICKS: usize = 2;
const OLD_ROWS: i64 = 1000;
const RECENT_ROWS: i64 = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pg = dlock_fixtures::postgres().await?;
    let url = pg.url().to_string();
    let mut setup = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("DROP TABLE IF EXISTS emp_details")
        .execute(&mut setup)
        .await?;
    sqlx::query(
        "CREATE TABLE emp_details (id bigserial PRIMARY KEY, name text NOT NULL, last_updated timestamptz NOT NULL)",
    )
    .execute(&mut setup)
    .await?;
    insert(&mut setup, OLD_ROWS, "40 days").await?;
    insert(&mut setup, RECENT_ROWS, "1 day").await?;
    println!("emp_details: {OLD_ROWS} rows older than 30 days, {RECENT_ROWS} recent rows");

    // Concurrent inserts of fresh rows while the pods purge: none of them may be deleted.
    let inserter = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let mut n = 0i64;
            for _ in 0..200 {
                insert(&mut conn, 1, "0 days").await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, anyhow::Error>(n)
        })
    };

    let log = Arc::new(Mutex::new(Vec::<(usize, usize, String)>::new()));
    // Between the ticks, this task adds stale rows for the second tick to purge.
    let between_ticks = Arc::new(tokio::sync::Barrier::new(PODS + 1));
    // Every pod connects first; then all start their schedules together.
    let start = Arc::new(tokio::sync::Barrier::new(PODS + 1));
    let mut pods = Vec::new();
    for pod in 1..=PODS {
        let (url, log, between_ticks, start) = (
            url.clone(),
            log.clone(),
            between_ticks.clone(),
            start.clone(),
        );
        pods.push(tokio::spawn(async move {
            // each pod: its own lock client and its own database connection
            let backend = dlock::connect(&format!("shedlock+{url}")).await?;
            let db = Arc::new(Mutex::new(sqlx::PgConnection::connect(&url).await?));
            let job = ScheduledJob::new(
                backend,
                LockName::new("emp_details_purge")?,
                "0/2 * * * * *", // every 2 s (a shortened nightly schedule)
                Duration::from_secs(30),         // at_most
                Some(Duration::from_secs(1)),    // at_least: outlasts clock differences
            )?;
            start.wait().await;
            for tick in 1..=TICKS {
                let job_db = db.clone();
                let t = job
                    .run_next(|held| async move {
                        let mut db = job_db.lock().await;
                        let r = sqlx::query(
                            "DELETE FROM emp_details WHERE last_updated < now() - interval '30 days'",
                        )
                        .execute(&mut *db)
                        .await?;
                        Ok::<_, sqlx::Error>((r.rows_affected(), held.token()))
                    })
                    .await
                    .expect("the schedule has ticks");
                let line = match t.outcome? {
                    JobOutcome::Ran((rows, _)) => format!("ran: deleted {rows} rows older than 30 days"),
                    JobOutcome::Skipped => "skipped: another pod holds emp_details_purge".to_string(),
                    JobOutcome::Failed(e) => format!("failed: {e}"),
                };
                println!("[pod-{pod}] tick {tick} ({}): {line}", t.at.format("%H:%M:%S"));
                log.lock().await.push((tick, pod, line));
                if tick < TICKS {
                    between_ticks.wait().await; // tick done everywhere
                    between_ticks.wait().await; // stale rows added
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    // Release the pods just after a second boundary, so every pod aims at the same tick (as
    // replicas with synchronised clocks do) even on a busy machine.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1100 - ms)).await;
    if tokio::time::timeout(Duration::from_secs(60), start.wait())
        .await
        .is_err()
    {
        anyhow::bail!("a pod failed to start (see the errors above)");
    }
    for _ in 1..TICKS {
        between_ticks.wait().await;
        insert(&mut setup, 200, "45 days").await?;
        println!("added 200 more rows older than 30 days");
        between_ticks.wait().await;
    }
    for p in pods {
        p.await??;
    }
    let inserted = inserter.await??;

    let log = log.lock().await;
    let mut ok = true;
    for tick in 1..=TICKS {
        let ran = log
            .iter()
            .filter(|(t, _, l)| *t == tick && l.starts_with("ran"))
            .count();
        let skipped = log
            .iter()
            .filter(|(t, _, l)| *t == tick && l.starts_with("skipped"))
            .count();
        println!("tick {tick}: {ran} pod ran the purge, {skipped} skipped");
        ok &= ran == 1 && skipped == PODS - 1;
    }
    let (old, recent): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_updated < now() - interval '30 days'), \
                count(*) FILTER (WHERE last_updated >= now() - interval '30 days') FROM emp_details",
    )
    .fetch_one(&mut setup)
    .await?;
    println!(
        "rows left: {old} older than 30 days, {recent} recent ({RECENT_ROWS} + {inserted} inserted during the run)"
    );
    ok &= old == 0 && recent == RECENT_ROWS + inserted;
    if !ok {
        anyhow::bail!("the purge did not run exactly once per tick, or touched recent rows");
    }
    println!("ok: exactly one pod purged at each tick; recent and concurrent rows untouched");
    Ok(())
}

async fn insert(conn: &mut sqlx::PgConnection, n: i64, age: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO emp_details (name, last_updated) \
         SELECT 'emp-' || g, now() - $2::interval FROM generate_series(1, $1) g",
    )
    .bind(n)
    .bind(age)
    .execute(conn)
    .await?;
    Ok(())
}

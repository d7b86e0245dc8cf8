//! lock-rowlock against a real PostgreSQL: optimistic compare-and-set under racing writers,
//! the typed conflicts, and `SELECT … FOR UPDATE` with NOWAIT, SKIP LOCKED and lock_timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lock_rowlock::{Error, Ident, RetryPolicy, RowLockTx, RowWait, Versioned, VersionedTable};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

async fn server_and_pool(max: u32) -> (dlock_fixtures::Server, PgPool) {
    let pg = dlock_fixtures::postgres()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e:#} (scripts/install-servers installs it)"));
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .connect(pg.url())
        .await
        .expect("connect");
    (pg, pool)
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql).execute(pool).await.expect(sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_writers_lose_no_update_and_conflicts_are_typed() {
    let (_pg, pool) = server_and_pool(16).await;
    exec(&pool, "CREATE TABLE inventory (id bigint PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL)").await;
    exec(
        &pool,
        "INSERT INTO inventory VALUES (1, 10000, 0), (2, 5, 0)",
    )
    .await;
    let inventory = Arc::new(VersionedTable::new("inventory").unwrap());

    // 32 writers, 5 decrements each, every one a read-modify-write on the same row.
    const WRITERS: usize = 32;
    const EACH: usize = 5;
    let policy =
        RetryPolicy::new(500, Duration::from_millis(1), Duration::from_millis(20)).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (pool, inventory) = (pool.clone(), inventory.clone());
        tasks.push(tokio::spawn(async move {
            let mut attempts = 0u32;
            for _ in 0..EACH {
                policy
                    .run(|attempt| {
                        attempts += u32::from(attempt > 1);
                        let (pool, inventory) = (pool.clone(), inventory.clone());
                        async move {
                            let mut conn = pool.acquire().await?;
                            let (stock, version): (i32, i64) =
                                sqlx::query_as("SELECT stock, version FROM inventory WHERE id = 1")
                                    .fetch_one(&mut *conn)
                                    .await?;
                            inventory
                                .update(&mut conn, Versioned { id: 1, version }, move |q| {
                                    // A lost update would show as a stock that is too high.
                                    q.push("stock = ").push_bind(stock - 1);
                                })
                                .await
                        }
                    })
                    .await
                    .expect("within 500 attempts");
            }
            attempts
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    let (stock, version): (i32, i64) =
        sqlx::query_as("SELECT stock, version FROM inventory WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let n = (WRITERS * EACH) as i64;
    assert_eq!(
        (i64::from(stock), version),
        (10000 - n, n),
        "every write counted once"
    );
    assert!(
        retries > 0,
        "32 racing writers never conflicted: the race was not exercised"
    );
    println!("{n} writes by {WRITERS} racing writers, {retries} retried attempts");

    // A stale version is a typed conflict that names both versions, and writes nothing.
    let mut conn = pool.acquire().await.unwrap();
    let read = inventory.version(&mut conn, 2).await.unwrap();
    inventory
        .update(&mut conn, read, |q| {
            q.push("stock = stock - 1");
        })
        .await
        .unwrap();
    match inventory
        .update(&mut conn, read, |q| {
            q.push("stock = 0");
        })
        .await
    {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (0, 1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    match inventory.delete(&mut conn, read).await {
        Err(Error::Conflict { current: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stock: i32 = sqlx::query_scalar("SELECT stock FROM inventory WHERE id = 2")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(stock, 4);
    let missing = Versioned { id: 99, version: 0 };
    assert!(matches!(
        inventory
            .update(&mut conn, missing, |q| {
                q.push("stock = 0");
            })
            .await,
        Err(Error::NotFound { id: 99, .. })
    ));
    // Exhausted retries carry the last conflict.
    let once = RetryPolicy::new(2, Duration::ZERO, Duration::ZERO).unwrap();
    let r = once
        .run(|_| {
            let (pool, inventory) = (pool.clone(), inventory.clone());
            async move {
                let mut conn = pool.acquire().await?;
                inventory
                    .update(&mut conn, read, |q| {
                        q.push("stock = 0");
                    })
                    .await
            }
        })
        .await;
    match r {
        Err(Error::RetriesExhausted { attempts: 2, last }) => {
            assert!(matches!(*last, Error::Conflict { .. }), "{last}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_locks_nowait_skip_locked_and_timeout_are_typed_and_end_with_the_transaction() {
    let (_pg, pool) = server_and_pool(8).await;
    exec(
        &pool,
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
    )
    .await;
    exec(
        &pool,
        "INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 10) g",
    )
    .await;
    let (accounts, id) = (Ident::new("accounts").unwrap(), Ident::new("id").unwrap());

    // The seed's transfer: lock both rows (in id order), move money, commit.
    let mut holder = RowLockTx::begin(&pool, RowWait::Wait).await.unwrap();
    assert_eq!(
        holder.lock_ids(&accounts, &id, &[7, 3, 42]).await.unwrap(),
        [3, 7]
    );
    sqlx::query("UPDATE accounts SET balance = balance - 100 WHERE id = 7")
        .execute(holder.conn())
        .await
        .unwrap();

    let mut nowait = RowLockTx::begin(&pool, RowWait::NoWait).await.unwrap();
    match nowait.lock_ids(&accounts, &id, &[3]).await {
        Err(Error::LockNotAvailable { table }) => assert_eq!(table, "accounts"),
        other => panic!("expected LockNotAvailable, got {other:?}"),
    }
    drop(nowait);

    let mut skip = RowLockTx::begin(&pool, RowWait::SkipLocked).await.unwrap();
    let got = skip
        .lock_ids(&accounts, &id, &[1, 2, 3, 4, 7])
        .await
        .unwrap();
    assert_eq!(got, [1, 2, 4], "the held rows are skipped");
    skip.rollback().await.unwrap();

    let timeout = Duration::from_millis(200);
    let mut timed = RowLockTx::begin(&pool, RowWait::Timeout(timeout))
        .await
        .unwrap();
    let started = Instant::now();
    match timed.lock_ids(&accounts, &id, &[7]).await {
        Err(Error::LockTimeout { after, .. }) => assert_eq!(after, timeout),
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= timeout && waited < Duration::from_secs(10),
        "lock_timeout 200 ms took {waited:?}"
    );
    drop(timed);

    // A waiting locker gets the row once the holder commits, and sees its write.
    let waiter = {
        let pool = pool.clone();
        let (accounts, id) = (accounts.clone(), id.clone());
        tokio::spawn(async move {
            let mut tx = RowLockTx::begin(&pool, RowWait::Wait).await.unwrap();
            let got = tx.lock_ids(&accounts, &id, &[7]).await.unwrap();
            let b: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 7")
                .fetch_one(tx.conn())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (got, b)
        })
    };
    sqlx::query("UPDATE accounts SET balance = balance + 100 WHERE id = 3")
        .execute(holder.conn())
        .await
        .unwrap();
    holder.commit().await.unwrap();
    assert_eq!(waiter.await.unwrap(), (vec![7], 900));

    // Dropped without a commit: rolled back, locks gone, the write undone.
    {
        let mut tx = RowLockTx::begin(&pool, RowWait::NoWait).await.unwrap();
        tx.lock_ids(&accounts, &id, &[5]).await.unwrap();
        sqlx::query("UPDATE accounts SET balance = 0 WHERE id = 5")
            .execute(tx.conn())
            .await
            .unwrap();
    }
    let mut again = RowLockTx::begin(&pool, RowWait::Timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(again.lock_ids(&accounts, &id, &[5]).await.unwrap(), [5]);
    let b: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 5")
        .fetch_one(again.conn())
        .await
        .unwrap();
    assert_eq!(b, 1000);
    again.commit().await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT sum(balance)::bigint FROM accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 10_000, "transfers move money, never make or lose it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_locked_batches_let_workers_purge_disjoint_rows() {
    let (_pg, pool) = server_and_pool(8).await;
    exec(
        &pool,
        "CREATE TABLE emp_details (id bigserial PRIMARY KEY, last_updated timestamptz NOT NULL)",
    )
    .await;
    exec(&pool, "INSERT INTO emp_details (last_updated) SELECT now() - interval '40 days' FROM generate_series(1, 3000)").await;
    exec(
        &pool,
        "INSERT INTO emp_details (last_updated) SELECT now() FROM generate_series(1, 500)",
    )
    .await;
    let (table, id) = (
        Ident::new("emp_details").unwrap(),
        Ident::new("id").unwrap(),
    );
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (pool, table, id) = (pool.clone(), table.clone(), id.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let mut tx = RowLockTx::begin(&pool, RowWait::SkipLocked).await.unwrap();
                let batch = tx
                    .lock_where(
                        &table,
                        &id,
                        |q| {
                            q.push("last_updated < now() - ")
                                .push_bind(30_i32)
                                .push(" * interval '1 day'");
                        },
                        Some(100),
                    )
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                let n = sqlx::query("DELETE FROM emp_details WHERE id = ANY($1)")
                    .bind(&batch)
                    .execute(tx.conn())
                    .await
                    .unwrap()
                    .rows_affected();
                assert_eq!(
                    n as usize,
                    batch.len(),
                    "a locked row was deleted by another worker"
                );
                tx.commit().await.unwrap();
                mine.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((n, all.len()), (3000, 3000), "every old row deleted once");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM emp_details")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 500, "recent rows kept");
}

#[tokio::test]
async fn bad_input_is_refused_before_the_server() {
    assert!(matches!(
        Ident::new("a;drop table x"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        VersionedTable::with_columns("t", "id", "ver sion"),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        RetryPolicy::new(0, Duration::ZERO, Duration::ZERO),
        Err(Error::InvalidInput { .. })
    ));
    // A pool that would fail to connect: the timeout is refused before any connection.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(100))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    for bad in [Duration::ZERO, Duration::from_secs(3601)] {
        assert!(matches!(
            RowLockTx::begin(&pool, RowWait::Timeout(bad)).await,
            Err(Error::InvalidInput {
                what: "lock timeout",
                ..
            })
        ));
    }
}

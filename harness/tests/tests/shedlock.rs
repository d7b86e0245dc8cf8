//! lock-shedlock against a real PostgreSQL, with rows written exactly as ShedLock writes them.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Holder, unique, with_query};
use dlock::{
    Backend, BackendExt, ErrorKind, JobOutcome, LockName, LockOptions, LockState, Renew, Wait,
};
use dlock_fixtures as fixtures;
use sqlx::{Connection, PgConnection};

fn shed_url(pg_url: &str) -> String {
    format!("shedlock+{pg_url}")
}

async fn connect(url: &str) -> Arc<dyn Backend> {
    dlock::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", dlock::redact(url)))
}

/// ShedLock's JDBC provider, database time, PostgreSQL: the insert for a new name.
const SHEDLOCK_INSERT: &str = "INSERT INTO shedlock(name, lock_until, locked_at, locked_by) \
    VALUES($1, timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $2), timezone('utc', CURRENT_TIMESTAMP), $3) \
    ON CONFLICT (name) DO UPDATE SET lock_until = timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $2), \
    locked_at = timezone('utc', CURRENT_TIMESTAMP), locked_by = $3 \
    WHERE shedlock.lock_until <= timezone('utc', CURRENT_TIMESTAMP)";
/// ShedLock's update for a known name.
const SHEDLOCK_UPDATE: &str = "UPDATE shedlock SET lock_until = timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $2), \
    locked_at = timezone('utc', CURRENT_TIMESTAMP), locked_by = $3 \
    WHERE name = $1 AND lock_until <= timezone('utc', CURRENT_TIMESTAMP)";

async fn java(conn: &mut PgConnection, sql: &str, name: &str, at_most_secs: f64) -> u64 {
    sqlx::query(sql)
        .bind(name)
        .bind(at_most_secs)
        .bind("java-host")
        .execute(conn)
        .await
        .unwrap()
        .rows_affected()
}

/// A row ShedLock wrote keeps dlock out until its `lock_until`, which dlock notices without a
/// release; while dlock holds a row ShedLock's statements change nothing; after dlock
/// releases, ShedLock acquires.
#[tokio::test]
async fn interop_with_shedlock_rows_both_ways() {
    let pg = fixtures::postgres().await.unwrap();
    let d = connect(&shed_url(pg.url())).await;
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    let n = unique("job");
    assert_eq!(java(&mut sql, SHEDLOCK_INSERT, n.as_str(), 1.5).await, 1);
    let err = d.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    let t = Instant::now();
    let g = d
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(java(&mut sql, SHEDLOCK_INSERT, n.as_str(), 60.0).await, 0);
    assert_eq!(java(&mut sql, SHEDLOCK_UPDATE, n.as_str(), 60.0).await, 0);
    let (by,): (String,) = sqlx::query_as("SELECT locked_by FROM shedlock WHERE name = $1")
        .bind(n.as_str())
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert!(by.starts_with(&lock_shedlock_hostname()), "{by}");
    assert!(g.release().await.unwrap());
    assert_eq!(java(&mut sql, SHEDLOCK_UPDATE, n.as_str(), 60.0).await, 1);
}

fn lock_shedlock_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// `at_least` keeps the row taken after an early release; a waiter gets it once it passes.
#[tokio::test]
async fn at_least_is_honoured_when_the_job_finishes_early() {
    let pg = fixtures::postgres().await.unwrap();
    let d = connect(&shed_url(pg.url())).await;
    let n = unique("atleast");
    let t = Instant::now();
    let opts = LockOptions::new()
        .with_ttl(Duration::from_secs(30))
        .with_at_least(Duration::from_millis(1500))
        .with_renew(Renew::Off);
    let g = d.acquire(&n, &opts).await.unwrap();
    assert!(g.release().await.unwrap());
    assert_eq!(
        d.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    d.acquire(
        &n,
        &LockOptions::new().with_wait(Wait::For(Duration::from_secs(10))),
    )
    .await
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}

/// Two owners on one host: a holder whose row expired and was taken over cannot unlock or
/// extend the new owner's row.
#[tokio::test]
async fn unlock_of_a_row_taken_over_changes_nothing() {
    let pg = fixtures::postgres().await.unwrap();
    let (a, b) = (
        connect(&shed_url(pg.url())).await,
        connect(&shed_url(pg.url())).await,
    );
    let n = unique("takeover");
    let old = a
        .acquire(
            &n,
            &LockOptions::new()
                .with_ttl(Duration::from_secs(1))
                .with_renew(Renew::Off),
        )
        .await
        .unwrap();
    assert_eq!(old.watch().not_held().await, LockState::Lost);
    let new = b
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    let before = row(&mut sql, &n).await;
    assert!(
        !old.release().await.unwrap(),
        "the stale holder's unlock must report not ours"
    );
    assert_eq!(
        row(&mut sql, &n).await,
        before,
        "the new owner's row must be untouched"
    );
    assert_eq!(
        a.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    assert!(new.release().await.unwrap());
}

/// `(locked_by, lock_until as text)` of a row.
async fn row(sql: &mut PgConnection, n: &LockName) -> (String, String) {
    sqlx::query_as("SELECT locked_by, lock_until::text FROM shedlock WHERE name = $1")
        .bind(n.as_str())
        .fetch_one(sql)
        .await
        .unwrap()
}

/// SIGKILL of a holder: the next run happens after `at_most`, not before.
#[tokio::test]
async fn killed_holder_frees_after_at_most_not_before() {
    let pg = fixtures::postgres().await.unwrap();
    let url = shed_url(pg.url());
    let n = unique("kill");
    let mut holder = Holder::start(&url, n.as_str(), &["--ttl", "3s", "--no-renew"]);
    holder.acquired();
    let acquired = Instant::now();
    holder.kill9();
    let d = connect(&url).await;
    d.acquire(
        &n,
        &LockOptions::new().with_wait(Wait::For(Duration::from_secs(15))),
    )
    .await
    .unwrap();
    let after = acquired.elapsed();
    eprintln!(
        "shedlock-postgres SIGKILL failover: {after:?} after the holder's grant (at_most 3s)"
    );
    assert!(after >= Duration::from_millis(2800), "{after:?}");
    assert!(after < Duration::from_secs(5), "{after:?}");
}

/// Time comes from the database: a holder whose clock is two hours ahead writes the same
/// `lock_until` as anyone else.
#[tokio::test]
async fn skewed_holder_clock_changes_nothing() {
    let pg = fixtures::postgres().await.unwrap();
    let url = shed_url(pg.url());
    let n = unique("skew");
    use dlock_compare::scenario::holder::{ClockSkew, HoldSpec, Holder, find_libfaketime};
    let lib = find_libfaketime().expect(
        "libfaketime is missing: run scripts/install-servers (Debian: apt-get install faketime)",
    );
    let spec = HoldSpec {
        url: url.clone(),
        name: n.as_str().to_string(),
        ttl: Duration::from_secs(30),
        wait_forever: false,
        skew: Some(ClockSkew {
            lib,
            offset_ms: 2 * 3_600_000,
        }),
        peer: None,
        mode: Default::default(),
    };
    let mut holder = Holder::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_dlock-under-test")),
        &spec,
    )
    .expect("start dlock hold");
    let ev = holder
        .acquired(Duration::from_secs(30))
        .await
        .expect("dlock hold")
        .expect("the skewed holder got no lock within 30 s");
    assert!(
        ev.clock_ahead_ms.is_some_and(|ahead| ahead > 3_600_000),
        "the holder's clock must really be skewed: {ev:?}"
    );
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    let left: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (lock_until - timezone('utc', CURRENT_TIMESTAMP)))::float8 FROM shedlock WHERE name = $1",
    )
    .bind(n.as_str())
    .fetch_one(&mut sql)
    .await
    .unwrap();
    assert!((20.0..=31.0).contains(&left), "lock_until is {left} s away");
    let d = connect(&url).await;
    assert_eq!(
        d.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    holder.finish().await;
}

/// Unusual but legal table and column names are quoted; a name longer than the column is
/// `InvalidName`; a missing table with `create_table=false` is an error.
#[tokio::test]
async fn identifiers_names_and_table_creation() {
    let pg = fixtures::postgres().await.unwrap();
    let url = with_query(
        &shed_url(pg.url()),
        "table=Job%20%22Locks%22%3B%20x&name_column=Lock%20Name&lock_until_column=until&locked_at_column=at&locked_by_column=by",
    );
    let d = connect(&url).await;
    let n = unique("ident");
    let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM \"Job \"\"Locks\"\"; x\" WHERE \"Lock Name\" = $1")
            .bind(n.as_str())
            .fetch_one(&mut sql)
            .await
            .unwrap();
    assert_eq!(count, 1);
    assert!(g.release().await.unwrap());
    let long = LockName::new("x".repeat(65)).unwrap();
    assert_eq!(
        d.acquire(&long, &LockOptions::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidName
    );
    d.acquire(&LockName::new("y".repeat(64)).unwrap(), &LockOptions::new())
        .await
        .unwrap();
    let err = dlock::connect(&with_query(
        &shed_url(pg.url()),
        "table=missing_table&create_table=false",
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Optional fencing through a side table Java never reads.
#[tokio::test]
async fn fencing_tokens_increase() {
    let pg = fixtures::postgres().await.unwrap();
    let d = connect(&with_query(&shed_url(pg.url()), "fencing=table")).await;
    let n = unique("fence");
    let mut last = 0;
    for _ in 0..3 {
        let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
        let t = g.token().unwrap().get();
        assert!(t > last);
        last = t;
        assert!(g.release().await.unwrap());
    }
}

/// The job runner on the table: runs, skips while held elsewhere (by ShedLock itself too).
#[tokio::test]
async fn run_exclusive_on_the_table() {
    let pg = fixtures::postgres().await.unwrap();
    let d = connect(&shed_url(pg.url())).await;
    let n = unique("purge");
    let out: JobOutcome<u32, String> = d
        .run_exclusive(&n, Duration::from_secs(60), None, |_| async { Ok(1) })
        .await
        .unwrap();
    assert_eq!(out, JobOutcome::Ran(1));
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    assert_eq!(java(&mut sql, SHEDLOCK_INSERT, n.as_str(), 60.0).await, 1);
    let out: JobOutcome<u32, String> = d
        .run_exclusive(&n, Duration::from_secs(60), None, |_| async { Ok(2) })
        .await
        .unwrap();
    assert!(out.skipped());
}

/// A client that waited (and so started its LISTEN connection) leaves no connection behind
/// once it is dropped.
#[tokio::test]
async fn dropped_client_closes_its_connections() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let url = shed_url(pg.url());
    let holder = connect(&url).await;
    let n = unique("leak");
    let _g = holder.acquire(&n, &LockOptions::new()).await.unwrap();
    let waiter = connect(&url).await;
    let r = waiter
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_millis(300))),
        )
        .await;
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    let before = shedlock_connections(&mut sql).await;
    drop(waiter);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = shedlock_connections(&mut sql).await;
        // what is left belongs to the holder's pool
        if now < before && now <= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{before} connections before the drop, still {now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shedlock_connections(sql: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dlock-shedlock'",
    )
    .fetch_one(sql)
    .await
    .unwrap()
}

mod redis_flavour {
    //! `shedlock+redis://` against keys written exactly as ShedLock's Redis provider writes
    //! them: `SET job-lock:<env>:<name> "ADDED:<instant>@<host>" NX PX <ms>`.

    use super::*;

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn java_set(conn: &mut redis::aio::MultiplexedConnection, key: &str, px: u64) -> bool {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg("ADDED:2026-11-26T02:00:00.000Z@java-host")
            .arg("NX")
            .arg("PX")
            .arg(px)
            .query_async(conn)
            .await
            .unwrap();
        r.is_some()
    }

    #[tokio::test]
    async fn interop_with_shedlock_keys_both_ways() {
        let r = fixtures::redis().await.unwrap();
        let url = format!("shedlock+{}?env=prod", r.url());
        let d = connect(&url).await;
        let mut conn = raw(r.url()).await;
        let n = unique("job");
        let key = format!("job-lock:prod:{}", n.as_str());
        assert!(java_set(&mut conn, &key, 1500).await);
        assert_eq!(
            d.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
            ErrorKind::Contended
        );
        let t = Instant::now();
        let g = d
            .acquire(
                &n,
                &LockOptions::new().with_wait(Wait::For(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        let value: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            value.starts_with("ADDED:")
                && value.contains(&format!("Z@{}", lock_shedlock_hostname())),
            "{value}"
        );
        assert!(
            !java_set(&mut conn, &key, 60_000).await,
            "ShedLock must not get a key dlock holds"
        );
        assert!(g.release().await.unwrap());
        assert!(
            java_set(&mut conn, &key, 60_000).await,
            "ShedLock acquires after dlock released"
        );
    }

    /// The job runner on ShedLock's Redis keys: runs, then skips while ShedLock holds the key.
    #[tokio::test]
    async fn run_exclusive_on_redis_keys() {
        let r = fixtures::redis().await.unwrap();
        let d = connect(&format!("shedlock+{}", r.url())).await;
        let mut conn = raw(r.url()).await;
        let n = unique("purge");
        let out: JobOutcome<u32, String> = d
            .run_exclusive(&n, Duration::from_secs(60), None, |_| async { Ok(1) })
            .await
            .unwrap();
        assert_eq!(out, JobOutcome::Ran(1));
        assert!(
            java_set(
                &mut conn,
                &format!("job-lock:default:{}", n.as_str()),
                60_000
            )
            .await
        );
        let out: JobOutcome<u32, String> = d
            .run_exclusive(&n, Duration::from_secs(60), None, |_| async { Ok(2) })
            .await
            .unwrap();
        assert!(out.skipped());
    }

    #[tokio::test]
    async fn early_unlock_shortens_the_expiry_to_at_least() {
        let r = fixtures::redis().await.unwrap();
        let d = connect(&format!("shedlock+{}", r.url())).await;
        let mut conn = raw(r.url()).await;
        let n = unique("atleast");
        let opts = LockOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_at_least(Duration::from_secs(5))
            .with_renew(Renew::Off);
        let g = d.acquire(&n, &opts).await.unwrap();
        assert!(g.release().await.unwrap());
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("job-lock:default:{}", n.as_str()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (3_000..=5_000).contains(&pttl),
            "PTTL {pttl} ms after an early unlock with at_least 5 s"
        );
    }

    #[tokio::test]
    async fn never_deletes_a_key_that_is_not_ours() {
        let r = fixtures::redis().await.unwrap();
        let d = connect(&format!("shedlock+{}", r.url())).await;
        let mut conn = raw(r.url()).await;
        let n = unique("notours");
        let key = format!("job-lock:default:{}", n.as_str());
        let g = d
            .acquire(
                &n,
                &LockOptions::new()
                    .with_ttl(Duration::from_millis(300))
                    .with_renew(Renew::Off),
            )
            .await
            .unwrap();
        assert_eq!(g.watch().not_held().await, LockState::Lost);
        // wait for the key to expire on the server, then ShedLock takes it
        let deadline = Instant::now() + Duration::from_secs(5);
        while !java_set(&mut conn, &key, 60_000).await {
            assert!(Instant::now() < deadline, "the key never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!g.release().await.unwrap(), "not ours any more");
        let value: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            value.ends_with("@java-host"),
            "ShedLock's key must be untouched: {value}"
        );
    }
}

/// An acquisition dropped while its upsert is still running in the server must not leave the
/// row locked: the upsert is finished first and the row then given back. (A release sent
/// beside the unfinished upsert finds no row — the insert is not committed yet — and the row
/// the insert then takes would stay locked until its `lock_until`.) A trigger makes every
/// insert into this test's table take 300 ms, so the drop lands mid-upsert every time.
#[tokio::test]
async fn an_acquisition_dropped_mid_upsert_leaves_the_row_free() {
    let pg = fixtures::postgres().await.unwrap();
    let table = format!("slow_upsert_{}", std::process::id());
    let url = with_query(&shed_url(pg.url()), &format!("table={table}"));
    let first = connect(&url).await;
    let mut sql = PgConnection::connect(pg.url()).await.unwrap();
    for stmt in [
        "CREATE OR REPLACE FUNCTION dlock_test_slow_insert() RETURNS trigger LANGUAGE plpgsql \
         AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$"
            .to_string(),
        format!(
            "CREATE TRIGGER slow_insert BEFORE INSERT ON {table} \
             FOR EACH ROW EXECUTE FUNCTION dlock_test_slow_insert()"
        ),
    ] {
        sqlx::query(&stmt).execute(&mut sql).await.unwrap();
    }
    let n = unique("mid-upsert");
    let long = LockOptions::new()
        .with_ttl(Duration::from_secs(60))
        .with_renew(Renew::Off);
    let dropped = tokio::time::timeout(Duration::from_millis(100), first.acquire(&n, &long)).await;
    assert!(
        dropped.is_err(),
        "the upsert should still have been running"
    );
    let second = connect(&url).await;
    let waited = Instant::now();
    let g = second
        .acquire(
            &n,
            &long.clone().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await
        .expect("the dropped acquisition's row must be given back, not kept for 60 s");
    eprintln!("granted {:?} after the drop", waited.elapsed());
    assert!(g.release().await.unwrap());
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut sql)
        .await
        .unwrap();
}

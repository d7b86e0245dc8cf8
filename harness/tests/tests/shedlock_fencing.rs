//! lock-shedlock's fencing tokens (`?fencing=on`) against a real PostgreSQL and a real Redis:
//! tokens strictly increase across release, expiry and clients, and what Java ShedLock reads
//! (the `shedlock` table, the `job-lock:<env>:<name>` key) stays exactly as without fencing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{unique, with_query};
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Renew, Wait};
use dlock_fixtures::{self as fixtures, RedisOptions};
use sqlx::{Connection, PgConnection};

async fn connect(url: &str) -> Arc<dyn Backend> {
    dlock::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", dlock::redact(url)))
}

fn waiting() -> LockOptions {
    LockOptions::new().with_wait(Wait::For(Duration::from_secs(10)))
}

/// Takes `n` on `b` (waiting), returns the token and releases.
async fn token_of_a_turn(b: &Arc<dyn Backend>, n: &LockName) -> u64 {
    let g = b.acquire(n, &waiting()).await.unwrap();
    let t = g.token().expect("a fencing grant carries a token").get();
    assert!(g.release().await.unwrap());
    t
}

/// Tokens from `a` and `b` (two clients of one fenced URL, `b` may spell the option
/// differently): strictly increasing across a release, another client, and a lease that
/// expired without a release. Returns the last token.
async fn tokens_increase(a: &Arc<dyn Backend>, b: &Arc<dyn Backend>, n: &LockName) -> u64 {
    for c in [a, b] {
        let caps = c.capabilities();
        assert!(caps.fencing, "{caps}");
    }
    let t1 = token_of_a_turn(a, n).await;
    let t2 = token_of_a_turn(a, n).await;
    let t3 = token_of_a_turn(b, n).await;
    // Expiry: a grant that is never released, then another client's grant after it expired.
    let short = LockOptions::new()
        .with_ttl(Duration::from_millis(400))
        .with_renew(Renew::Off);
    let expired = a.acquire(n, &short).await.unwrap();
    let t4 = expired.token().unwrap().get();
    assert_eq!(expired.watch().not_held().await, LockState::Lost);
    let t5 = token_of_a_turn(b, n).await;
    let t6 = token_of_a_turn(a, n).await;
    let all = [t1, t2, t3, t4, t5, t6];
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert!(
        !expired.release().await.unwrap(),
        "the expired holder's late release must report not ours"
    );
    t6
}

mod redis_flavour {
    use super::*;

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn cmd<T: redis::FromRedisValue>(
        conn: &mut redis::aio::MultiplexedConnection,
        args: &[&str],
    ) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(conn).await.unwrap()
    }

    /// What Java ShedLock writes (`SET key value NX PX ms`).
    async fn java_set(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
        let r: Option<String> = cmd(
            conn,
            &[
                "SET",
                key,
                "ADDED:2026-12-07T02:00:00.000Z@java-host",
                "NX",
                "PX",
                "60000",
            ],
        )
        .await;
        r.is_some()
    }

    /// Should count up across release, expiry and clients, in a hash field that outlives the
    /// lock key; `fencing=key` is the same counter.
    #[tokio::test]
    async fn tokens_strictly_increase_and_outlive_the_key() {
        let r = fixtures::redis().await.unwrap();
        let env = format!("fence{}", std::process::id());
        let url = format!("shedlock+{}?env={env}", r.url());
        let (a, b) = (
            connect(&with_query(&url, "fencing=on")).await,
            connect(&with_query(&url, "fencing=key")).await,
        );
        let n = unique("fence");
        let last = tokens_increase(&a, &b, &n).await;
        let mut conn = raw(r.url()).await;
        let key = format!("job-lock:{env}:{}", n.as_str());
        let exists: i64 = cmd(&mut conn, &["EXISTS", &key]).await;
        assert_eq!(exists, 0, "released: no lock key left");
        let hash = format!("job-lock:{env}:");
        let counter: u64 = cmd(&mut conn, &["HGET", &hash, n.as_str()]).await;
        assert_eq!(counter, last, "the counter outlives the lock key");
        let ttl: i64 = cmd(&mut conn, &["TTL", &hash]).await;
        assert_eq!(ttl, -1, "the counter hash never expires");
    }

    /// Should write the key and value Java ShedLock reads exactly as without fencing, leave
    /// nothing else under the env's prefix but the counter hash, and count nothing while Java
    /// holds the key.
    #[tokio::test]
    async fn the_java_visible_key_is_unchanged() {
        let r = fixtures::redis().await.unwrap();
        let env = format!("golden{}", std::process::id());
        let base = format!("shedlock+{}?env={env}", r.url());
        let fenced = connect(&with_query(&base, "fencing=on")).await;
        let plain = connect(&base).await;
        assert!(!plain.capabilities().fencing);
        let mut conn = raw(r.url()).await;
        let n = unique("golden");
        let key = format!("job-lock:{env}:{}", n.as_str());
        let hash = format!("job-lock:{env}:");
        let opts = LockOptions::new().with_ttl(Duration::from_secs(30));
        let mut shapes = Vec::new();
        for backend in [&plain, &fenced] {
            let g = backend.acquire(&n, &opts).await.unwrap();
            let value: String = cmd(&mut conn, &["GET", &key]).await;
            let kind: String = cmd(&mut conn, &["TYPE", &key]).await;
            let pttl: i64 = cmd(&mut conn, &["PTTL", &key]).await;
            assert!((25_000..=30_000).contains(&pttl), "PTTL {pttl}");
            assert!(!java_set(&mut conn, &key).await, "Java must see it taken");
            shapes.push((kind, value_shape(&value)));
            assert!(g.release().await.unwrap());
        }
        assert_eq!(shapes[0], shapes[1], "fencing changed what Java reads");
        assert_eq!(shapes[0].0, "string");
        let mut keys: Vec<String> = cmd(&mut conn, &["KEYS", &format!("job-lock:{env}:*")]).await;
        keys.sort();
        assert_eq!(keys, vec![hash.clone()], "only the counter hash stays");
        // While Java holds the key: contended, and the counter does not move.
        let before: u64 = cmd(&mut conn, &["HGET", &hash, n.as_str()]).await;
        assert!(java_set(&mut conn, &key).await);
        let err = fenced.acquire(&n, &LockOptions::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
        let after: u64 = cmd(&mut conn, &["HGET", &hash, n.as_str()]).await;
        assert_eq!(before, after);
    }

    /// `ADDED:<yyyy-MM-ddTHH:mm:ss.SSS>Z@<hostname>:<pid>:<32 hex>`, with the digits replaced by
    /// `9` and the unique part by `u` (what must not differ between two acquisitions).
    fn value_shape(v: &str) -> String {
        let (added, owner) = v.split_once("Z@").unwrap_or_else(|| panic!("{v}"));
        let (host_pid, unique) = owner.rsplit_once(':').unwrap();
        assert_eq!(unique.len(), 32, "{v}");
        assert!(unique.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
        let digits: String = added
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(digits, "ADDED:9999-99-99T99:99:99.999", "{v}");
        format!("{digits}Z@{host_pid}:u")
    }

    /// Should keep tokens increasing across a restart of a Redis without persistence, which
    /// forgets the counter: a name's counter starts again from the server clock.
    #[tokio::test]
    async fn a_restart_without_persistence_does_not_repeat_tokens() {
        let r = fixtures::managed_redis(RedisOptions::default())
            .await
            .unwrap();
        let url = format!("shedlock+{}?fencing=on", r.url());
        let n = unique("restart");
        let before = token_of_a_turn(&connect(&url).await, &n).await;
        r.restart().await.unwrap();
        let after = token_of_a_turn(&connect(&url).await, &n).await;
        assert!(after > before, "{after} after {before}");
    }

    /// Should refuse a fencing value it does not know, naming the accepted ones.
    #[tokio::test]
    async fn a_bad_fencing_value_is_invalid_url() {
        let r = fixtures::redis().await.unwrap();
        for bad in ["table", "yes", ""] {
            let url = format!("shedlock+{}?fencing={bad}", r.url());
            let err = dlock::connect(&url).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{err}");
            assert!(
                err.to_string()
                    .contains("expected on or off (key means on, none means off)"),
                "{err}"
            );
        }
    }
}

mod postgres_flavour {
    use super::*;

    /// Should count up across release, expiry and clients; `fencing=table` is the same counter.
    #[tokio::test]
    async fn tokens_strictly_increase() {
        let pg = fixtures::postgres().await.unwrap();
        let url = format!("shedlock+{}", pg.url());
        let (a, b) = (
            connect(&with_query(&url, "fencing=on")).await,
            connect(&with_query(&url, "fencing=table")).await,
        );
        let n = unique("fence");
        let last = tokens_increase(&a, &b, &n).await;
        let mut sql = PgConnection::connect(pg.url()).await.unwrap();
        let stored: i64 =
            sqlx::query_scalar("SELECT token FROM dlock_shedlock_fencing WHERE name = $1")
                .bind(n.as_str())
                .fetch_one(&mut sql)
                .await
                .unwrap();
        assert_eq!(stored as u64, last);
    }

    /// Should leave the `shedlock` table as Java ShedLock reads it: the same four columns, a
    /// row dlock holds refuses Java's acquire, and Java takes it once dlock released.
    #[tokio::test]
    async fn the_shedlock_table_is_what_java_reads() {
        let pg = fixtures::postgres().await.unwrap();
        let table = format!("fenced_{}", std::process::id());
        let d = connect(&with_query(
            &format!("shedlock+{}", pg.url()),
            &format!("fencing=on&table={table}"),
        ))
        .await;
        let n = unique("java");
        let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
        assert!(g.token().is_some());
        let mut sql = PgConnection::connect(pg.url()).await.unwrap();
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&mut sql)
        .await
        .unwrap();
        let columns: Vec<(&str, &str)> = columns
            .iter()
            .map(|(c, t)| (c.as_str(), t.as_str()))
            .collect();
        assert_eq!(
            columns,
            [
                ("name", "character varying"),
                ("lock_until", "timestamp without time zone"),
                ("locked_at", "timestamp without time zone"),
                ("locked_by", "character varying"),
            ]
        );
        // ShedLock's update for a known name (JDBC provider, database time).
        let java_update = format!(
            "UPDATE {table} SET lock_until = timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => 60), \
             locked_at = timezone('utc', CURRENT_TIMESTAMP), locked_by = 'java-host' \
             WHERE name = $1 AND lock_until <= timezone('utc', CURRENT_TIMESTAMP)"
        );
        assert_eq!(
            java(&mut sql, &java_update, &n).await,
            0,
            "Java must not take a row dlock holds"
        );
        assert!(g.release().await.unwrap());
        assert_eq!(
            java(&mut sql, &java_update, &n).await,
            1,
            "Java takes the row after dlock released"
        );
        let err = d.acquire(&n, &LockOptions::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&mut sql)
            .await
            .unwrap();
    }

    /// Should count the token in the grant's own transaction: a grant whose token is slow to
    /// come (a trigger on the fencing table sleeps 1 s for client `a` only, ttl 300 ms) must
    /// not end up with a larger token than the grant that follows it. Counted in a second
    /// statement after the grant, `b` took the expired row and its token first.
    #[tokio::test]
    async fn a_slow_token_does_not_outrank_the_next_grant() {
        let pg = fixtures::postgres().await.unwrap();
        let fence = format!("slow_fence_{}", std::process::id());
        let url = with_query(
            &format!("shedlock+{}", pg.url()),
            &format!("fencing=on&fencing_table={fence}"),
        );
        let b = connect(&url).await;
        let a = connect(&with_query(&url, "options[dlock_test.slow]=on")).await;
        let mut sql = PgConnection::connect(pg.url()).await.unwrap();
        for stmt in [
            "CREATE OR REPLACE FUNCTION dlock_test_slow_fence() RETURNS trigger LANGUAGE plpgsql \
             AS $$ BEGIN IF current_setting('dlock_test.slow', true) = 'on' THEN \
             PERFORM pg_sleep(1); END IF; RETURN NEW; END $$"
                .to_string(),
            format!(
                "CREATE TRIGGER slow_fence BEFORE INSERT ON {fence} \
                 FOR EACH ROW EXECUTE FUNCTION dlock_test_slow_fence()"
            ),
        ] {
            sqlx::query(&stmt).execute(&mut sql).await.unwrap();
        }
        let n = unique("slow");
        let short = LockOptions::new()
            .with_ttl(Duration::from_millis(300))
            .with_renew(Renew::Off);
        let first = tokio::spawn({
            let n = n.clone();
            async move { a.acquire(&n, &short).await.unwrap() }
        });
        // `a` has taken the row and sleeps in the trigger, its token not yet counted.
        let sleeping = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' \
             AND query LIKE '%{fence}%'"
        );
        common::eventually(
            "a's token statement sleeps",
            Duration::from_secs(10),
            || {
                let (sleeping, url) = (sleeping.clone(), pg.url().to_string());
                async move {
                    let mut c = PgConnection::connect(&url).await?;
                    let n: i64 = sqlx::query_scalar(&sleeping).fetch_one(&mut c).await?;
                    Ok(n == 1)
                }
            },
        )
        .await
        .unwrap();
        let next = b.acquire(&n, &waiting()).await.unwrap();
        let first = first.await.unwrap();
        let (first_token, next_token) = (first.token().unwrap().get(), next.token().unwrap().get());
        assert!(
            next_token > first_token,
            "the later grant got token {next_token}, the earlier one {first_token}"
        );
        assert!(next.release().await.unwrap());
        sqlx::query(&format!("DROP TABLE {fence}"))
            .execute(&mut sql)
            .await
            .unwrap();
    }

    async fn java(sql: &mut PgConnection, statement: &str, n: &LockName) -> u64 {
        sqlx::query(statement)
            .bind(n.as_str())
            .execute(sql)
            .await
            .unwrap()
            .rows_affected()
    }

    /// Should refuse a fencing value it does not know, naming the accepted ones.
    #[tokio::test]
    async fn a_bad_fencing_value_is_invalid_url() {
        let err = dlock::connect("shedlock+postgres://u@127.0.0.1:1/db?fencing=key")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{err}");
        assert!(
            err.to_string()
                .contains("expected on or off (table means on, none means off)"),
            "{err}"
        );
    }
}

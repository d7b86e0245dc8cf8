//! Golden vectors against a real PostgreSQL: for each `?key=` scheme, the advisory-lock key
//! dlock takes for a fixed name is a pinned number, which a plain SQL session then finds
//! taken. Without a server, lock-postgres's own `golden` tests pin the statements and the
//! client-computed keys; this file pins the server-computed ones (`hashtext`,
//! `hashtextextended`) and checks the whole path from name to lock.
//!
//! A failing vector means two dlock versions (or dlock and another client of the same scheme)
//! would no longer exclude each other: a breaking change (see `CHANGELOG.md`).

use dlock::{LockName, LockOptions};
use dlock_fixtures as fixtures;
use sqlx::Connection;

/// `hashtext(n)` and `hashtextextended(n, 0)` as PostgreSQL 15.18 (Debian 15.18-0+deb12u1,
/// UTF8 database) returned them, measured once with
/// `SELECT n, hashtext(n), hashtextextended(n, 0) FROM unnest(ARRAY[…]) AS n`. The functions
/// hash the text's bytes, so names beyond ASCII depend on the database encoding.
const SERVER_HASHES: &[(&str, i32, i64)] = &[
    ("emp_details_purge", 1628838343, -759358342382085689),
    ("nightly-purge", -247506500, -5955984887965066820),
    ("my-lock", 577534659, 7574172786964069059),
    ("jobs/purge", 2104169907, -2168693740591704653),
    ("a", 1075015857, 3591986179850072241),
    ("ключ", -884514432, 2835016810653770112),
    ("🔒", -576118370, 6537472898664833438),
    ("0123456789abcdef", 1934520157, -8138476988306395299),
];

/// The key sqlx's `PgAdvisoryLock::new(name)` locks: HKDF-SHA256 computed with Python's hmac
/// and hashlib (no salt, info `SQLx (Rust) Postgres advisory lock`, first 8 bytes
/// little-endian); the same vectors as lock-postgres's `golden` tests.
const SQLX_KEYS: &[(&str, i64)] = &[
    ("emp_details_purge", -8222262978726185169),
    ("nightly-purge", 3722585716469689562),
    ("ключ", 6648385615309933817),
];

/// One vector: the URL option, the name, and the key a SQL session locks to collide with it.
enum Key {
    Big(i64),
    Pair(i32, i32),
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Whether a plain SQL session can take `key` now (and gives it straight back).
async fn sql_can_lock(sql: &mut sqlx::PgConnection, key: &Key) -> bool {
    let got: bool = match key {
        Key::Big(k) => sqlx::query_scalar("SELECT pg_try_advisory_lock($1::int8)")
            .bind(k)
            .fetch_one(&mut *sql)
            .await
            .unwrap(),
        Key::Pair(a, b) => sqlx::query_scalar("SELECT pg_try_advisory_lock($1::int4, $2::int4)")
            .bind(a)
            .bind(b)
            .fetch_one(&mut *sql)
            .await
            .unwrap(),
    };
    if got {
        let unlock = match key {
            Key::Big(k) => sqlx::query_scalar("SELECT pg_advisory_unlock($1::int8)").bind(k),
            Key::Pair(a, b) => sqlx::query_scalar("SELECT pg_advisory_unlock($1::int4, $2::int4)")
                .bind(a)
                .bind(b),
        };
        let freed: bool = unlock.fetch_one(&mut *sql).await.unwrap();
        assert!(freed);
    }
    got
}

/// The server still computes the pinned hashes (an encoding or server change would show here
/// first), and for every scheme dlock's lock on a fixed name is the pinned key.
#[tokio::test]
async fn each_key_scheme_locks_the_pinned_key() {
    let pg = fixtures::postgres().await.unwrap();
    let mut sql = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    let encoding: String = sqlx::query_scalar("SHOW server_encoding")
        .fetch_one(&mut sql)
        .await
        .unwrap();
    let vectors: Vec<&(&str, i32, i64)> = SERVER_HASHES
        .iter()
        .filter(|(n, _, _)| encoding == "UTF8" || n.is_ascii())
        .collect();
    for (n, hashtext, extended) in &vectors {
        let (h, e): (i32, i64) = sqlx::query_as("SELECT hashtext($1), hashtextextended($1, 0)")
            .bind(n)
            .fetch_one(&mut sql)
            .await
            .unwrap();
        assert_eq!((h, e), (*hashtext, *extended), "server hashes of {n:?}");
    }

    let mut cases: Vec<(&str, &str, Key)> = Vec::new();
    for (n, hashtext, extended) in &vectors {
        cases.push(("key=hashtext", n, Key::Big(i64::from(*hashtext))));
        cases.push(("key=hashtextextended", n, Key::Big(*extended)));
    }
    for (n, k) in SQLX_KEYS {
        cases.push(("key=sqlx", n, Key::Big(*k)));
    }
    cases.push(("key=int", "-42", Key::Big(-42)));
    cases.push(("key=int", "9223372036854775807", Key::Big(i64::MAX)));
    cases.push(("key=pair", "7,-3", Key::Pair(7, -3)));
    // No option: hashtextextended, the default.
    cases.push(("", "nightly-purge", Key::Big(-5955984887965066820)));

    for (query, n, key) in &cases {
        let url = if query.is_empty() {
            pg.url().to_string()
        } else {
            with_query(pg.url(), query)
        };
        let backend = dlock::connect(&url).await.unwrap();
        let guard = backend
            .acquire(&LockName::new(*n).unwrap(), &LockOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{query} {n:?}: {e}"));
        assert!(
            !sql_can_lock(&mut sql, key).await,
            "{query} {n:?}: dlock holds the lock but a SQL session got the pinned key"
        );
        assert!(guard.release().await.unwrap());
        assert!(
            sql_can_lock(&mut sql, key).await,
            "{query} {n:?}: the pinned key stays taken after dlock released"
        );
    }
}

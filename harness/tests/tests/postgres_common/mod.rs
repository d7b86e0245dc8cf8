//! Helpers shared by the PostgreSQL test files: a connected backend, a waiting client in the
//! background, and waiting until the server shows a number of waiting sessions.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::{Backend, LockName, LockOptions, Wait};
use sqlx::Connection;

/// A backend for `url`; panics (failing the test) if it cannot connect.
pub async fn connect(url: &str) -> Arc<dyn Backend> {
    dlock::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", dlock::redact(url)))
}

/// Options that wait as long as it takes.
pub fn forever() -> LockOptions {
    LockOptions::new().with_wait(Wait::Forever)
}

/// A client waiting (forever) for `n` in the background; yields when it was granted.
pub fn spawn_waiter(
    b: &Arc<dyn Backend>,
    n: &LockName,
) -> tokio::task::JoinHandle<(Instant, dlock::Guard)> {
    let (b, n) = (b.clone(), n.clone());
    tokio::spawn(async move {
        let g = b.acquire(&n, &forever()).await.unwrap();
        (Instant::now(), g)
    })
}

/// Waits until `n` sessions wait for an advisory lock on the server.
pub async fn wait_for_waiters(url: &str, n: i64) {
    wait_for_waiter_count(url, |w| w >= n, "no waiter showed up in pg_locks").await
}

/// Polls the server's lock table (a server-side event we cannot subscribe to) until the
/// number of sessions waiting for an advisory lock satisfies `ok`, for at most 10 s.
pub async fn wait_for_waiter_count(url: &str, ok: impl Fn(i64) -> bool, failure: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if ok(waiting) {
            return;
        }
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

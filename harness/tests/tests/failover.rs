//! The lock client follows a promoted primary: a PostgreSQL URL naming the primary and its
//! replica (`target_session_attrs=read-write`), a ShedLock-PostgreSQL one, and a
//! `redis+sentinel://` URL. Real servers: the primary is SIGKILLed, the replica promoted, and
//! the next lock lands on the new primary.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock::{ErrorKind, LockOptions, LockState};
use dlock_fixtures::postgres::simple_query;
use dlock_fixtures::sentinel::command;
use dlock_fixtures::{self as fixtures, SentinelOptions};

async fn one(addr: std::net::SocketAddr, sql: &str) -> Result<Option<String>> {
    let rows = simple_query(addr, "postgres", "postgres", sql).await?;
    Ok(rows.first().and_then(|r| r.first().cloned()).flatten())
}

/// Advisory locks: the guard on the dead primary is lost; before the promotion no host takes
/// writes, so connecting fails naming both; after it, the lock is taken on the promoted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locks_follow_the_promoted_replica() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let url = pair.url();
    let r = pair.replica().addr().context("replica")?;
    let backend = dlock::connect(&url).await?;
    let name = common::unique("failover");
    let g = backend.acquire(&name, &LockOptions::new()).await?;
    pair.primary().kill().await?;
    common::eventually(
        "the guard to turn lost",
        Duration::from_secs(20),
        || async { Ok(g.state() == LockState::Lost) },
    )
    .await?;
    let err = dlock::connect(&url)
        .await
        .err()
        .context("a standby took the lock")?;
    ensure!(err.kind() == ErrorKind::Connection, "{err}");
    ensure!(err.to_string().contains("does not take writes"), "{err}");

    pair.promote().await?;
    let g2 = backend.acquire(&name, &LockOptions::new()).await?;
    ensure!(g2.state() == LockState::Held);
    let held = one(
        r,
        "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'",
    )
    .await?;
    ensure!(
        held.as_deref() == Some("1"),
        "advisory locks on the new primary: {held:?}"
    );
    ensure!(g2.release().await?);

    // ShedLock's table: a new backend picks the promoted primary.
    let shed = dlock::connect(&format!("shedlock+{url}")).await?;
    let g3 = shed
        .acquire(&name, &LockOptions::new().with_ttl(Duration::from_secs(30)))
        .await?;
    let rows = one(
        r,
        &format!("SELECT count(*)::text FROM shedlock WHERE name = '{name}' AND lock_until > timezone('utc', now())"),
    )
    .await?;
    ensure!(
        rows.as_deref() == Some("1"),
        "shedlock rows on the new primary: {rows:?}"
    );
    ensure!(g3.release().await?);
    Ok(())
}

/// `redis+sentinel://`: after the Sentinels promote the replica, the next acquisition (on a
/// backend connected before the failover) is made on the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_locks_follow_the_sentinels() -> Result<()> {
    common::init_tracing("info");
    let set = fixtures::redis_sentinel(SentinelOptions::default()).await?;
    let r = set.replica().addr().context("replica")?;
    let backend = dlock::connect(&set.url()).await?;
    let before = common::unique("before");
    let g = backend.acquire(&before, &LockOptions::new()).await?;
    ensure!(g.release().await?);
    set.primary().kill().await?;
    set.wait_promoted(Duration::from_secs(30)).await?;
    let name = common::unique("after");
    let g = backend.acquire(&name, &LockOptions::new()).await?;
    let key = format!("dlock:{name}");
    let exists = command(r, &["EXISTS", &key]).await?;
    ensure!(
        exists.text() == "1",
        "the key is not on the new master: {exists:?}"
    );
    ensure!(g.release().await?);
    Ok(())
}

/// MariaDB `GET_LOCK`: the guard on the dead primary is lost; before the promotion the only
/// host left is a read-only replica, so connecting fails saying so; after it, the lock is
/// taken on the promoted one, and its fencing token is above the old holder's (the counter
/// table replicated before the kill).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_locks_follow_the_promoted_replica() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::mariadb_replica_pair().await?;
    let url = format!("{}&fencing=table", pair.url());
    let backend = dlock::connect(&url).await?;
    let name = common::unique("failover");
    let g = backend.acquire(&name, &LockOptions::new()).await?;
    let before = g.token().context("a fencing token")?;
    pair.wait_replicating(Duration::from_secs(30)).await?;
    pair.primary().kill().await?;
    common::eventually(
        "the guard to turn lost",
        Duration::from_secs(20),
        || async { Ok(g.state() == LockState::Lost) },
    )
    .await?;
    let err = dlock::connect(&url)
        .await
        .err()
        .context("a read-only replica took the lock")?;
    ensure!(err.kind() == ErrorKind::Connection, "{err}");
    ensure!(err.to_string().contains("does not take writes"), "{err}");

    pair.promote().await?;
    let g2 = backend.acquire(&name, &LockOptions::new()).await?;
    ensure!(g2.state() == LockState::Held);
    let after = g2.token().context("a fencing token")?;
    ensure!(
        after > before,
        "token {after} after the failover, {before} before"
    );
    let held = pair
        .sql(
            pair.primary(),
            &format!("SELECT IS_USED_LOCK('{}') IS NOT NULL", name.as_str()),
        )
        .await?;
    ensure!(
        held.lines().nth(1) == Some("1"),
        "the lock is not on the new primary: {held:?}"
    );
    ensure!(g2.release().await?);
    Ok(())
}

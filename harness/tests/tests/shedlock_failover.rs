//! `shedlock+postgres://` follows a promoted primary while connected: real servers (a
//! PostgreSQL primary and its streaming replica), the primary SIGKILLed, the replica promoted,
//! and the next acquisition on the backend connected before the failover lands on the new
//! primary. A connection the pool opens on a standby is closed unused; a URL that names only
//! standbys is refused with `NoUsableHost`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dlock::hosts::NoUsableHost;
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Wait};
use dlock_fixtures::postgres::simple_query;
use dlock_fixtures::{self as fixtures, PgReplicaPair};

/// Generous: a failover on this machine takes well under a second (a ping, a refused
/// connection, the host search, a new connection).
const BOUND: Duration = Duration::from_secs(30);

fn opts() -> LockOptions {
    LockOptions::new().with_ttl(Duration::from_secs(30))
}

/// How many unexpired rows for `name` the server at `addr` has.
async fn rows(addr: SocketAddr, name: &LockName) -> Result<String> {
    let sql = format!(
        "SELECT count(*)::text FROM shedlock WHERE name = '{name}' \
         AND lock_until > timezone('utc', now())"
    );
    let rows = simple_query(addr, "postgres", "postgres", &sql).await?;
    rows.first()
        .and_then(|r| r.first().cloned())
        .flatten()
        .context("no count")
}

/// A backend on both members, with pooled connections to the primary (a lock taken and
/// released through it).
async fn connected(pair: &PgReplicaPair) -> Result<std::sync::Arc<dyn Backend>> {
    let backend = dlock::connect(&format!("shedlock+{}", pair.url())).await?;
    let warm = common::unique("warm");
    ensure!(backend.acquire(&warm, &opts()).await?.release().await?);
    Ok(backend)
}

/// Acquires `name` on `backend` within [`BOUND`], checks that the row is on `primary`,
/// releases it, and returns how long the acquisition took.
async fn acquire_on(
    backend: &dyn Backend,
    name: &LockName,
    primary: SocketAddr,
) -> Result<Duration> {
    let started = Instant::now();
    let g = tokio::time::timeout(BOUND, backend.acquire(name, &opts()))
        .await
        .context("no acquisition within the bound")??;
    let took = started.elapsed();
    let on_primary = rows(primary, name).await?;
    ensure!(on_primary == "1", "rows on the new primary: {on_primary}");
    ensure!(g.release().await?);
    Ok(took)
}

/// A backend connected before the failover takes its next lock on the promoted replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_backend_follows_the_promoted_replica() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let backend = connected(&pair).await?;
    pair.primary().kill().await?;
    pair.promote().await?;
    let new_primary = pair.primary().addr().context("primary")?;
    let name = common::unique("followed");
    let took = acquire_on(&*backend, &name, new_primary).await?;
    eprintln!(
        "first acquisition after the promotion: {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    // And again, on connections that are all on the new primary now.
    acquire_on(&*backend, &name, new_primary).await?;
    Ok(())
}

/// A holder and a waiter, each on a backend connected before the failover (the holder's row
/// replicated before the kill): the holder releases on the new primary, and the waiter, whose
/// LISTEN connection followed too, is granted there well before the row's `lock_until`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_and_a_waiter_follow_the_failover() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let (holder, waiter) = (connected(&pair).await?, connected(&pair).await?);
    let name = common::unique("handover");
    let g = holder.acquire(&name, &opts()).await?;
    let waiting = {
        let (waiter, name) = (waiter.clone(), name.clone());
        tokio::spawn(async move {
            let g = waiter
                .acquire(&name, &opts().with_wait(Wait::Forever))
                .await?;
            anyhow::Ok((Instant::now(), g))
        })
    };
    let old = pair.primary().addr().context("primary")?;
    common::eventually("the waiter to listen", BOUND, || async move {
        let rows = simple_query(
            old,
            "postgres",
            "postgres",
            "SELECT count(*)::text FROM pg_stat_activity \
                 WHERE application_name = 'dlock-shedlock' AND query LIKE 'LISTEN%'",
        )
        .await?;
        Ok(rows.first().and_then(|r| r.first().cloned()).flatten() == Some("1".into()))
    })
    .await?;
    common::eventually("the replica to replay all WAL", BOUND, || async {
        Ok(pair.wal_positions().await?.2)
    })
    .await?;
    pair.primary().kill().await?;
    pair.promote().await?;
    let new_primary = pair.primary().addr().context("primary")?;
    ensure!(g.state() == LockState::Held, "{:?}", g.state());
    let released = Instant::now();
    ensure!(g.release().await?, "the release found no row of ours");
    let (granted, g2) = tokio::time::timeout(BOUND, waiting)
        .await
        .context("no grant")???;
    let after = granted - released;
    eprintln!(
        "the waiter was granted {:.0} ms after the release",
        after.as_secs_f64() * 1000.0
    );
    ensure!(
        after < opts().ttl() / 2,
        "granted {after:?} after the release: the row's expiry, not the release, woke it"
    );
    ensure!(rows(new_primary, &name).await? == "1");
    ensure!(g2.release().await?);
    Ok(())
}

/// The old primary is back as a standby on its old port before the backend notices the
/// failover: the pool's next new connection lands there and is closed unused (a write there
/// would fail as read-only), and the lock is taken on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_on_a_standby_is_not_used() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let backend = connected(&pair).await?;
    pair.primary().kill().await?;
    pair.promote().await?;
    pair.reseed().await?;
    let standby = pair.replica().addr().context("standby")?;
    let in_recovery = simple_query(
        standby,
        "postgres",
        "postgres",
        "SELECT pg_is_in_recovery()::text",
    )
    .await?;
    ensure!(
        in_recovery
            .first()
            .and_then(|r| r.first().cloned())
            .flatten()
            == Some("true".into()),
        "the old primary is not a standby: {in_recovery:?}"
    );
    let new_primary = pair.primary().addr().context("primary")?;
    let name = common::unique("standby");
    acquire_on(&*backend, &name, new_primary).await?;
    Ok(())
}

/// Every host a standby: refused at connect, with a `NoUsableHost` that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_of_standbys_is_refused() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let port = pair.replica().port().context("replica port")?;
    for url in [
        format!(
            "shedlock+postgres://postgres@127.0.0.1:{port}/postgres?target_session_attrs=read-write"
        ),
        format!(
            "shedlock+postgres://postgres@127.0.0.1:{port},127.0.0.1:{port}/postgres?target_session_attrs=primary"
        ),
    ] {
        let err = dlock::connect(&url)
            .await
            .err()
            .with_context(|| format!("{url}: a standby was accepted"))?;
        ensure!(err.kind() == ErrorKind::Connection, "{err}");
        let why = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<NoUsableHost>())
            .with_context(|| format!("not a NoUsableHost: {err:?}"))?;
        ensure!(why.only_standbys(), "{why:?}");
        ensure!(err.to_string().contains("no host takes writes"), "{err}");
    }
    Ok(())
}

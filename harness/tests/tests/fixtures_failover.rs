//! Tests of the failover fixtures: a PostgreSQL primary with a streaming replica, a MariaDB
//! primary with a replica, and a Redis primary with a replica and Sentinels. Real servers: a row and a key written on the
//! primary are read on the replica, the replica takes over, and nothing is left behind.

mod common;
mod fixtures_common;

use fixtures_common::assert_gone;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock_fixtures::postgres::simple_query;
use dlock_fixtures::sentinel::{Resp, command};
use dlock_fixtures::{self as fixtures, SentinelOptions};

/// The single value of `sql` on `addr`.
async fn one(addr: std::net::SocketAddr, sql: &str) -> Result<Option<String>> {
    let rows = simple_query(addr, "postgres", "postgres", sql).await?;
    Ok(rows.first().and_then(|r| r.first().cloned()).flatten())
}

/// The replica streams what the primary commits, refuses writes until promoted, and takes
/// writes after `promote` with the primary dead; dropping the pair leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_streams_and_is_promoted() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::postgres_replica_pair().await?;
    let (p, r) = (
        pair.primary().addr().context("primary")?,
        pair.replica().addr().context("replica")?,
    );
    ensure!(one(r, "SELECT pg_is_in_recovery()::text").await?.as_deref() == Some("true"));
    simple_query(
        p,
        "postgres",
        "postgres",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (7)",
    )
    .await?;
    common::eventually(
        "the row to reach the replica",
        Duration::from_secs(10),
        || async {
            Ok(one(r, "SELECT max(v)::text FROM t")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("7"))
        },
    )
    .await?;
    let (written, replayed, caught_up) = pair.wal_positions().await?;
    ensure!(caught_up, "replica at {replayed}, primary at {written}");
    let refused = simple_query(r, "postgres", "postgres", "INSERT INTO t VALUES (8)").await;
    ensure!(refused.is_err(), "a standby accepted a write");

    pair.primary().kill().await?;
    let took = pair.promote().await?;
    ensure!(took < Duration::from_secs(30));
    ensure!(one(r, "SELECT pg_is_in_recovery()::text").await?.as_deref() == Some("false"));
    simple_query(r, "postgres", "postgres", "INSERT INTO t VALUES (8)").await?;
    ensure!(one(r, "SELECT count(*)::text FROM t").await?.as_deref() == Some("2"));
    ensure!(pair.url().contains("target_session_attrs=read-write"));

    ensure!(
        pair.primary().addr() == Some(r),
        "the pair follows the promotion"
    );

    // The old primary comes back as a replica of the new one.
    pair.reseed().await?;
    ensure!(pair.replica().addr() == Some(p));
    common::eventually(
        "the row on the reseeded replica",
        Duration::from_secs(10),
        || async {
            Ok(one(p, "SELECT count(*)::text FROM t")
                .await
                .ok()
                .flatten()
                .as_deref()
                == Some("2"))
        },
    )
    .await?;
    pair.replica().pid().context("the reseeded replica runs")?;

    let dir = pair.dir().to_path_buf();
    let gone: Vec<(u32, u16)> = pair
        .members()
        .iter()
        .map(|s| (s.pid().unwrap_or(0), s.port().unwrap_or(0)))
        .collect();
    drop(pair);
    for (pid, port) in gone {
        assert_gone(pid, port, None).await?;
    }
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

/// The replica copies the primary; after a SIGKILL of the primary the Sentinels promote the
/// replica; dropping everything leaves no process and no directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinels_promote_the_replica() -> Result<()> {
    common::init_tracing("info");
    let set = fixtures::redis_sentinel(SentinelOptions::default()).await?;
    let (p, r) = (
        set.primary().addr().context("primary")?,
        set.replica().addr().context("replica")?,
    );
    ensure!(set.master().await? == p);
    command(p, &["SET", "k", "v"]).await?;
    common::eventually(
        "the key to reach the replica",
        Duration::from_secs(10),
        || set.replica_has("k"),
    )
    .await?;
    ensure!(
        command(r, &["SET", "k2", "v"]).await.is_err(),
        "a replica accepted a write"
    );
    ensure!(set.url().starts_with("redis+sentinel://127.0.0.1:"));

    set.primary().kill().await?;
    let took = set.wait_promoted(Duration::from_secs(30)).await?;
    ensure!(
        set.master().await? == r,
        "the Sentinels name {}",
        set.master().await?
    );
    ensure!(command(r, &["SET", "k2", "v"]).await? == Resp::Simple("OK".into()));
    tracing::info!("promoted {took:?} after the kill");
    ensure!(set.primary().addr() == Some(r));
    // The old master rejoins as a replica and gets the new master's data.
    let took = set.rejoin().await?;
    tracing::info!("rejoined in {took:?}");
    ensure!(set.replica().addr() == Some(p));
    common::eventually(
        "k2 on the rejoined replica",
        Duration::from_secs(10),
        || set.replica_has("k2"),
    )
    .await?;

    let dir = set
        .primary()
        .dir()
        .and_then(|d| d.parent())
        .context("dir")?
        .to_path_buf();
    let pids: Vec<(u32, u16)> = [set.primary(), set.replica()]
        .into_iter()
        .chain(set.sentinels())
        .map(|s| (s.pid().unwrap_or(0), s.port().unwrap_or(0)))
        .collect();
    drop(set);
    for (pid, port) in pids {
        assert_gone(pid, port, None).await?;
    }
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

/// The MariaDB replica applies what the primary writes and refuses writes; promoted with the
/// primary dead, it takes writes; the old primary, reseeded, replicates everything from the
/// new one; a second failover goes back; dropping the pair leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replica_replicates_and_fails_over_twice() -> Result<()> {
    common::init_tracing("info");
    let pair = fixtures::mariadb_replica_pair().await?;
    let dir = pair.dir().to_path_buf();
    let first = pair.primary().port();
    pair.sql(
        pair.primary(),
        "CREATE TABLE dlock.t (id INT PRIMARY KEY); INSERT INTO dlock.t VALUES (1)",
    )
    .await?;
    pair.wait_replicating(Duration::from_secs(30)).await?;
    let count = |out: String| out.lines().nth(1).unwrap_or("").to_string();
    let n = count(
        pair.sql(pair.replica(), "SELECT COUNT(*) FROM dlock.t")
            .await?,
    );
    ensure!(n == "1", "the replica has {n} rows");
    // Root ignores read_only; an ordinary user would be refused. The replica says it is one.
    let ro = count(
        pair.sql(pair.replica(), "SELECT @@global.read_only")
            .await?,
    );
    ensure!(ro == "1", "replica read_only = {ro}");

    for round in 2..=3 {
        pair.primary().kill().await?;
        let took = pair.promote().await?;
        ensure!(took < Duration::from_secs(30));
        ensure!(pair.primary().port() != first || round == 3);
        let ro = count(
            pair.sql(pair.primary(), "SELECT @@global.read_only")
                .await?,
        );
        ensure!(ro == "0", "promoted read_only = {ro}");
        pair.sql(
            pair.primary(),
            &format!("INSERT INTO dlock.t VALUES ({round})"),
        )
        .await?;
        pair.reseed().await?;
        let n = count(
            pair.sql(pair.replica(), "SELECT COUNT(*) FROM dlock.t")
                .await?,
        );
        ensure!(
            n == round.to_string(),
            "round {round}: the reseeded replica has {n} rows"
        );
    }
    ensure!(
        pair.primary().port() == first,
        "two failovers go back to the first"
    );
    let gone: Vec<(u32, u16)> = pair
        .members()
        .iter()
        .filter_map(|s| Some((s.pid()?, s.port()?)))
        .collect();
    ensure!(gone.len() == 2, "both members run: {gone:?}");
    drop(pair);
    for (pid, port) in gone {
        assert_gone(pid, port, None).await?;
    }
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

//! lock-postgres learns that its lock sessions ended the moment the server's connections end,
//! not at its next periodic session check (issue 24): a killed server and a reset connection
//! turn the guards `Lost` within [`LEARN_BOUND`], far below the check interval. The session
//! watch (one connection per backend with a read always pending) is what sees it; without it
//! (`session_watch=off`, the behaviour before) these tests fail: the guards turn `Lost` only
//! at the first check, [`CHECK_INTERVAL`] after the grant.

mod common;
mod postgres_common;

use common::{eventually, unique, with_query};
use postgres_common::{connect, forever, spawn_waiter, wait_for_waiters};

use std::time::{Duration, Instant};

use dlock::{LockOptions, LockState, StateWatch};
use dlock_fixtures as fixtures;
use dlock_fixtures::faults::{Fault, FaultProxy};
use sqlx::Connection;

/// The longest session deadline the defaults allow (500 ms below the server's earliest
/// detection, 6 s): the periodic checks are as far apart as they can be, so learning early
/// is told apart from a check that happened to come soon.
const OPTIONS: &str = "session_deadline=5s";

/// The periodic session checks of [`OPTIONS`]: every `session_deadline / 3`.
const CHECK_INTERVAL: Duration = Duration::from_millis(5000 / 3);

/// How soon after the fault the guard must be `Lost`: generous for a loaded 2-core machine
/// (the watch takes about a millisecond), far below [`CHECK_INTERVAL`].
const LEARN_BOUND: Duration = Duration::from_millis(400);

/// Waits (at most 10 s) until `w` is `Lost`; returns when this process learned it.
async fn lost_at(w: &mut StateWatch, what: &str) -> Instant {
    let state = tokio::time::timeout(Duration::from_secs(10), w.lost_or_released())
        .await
        .unwrap_or_else(|_| panic!("{what}: still {:?} after 10 s", w.state()));
    assert_eq!(state, LockState::Lost, "{what}");
    w.state_since().into_std()
}

/// How many connections named `app` the server has.
async fn connections(url: &str, app: &str) -> anyhow::Result<i64> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(app)
    .fetch_one(&mut c)
    .await?;
    c.close().await?;
    Ok(n)
}

/// Polls the server (its sessions are no event we can subscribe to) until it has `n`
/// connections named `app`.
async fn until_connections(url: &str, app: &str, n: i64) {
    eventually(
        &format!("{n} connection(s) named {app}"),
        Duration::from_secs(10),
        || async move { Ok(connections(url, app).await? == n) },
    )
    .await
    .unwrap();
}

/// SIGKILL of the server (its whole process group: every session ends, each socket gets a
/// FIN): the guards on the shared lock session and on a dedicated one (a lock taken by
/// waiting) turn `Lost` within [`LEARN_BOUND`] — before the server could be back to grant
/// anyone anything. After the restart the backend works again, its session watch comes back
/// with the next lock session, and a second kill is learned as fast.
#[tokio::test]
async fn a_killed_server_turns_every_guard_lost_at_once() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let url = with_query(pg.url(), OPTIONS);
    let d = connect(&url).await;
    let (shared_name, waited_name) = (unique("kill-shared"), unique("kill-waited"));
    let on_shared = d.acquire(&shared_name, &LockOptions::new()).await.unwrap();
    // A lock taken by waiting lives on a dedicated session of its own.
    let other = connect(&url).await;
    let blocker = other
        .acquire(&waited_name, &LockOptions::new())
        .await
        .unwrap();
    let waiter = {
        let (d, n) = (d.clone(), waited_name.clone());
        tokio::spawn(async move { d.acquire(&n, &forever()).await.unwrap() })
    };
    wait_for_waiters(pg.url(), 1).await;
    assert!(blocker.release().await.unwrap());
    let on_dedicated = waiter.await.unwrap();
    drop(other);
    // The watch is opened beside the first lock session; `connect` does not wait for it if
    // it is slower.
    until_connections(pg.url(), "dlock-session-watch", 1).await;

    let (mut w1, mut w2) = (on_shared.watch(), on_dedicated.watch());
    let killed = Instant::now();
    pg.kill().await.unwrap();
    let shared_lost = lost_at(&mut w1, "the guard on the shared session").await;
    let dedicated_lost = lost_at(&mut w2, "the guard on a dedicated session").await;
    eprintln!(
        "postgres server SIGKILL: shared-session guard Lost after {:?}, dedicated-session guard after {:?} (checks every {CHECK_INTERVAL:?})",
        shared_lost - killed,
        dedicated_lost - killed
    );
    for (what, at) in [("shared", shared_lost), ("dedicated", dedicated_lost)] {
        assert!(
            at - killed < LEARN_BOUND,
            "the guard on the {what} session turned Lost {:?} after the kill",
            at - killed
        );
    }
    drop((on_shared, on_dedicated));

    pg.start().await.unwrap();
    let again = d
        .acquire(&unique("kill-again"), &LockOptions::new())
        .await
        .expect("a new lock session after the restart");
    // The new lock session brings the watch back; once the server shows it, a kill is seen
    // through it (before that, the failed reconnection checks the sessions just as fast).
    until_connections(pg.url(), "dlock-session-watch", 1).await;
    let mut w = again.watch();
    let killed = Instant::now();
    pg.kill().await.unwrap();
    let lost = lost_at(&mut w, "the guard after the restart").await;
    eprintln!(
        "postgres second SIGKILL: guard Lost after {:?}",
        lost - killed
    );
    assert!(
        lost - killed < LEARN_BOUND,
        "the guard turned Lost {:?} after the second kill",
        lost - killed
    );
}

/// An RST on the holder's connections (fault proxy between holder and server; the server
/// sees the RST at the same instant and frees the lock for a waiter on a direct connection):
/// the guard turns `Lost` within [`LEARN_BOUND`] of the reset. Who is first, the holder
/// learning or the waiter's grant, is a race the holder cannot win every time (the README
/// calls this overlap inherent); the test prints the gap.
#[tokio::test]
async fn a_reset_connection_turns_the_guard_lost_with_the_servers_release() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let addr = pg.addr().expect("managed server");
    let proxy = FaultProxy::start(addr).await.unwrap();
    let via_proxy = with_query(
        &pg.url()
            .replace(&addr.to_string(), &proxy.addr().to_string()),
        OPTIONS,
    );
    let holder = connect(&via_proxy).await;
    let other = connect(pg.url()).await;
    let n = unique("reset");
    let g = holder.acquire(&n, &LockOptions::new()).await.unwrap();
    let waiter = spawn_waiter(&other, &n);
    wait_for_waiters(pg.url(), 1).await;
    // The holder's watch and the other client's.
    until_connections(pg.url(), "dlock-session-watch", 2).await;
    let mut w = g.watch();
    let reset = Instant::now();
    proxy.set(Fault::Reset);
    let lost = lost_at(&mut w, "the guard behind the reset").await;
    let (granted, g2) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the server frees a reset session's lock")
        .unwrap();
    let gap_ms = if lost <= granted {
        -((granted - lost).as_secs_f64() * 1e3)
    } else {
        (lost - granted).as_secs_f64() * 1e3
    };
    eprintln!(
        "postgres connection reset: guard Lost after {:?}, waiter granted after {:?}, holder learned {gap_ms:+.2} ms relative to the grant (checks every {CHECK_INTERVAL:?})",
        lost - reset,
        granted - reset
    );
    assert!(
        lost - reset < LEARN_BOUND,
        "the guard turned Lost {:?} after the reset",
        lost - reset
    );
    drop(g2);
}

/// The watch costs one connection per backend, which closes with the backend, and none with
/// `session_watch=off`.
#[tokio::test]
async fn one_watch_connection_per_backend_and_none_when_off() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let d = connect(pg.url()).await;
    // Opened beside the lock session (normally the first of the two to be open).
    until_connections(pg.url(), "dlock-session-watch", 1).await;
    assert_eq!(
        connections(pg.url(), "dlock-lock-session").await.unwrap(),
        1
    );
    let off = connect(&with_query(pg.url(), "session_watch=off")).await;
    assert_eq!(
        connections(pg.url(), "dlock-session-watch").await.unwrap(),
        1
    );
    assert_eq!(
        connections(pg.url(), "dlock-lock-session").await.unwrap(),
        2
    );
    drop(d);
    until_connections(pg.url(), "dlock-session-watch", 0).await;
    until_connections(pg.url(), "dlock-lock-session", 1).await;
    drop(off);
}

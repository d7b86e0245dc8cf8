//! lock-postgres against a real PostgreSQL from the fixtures: exclusion, shared mode, waits
//! and their cancellation, a transaction pooler refused, kept waiting sessions, other
//! processes, interoperability with plain SQL and the key schemes. Crashes, lost sessions and
//! network faults are in `postgres_faults.rs`; the helpers in `postgres_common/`.

mod common;
mod postgres_common;

use common::{Holder, dlock, unique, with_query};
use postgres_common::{connect, forever, spawn_waiter, wait_for_waiters};

use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::{Backend, ErrorKind, LockMode, LockName, LockOptions, LockState, Wait};
use dlock_fixtures as fixtures;
use dlock_fixtures::pgbouncer::PgBouncerOptions;
use sqlx::Connection;

/// Two clients exclude each other; release hands the lock to a waiter.
#[tokio::test]
async fn two_clients_exclude_each_other_and_hand_over() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let (a, b) = (connect(pg.url()).await, connect(pg.url()).await);
    let n = unique("excl");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = b.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    // a waiter is woken by the server the moment the lock is released
    let waiter = spawn_waiter(&b, &n);
    wait_for_waiters(pg.url(), 1).await;
    let released = Instant::now();
    assert!(g.release().await.unwrap());
    let (granted, g2) = waiter.await.unwrap();
    assert!(
        granted - released < Duration::from_secs(1),
        "{:?}",
        granted - released
    );
    assert_eq!(g2.state(), LockState::Held);
    assert!(g2.release().await.unwrap());
}

/// A process of this one cannot take a lock it already holds (session locks are re-entrant
/// on the server; dlock must not be).
#[tokio::test]
async fn one_process_is_not_reentrant() {
    let pg = fixtures::postgres().await.unwrap();
    let a = connect(pg.url()).await;
    let n = unique("reentrant");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = a.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    assert_eq!(
        a.acquire(&n, &shared).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    assert!(g.release().await.unwrap());
    // the refused attempts did not leave extra grants behind
    let other = connect(pg.url()).await;
    other.acquire(&n, &LockOptions::new()).await.unwrap();
}

/// Shared holders coexist, across clients and within one; exclusive waits for all of them.
#[tokio::test]
async fn shared_mode() {
    let pg = fixtures::postgres().await.unwrap();
    let (a, b) = (connect(pg.url()).await, connect(pg.url()).await);
    let n = unique("shared");
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    let s1 = a.acquire(&n, &shared).await.unwrap();
    let s2 = a.acquire(&n, &shared).await.unwrap();
    let s3 = b.acquire(&n, &shared).await.unwrap();
    assert_eq!(
        b.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    for g in [s1, s2, s3] {
        assert!(g.release().await.unwrap());
    }
    b.acquire(&n, &LockOptions::new()).await.unwrap();
}

/// A bounded wait ends in `Timeout`, after the wait and not much later.
#[tokio::test]
async fn bounded_wait_times_out() {
    let pg = fixtures::postgres().await.unwrap();
    let (a, b) = (connect(pg.url()).await, connect(pg.url()).await);
    let n = unique("timeout");
    let _g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let t = Instant::now();
    let err = b
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_millis(300))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(5));
}

/// Cancel safety: a waiting acquire dropped mid-wait never leaves the lock held.
#[tokio::test]
async fn dropped_wait_never_leaves_the_lock_held() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let (a, b, c) = (
        connect(pg.url()).await,
        connect(pg.url()).await,
        connect(pg.url()).await,
    );
    let n = unique("cancel");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let opts = forever();
    let wait = b.acquire(&n, &opts);
    let r = tokio::select! {
        r = wait => Some(r),
        _ = wait_for_waiters(pg.url(), 1) => None,
    };
    assert!(r.is_none(), "the wait cannot finish while the lock is held");
    // the wait future is dropped now; release right after, racing the server-side waiter
    assert!(g.release().await.unwrap());
    let g = c
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await
        .expect("the abandoned waiter must not keep the lock");
    assert!(g.release().await.unwrap());
}

/// Try-acquires on the shared session dropped after 1 to 5 polls (so mid-statement: the
/// first poll sends it) should never leave a grant behind: afterwards another client gets the
/// lock, and the canceller's own session still works.
#[tokio::test]
async fn cancelled_try_acquires_never_leave_a_grant_behind() {
    use std::task::Poll;
    let pg = fixtures::postgres().await.unwrap();
    let (a, b) = (connect(pg.url()).await, connect(pg.url()).await);
    let n = unique("cancel-try");
    let (mut granted, mut cancelled) = (0, 0);
    let try_only = LockOptions::new();
    for i in 0..300u64 {
        let polls = i % 5 + 1;
        let mut acquire = a.acquire(&n, &try_only);
        let mut outcome = None;
        for _ in 0..polls {
            // One poll, by hand: counting polls, not time, decides where it is dropped.
            match std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await {
                Poll::Ready(r) => {
                    outcome = Some(r);
                    break;
                }
                Poll::Pending => tokio::task::yield_now().await,
            }
        }
        drop(acquire);
        match outcome {
            Some(Ok(g)) => {
                granted += 1;
                assert!(g.release().await.unwrap());
            }
            // A grant of an earlier cancelled try that is still being undone.
            Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::Contended, "{e}"),
            None => cancelled += 1,
        }
    }
    eprintln!("{granted} granted, {cancelled} cancelled");
    assert!(
        cancelled > 0,
        "no try was cancelled: every acquisition finished within its polls"
    );
    // Undoing a late grant happens in the background: wait for it, bounded.
    let wait = LockOptions::new().with_wait(Wait::For(Duration::from_secs(5)));
    let g = b
        .acquire(&n, &wait)
        .await
        .expect("a cancelled try must not keep the lock");
    assert!(g.release().await.unwrap());
    let g = a
        .acquire(&n, &wait)
        .await
        .expect("the canceller still works");
    assert_eq!(g.state(), LockState::Held);
    assert!(g.release().await.unwrap());
}

/// Behind a transaction-pooling PgBouncer `connect` should fail with a clear Unsupported
/// error that names the pooler — whichever order the pool reuses its server connections in,
/// and with a single one — so that nothing is ever locked on a shared server session.
#[tokio::test]
async fn a_transaction_pooler_is_detected_and_refused() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let pool = |server_connections, round_robin| PgBouncerOptions {
        server_connections,
        round_robin,
    };
    // In turn: the lock session's consecutive statements reach the two server sessions in
    // turn, which its own checks see at open (the probe may see it too).
    refused_behind(&pg, pool(2, true), "", None).await;
    // PgBouncer's default, most recently released first, and a pool of one: every statement
    // of the lone lock session reaches one server session, and only the pooler probe (the
    // next client, handed that same server session) can tell. With two server connections
    // the session watch is off: its connection's one message at open (sqlx's ping) is another
    // client's transaction, and one that lands between the lock session's last statement and
    // the probe's takes that server session first. A single server connection cannot be
    // taken from the probe, only delayed.
    refused_behind(
        &pg,
        pool(2, false),
        "session_watch=off",
        Some("pooler probe"),
    )
    .await;
    refused_behind(&pg, pool(1, false), "", Some("pooler probe")).await;
    // Nothing was locked through the poolers, and the server itself works.
    let mut direct = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    let advisory: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            .fetch_one(&mut direct)
            .await
            .unwrap();
    assert_eq!(advisory, 0);
    let g = connect(pg.url())
        .await
        .acquire(&unique("pooled"), &LockOptions::new())
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
}

/// Starts a PgBouncer with `options` in front of `pg` (a fresh one: no client of an earlier
/// case still using the pool), makes its pool hold exactly its server connections, all idle
/// and known, and has `dlock::connect` (with `query`) refused through it; `by` must appear
/// in the error when set: which check caught it.
async fn refused_behind(
    pg: &fixtures::Server,
    options: PgBouncerOptions,
    query: &str,
    by: Option<&str>,
) {
    let bouncer = fixtures::pgbouncer::start_with(pg, options).await.unwrap();
    // Each client holds a server connection in an open transaction, so the pool must open
    // every one it may have (and cannot open more); then all are released, in this order.
    let mut clients = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..options.server_connections {
        let mut c = sqlx::PgConnection::connect(bouncer.url()).await.unwrap();
        let row = sqlx::raw_sql("BEGIN; SELECT pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .unwrap();
        ours.push(sqlx::Row::get::<i32, _>(&row, 0));
        clients.push(c);
    }
    for mut c in clients {
        sqlx::raw_sql("COMMIT").execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    }
    // What the server sees: exactly those sessions, all idle (besides this one).
    let mut direct = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    let before = server_sessions(&mut direct).await;
    ours.sort_unstable();
    assert_eq!(
        before.iter().map(|s| s.0).collect::<Vec<_>>(),
        ours,
        "{before:?}"
    );
    assert!(before.iter().all(|s| s.2 == "idle"), "{before:?}");
    let err = match dlock::connect(&with_query(bouncer.url(), query)).await {
        Err(e) => e,
        Ok(_) => panic!(
            "connected through a transaction pooler ({options:?}, {query:?}); server \
             sessions (pid, application_name, state) before: {before:?}, now: {:?}",
            server_sessions(&mut direct).await
        ),
    };
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{options:?}: {err}");
    let msg = err.to_string();
    assert!(msg.contains("pooling proxy"), "{options:?}: {msg}");
    if let Some(by) = by {
        assert!(
            msg.contains(by),
            "{options:?}: caught, but not by {by}: {msg}"
        );
    }
    eprintln!("{options:?} {query:?}: {msg}");
}

/// The server's client sessions other than `direct`'s: pid, application_name, state.
async fn server_sessions(direct: &mut sqlx::PgConnection) -> Vec<(i32, String, String)> {
    sqlx::query_as(
        "SELECT pid, coalesce(application_name, ''), coalesce(state, '') FROM pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid",
    )
    .fetch_all(direct)
    .await
    .unwrap()
}

/// One wait on `n` by `waiter` while `holder` holds it: returns the server pid of the session
/// that waited (it holds the lock next), after both have released.
async fn one_wait(
    pg_url: &str,
    holder: &Arc<dyn Backend>,
    waiter: &Arc<dyn Backend>,
    n: &LockName,
) -> i32 {
    let g = holder.acquire(n, &LockOptions::new()).await.unwrap();
    let w = spawn_waiter(waiter, n);
    wait_for_waiters(pg_url, 1).await;
    let mut conn = sqlx::PgConnection::connect(pg_url).await.unwrap();
    let pid: i32 =
        sqlx::query_scalar("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(g.release().await.unwrap());
    let (_, g) = w.await.unwrap();
    assert!(g.release().await.unwrap());
    pid
}

/// Whether server process `pid` is still there.
async fn backend_exists(pg_url: &str, pid: i32) -> bool {
    let mut conn = sqlx::PgConnection::connect(pg_url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// The dedicated session of a released waiting acquisition is kept for the next wait (by
/// default), closed after `idle_timeout`, and not kept with `idle_sessions=0`.
#[tokio::test]
async fn released_waiting_sessions_are_kept_for_the_next_wait() {
    // Managed: the waiter pids below must be ours only.
    let pg = fixtures::managed_postgres().await.unwrap();
    let holder = connect(pg.url()).await;
    let n = unique("kept");

    let kept = connect(pg.url()).await;
    let first = one_wait(pg.url(), &holder, &kept, &n).await;
    let second = one_wait(pg.url(), &holder, &kept, &n).await;
    assert_eq!(
        first, second,
        "the second wait should reuse the first one's session"
    );

    let closing = connect(&with_query(pg.url(), "idle_sessions=0")).await;
    let first = one_wait(pg.url(), &holder, &closing, &n).await;
    let second = one_wait(pg.url(), &holder, &closing, &n).await;
    assert_ne!(first, second, "idle_sessions=0 keeps no session");

    let short = connect(&with_query(pg.url(), "idle_timeout=1s")).await;
    let pid = one_wait(pg.url(), &holder, &short, &n).await;
    let released = Instant::now();
    assert!(backend_exists(pg.url(), pid).await, "kept after release");
    common::eventually(
        "the kept session closes after idle_timeout",
        Duration::from_secs(10),
        || async { Ok(!backend_exists(pg.url(), pid).await) },
    )
    .await
    .unwrap();
    assert!(
        released.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        released.elapsed()
    );
}

/// A kept session whose server process went away meanwhile is replaced by a new one: the
/// next wait still gets the lock.
#[tokio::test]
async fn a_kept_session_that_died_is_replaced() {
    let pg = fixtures::managed_postgres().await.unwrap();
    let (holder, waiter) = (connect(pg.url()).await, connect(pg.url()).await);
    let n = unique("kept-dead");
    let pid = one_wait(pg.url(), &holder, &waiter, &n).await;
    let mut conn = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ended);
    let next = one_wait(pg.url(), &holder, &waiter, &n).await;
    assert_ne!(next, pid);
}

/// A lock granted after a wait longer than the session deadline should be Held, dated by
/// a session check at the grant, not by when the waiting request was sent (it used to start
/// out past its deadline and turn Lost at once).
#[tokio::test]
async fn a_grant_after_a_long_wait_is_held() {
    // Managed: the waiter count below must not see other tests' waiters.
    let pg = fixtures::managed_postgres().await.unwrap();
    let url = with_query(pg.url(), "session_deadline=1s&check_timeout=500ms");
    let (a, b) = (connect(&url).await, connect(&url).await);
    let n = unique("long-wait");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let waiter = spawn_waiter(&b, &n);
    wait_for_waiters(pg.url(), 1).await;
    // The wait must outlast the 1 s session deadline: this is the length of the wait, not a
    // synchronisation.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(g.release().await.unwrap());
    let (_, g2) = waiter.await.unwrap();
    assert_eq!(g2.state(), LockState::Held);
    // Stays held through several session checks (every deadline/3).
    let changed = tokio::time::timeout(Duration::from_secs(2), g2.not_held()).await;
    assert!(changed.is_err(), "the guard left Held: {changed:?}");
    assert!(g2.release().await.unwrap());
}

/// Exclusion across processes with `dlock run` and `dlock hold`.
#[tokio::test]
async fn exclusion_across_processes() {
    let pg = fixtures::postgres().await.unwrap();
    let n = unique("proc");
    let mut holder = Holder::start(pg.url(), n.as_str(), &[]);
    holder.acquired();
    let (code, err) = dlock(&["run", pg.url(), n.as_str(), "--", "true"]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains(n.as_str()), "{err}");
    let (events, code) = holder.finish();
    assert_eq!(code, Some(0));
    assert_eq!(events.last().unwrap()["event"], "released");
    let (code, err) = dlock(&["run", pg.url(), n.as_str(), "--", "sh", "-c", "exit 7"]);
    assert_eq!(code, Some(7), "{err}");
}

/// `?key=hashtext` and SQL callers writing `pg_try_advisory_lock(hashtext('…'))` exclude
/// each other, both ways.
#[tokio::test]
async fn hashtext_interop_with_plain_sql_both_ways() {
    let pg = fixtures::postgres().await.unwrap();
    let url = with_query(pg.url(), "key=hashtext");
    let d = connect(&url).await;
    let n = unique("emp_details_purge");
    let mut sql = sqlx::PgConnection::connect(pg.url()).await.unwrap();
    let try_sql = "SELECT pg_try_advisory_lock(hashtext($1))";
    // SQL holds → dlock is refused
    let got: bool = sqlx::query_scalar(try_sql)
        .bind(n.as_str())
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert!(got);
    assert_eq!(
        d.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    let freed: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(n.as_str())
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert!(freed);
    // dlock holds → SQL is refused
    let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
    let got: bool = sqlx::query_scalar(try_sql)
        .bind(n.as_str())
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert!(!got, "a SQL caller must not get a lock dlock holds");
    assert!(g.release().await.unwrap());
    let got: bool = sqlx::query_scalar(try_sql)
        .bind(n.as_str())
        .fetch_one(&mut sql)
        .await
        .unwrap();
    assert!(got);
}

/// Key schemes: names each scheme cannot represent are `InvalidName`; the others lock.
#[tokio::test]
async fn key_schemes_and_name_edge_cases() {
    let pg = fixtures::postgres().await.unwrap();
    let d = connect(pg.url()).await;
    let long = "x".repeat(10 * 1024);
    for name in [
        "it's",
        "a;b -- DROP TABLE x",
        "ключ 🔒",
        "a/b/../c",
        long.as_str(),
    ] {
        let n = LockName::new(name).unwrap();
        let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
        assert!(g.release().await.unwrap());
    }
    for (query, good, bad) in [
        ("key=int", "-42", "forty-two"),
        ("key=pair", "7,-3", "7"),
        ("key=sqlx", "job", ""),
    ] {
        let d = connect(&with_query(pg.url(), query)).await;
        let g = d
            .acquire(&LockName::new(good).unwrap(), &LockOptions::new())
            .await
            .unwrap();
        assert!(g.release().await.unwrap());
        if !bad.is_empty() {
            let err = d
                .acquire(&LockName::new(bad).unwrap(), &LockOptions::new())
                .await
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidName, "{query} {bad}: {err}");
        }
    }
    let err = dlock::connect(&with_query(pg.url(), "key=md5"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
}

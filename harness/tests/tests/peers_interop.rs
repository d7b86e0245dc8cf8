//! Interop through the peer harnesses: a real peer library and dlock on the **same** lock,
//! real servers. Each side sees the other's hold, then both contend for one name for
//! [`GRANTS`] grants and no two holds overlap (a hold runs from its grant to the moment its
//! holder began to release, both `CLOCK_MONOTONIC` readings inside the harnesses).

use std::path::PathBuf;
use std::time::Duration;

use dlock_compare::peers::catalog::{Harnesses, PEERS, peer_url};
use dlock_compare::peers::proc::{Group, Reply};

const TTL_MS: u64 = 5000;
const WITHIN: Duration = Duration::from_secs(20);
/// Grants over both sides (the target: at least 1,000 per pair).
const GRANTS: usize = 1000;

fn harnesses() -> Harnesses {
    let mut h = Harnesses::locate(std::path::Path::new(env!("CARGO_BIN_EXE_dlock-under-test")));
    h.peers_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers");
    h
}

async fn interop(backend: &str, peer: &str, dlock_option: &str) {
    interop_as(backend, peer, dlock_option, None, Contend::Waiting).await;
}

/// How the two sides contend for the lock.
#[derive(Clone, Copy, PartialEq)]
enum Contend {
    /// Each side's blocking `acquire`; a side asks again as soon as it has released.
    Waiting,
    /// `try` in a loop, for libraries whose waiting is a slow poll (ShedLock: Java's harness
    /// polls every 100 ms, dlock sleeps until the row's `lock_until`): after its release a
    /// side stops trying until the other side has been granted, so grants alternate, and
    /// every `try` of the waiting side while the other holds is a check that it is excluded.
    Trying,
}

/// [`interop`], with dlock reaching the server through `scheme` instead of the backend's own
/// (`shedlock+postgres` on a PostgreSQL server, say).
async fn interop_as(
    backend: &str,
    peer: &str,
    dlock_option: &str,
    scheme: Option<&str>,
    contend: Contend,
) {
    let srv = match backend {
        "postgres" => dlock_fixtures::postgres().await,
        "redis" => dlock_fixtures::redis().await,
        "etcd" => dlock_fixtures::etcd().await,
        "zookeeper" => dlock_fixtures::zookeeper().await,
        other => panic!("no fixture for {other}"),
    }
    .unwrap_or_else(|e| panic!("{backend} server: {e:#}"));
    let h = harnesses();
    // ShedLock's peers are catalogued under dlock's ShedLock backends (`shedlock-postgres`).
    let catalogued = scheme.map_or(backend.to_string(), |s| s.replace('+', "-"));
    let spec = PEERS
        .iter()
        .find(|p| p.backend == catalogued && p.peer == peer)
        .expect("a catalogued peer");
    let launch = h
        .launch(spec, TTL_MS)
        .unwrap_or_else(|why| panic!("{why} (`make test` runs scripts/install-peers first)"));
    let base_url = match scheme {
        Some(scheme) => {
            let (_, rest) = srv.url().split_once("://").expect("a URL with a scheme");
            format!("{scheme}://{rest}")
        }
        None => srv.url().to_string(),
    };
    let dlock_url = if dlock_option.is_empty() {
        base_url
    } else {
        let sep = if base_url.contains('?') { '&' } else { '?' };
        format!("{base_url}{sep}{dlock_option}")
    };
    // One group, two processes: 0 is dlock, 1 the peer.
    let mut g = Group::start(&h.dlock(TTL_MS), &dlock_url, 1)
        .await
        .expect("dlock's harness");
    g.add(&launch, &peer_url(backend, srv.url()).expect("peer URL"))
        .await
        .expect("the peer's harness");
    let name = format!("interop-{}", dlock_peer_proto::mono_us());
    let (acq, tr, rel) = (
        format!("acquire {name} {TTL_MS}"),
        format!("try {name} {TTL_MS}"),
        format!("release {name}"),
    );

    // Each side's hold is seen by the other.
    for (holder, other) in [(0, 1), (1, 0)] {
        let a = g.call(holder, &acq, WITHIN).await.unwrap();
        assert!(matches!(a, Reply::Acquired { .. }), "{a:?}");
        let b = g.call(other, &tr, WITHIN).await.unwrap();
        assert!(
            matches!(b, Reply::Busy { .. }),
            "side {other} took a lock side {holder} holds: {b:?}"
        );
        let r = g.call(holder, &rel, WITHIN).await.unwrap();
        assert!(matches!(r, Reply::Released { .. }), "{r:?}");
    }

    // Both contend until GRANTS acquisitions have been granted and released.
    let holds = match contend {
        Contend::Waiting => contend_waiting(&mut g, &acq, &rel).await,
        Contend::Trying => contend_trying(&mut g, &tr, &rel).await,
    };
    let mut holds = holds;
    holds.sort_by_key(|h| h.1);
    let mut switches = 0;
    for w in holds.windows(2) {
        let ((s0, _, end0), (s1, start1, _)) = (w[0], w[1]);
        assert!(
            start1 >= end0,
            "overlap: side {s1} granted at {start1} µs, side {s0} began releasing only at {end0} µs"
        );
        switches += usize::from(s0 != s1);
    }
    let by_peer = holds.iter().filter(|h| h.0 == 1).count();
    eprintln!(
        "{backend} × {peer}: {} grants ({by_peer} to the peer), {switches} handovers between \
         the two libraries, no overlap",
        holds.len()
    );
    assert!(
        by_peer > 0 && by_peer < holds.len(),
        "only one side was ever granted ({by_peer} of {} to the peer)",
        holds.len()
    );
    g.quit_all(Duration::from_secs(5)).await;
}

/// A hold: (side, granted, release began), `CLOCK_MONOTONIC` µs.
type Hold = (usize, u64, u64);

/// Blocking acquires: a grant is answered by a release, the releaser asks again, until
/// GRANTS acquisitions have been asked for and all of them granted and released.
async fn contend_waiting(g: &mut Group, acq: &str, rel: &str) -> Vec<Hold> {
    let mut holds: Vec<Hold> = Vec::new();
    let mut granted_at: [Option<u64>; 2] = [None, None];
    for side in 0..2 {
        g.procs[side].send(acq).await.unwrap();
    }
    let mut requested = 2;
    while holds.len() < GRANTS {
        match g.next(WITHIN).await.unwrap() {
            (side, Reply::Acquired { t1, .. }) => {
                granted_at[side] = Some(t1);
                g.procs[side].send(rel).await.unwrap();
            }
            (side, Reply::Released { t0, .. }) => {
                let granted = granted_at[side].take().expect("a release follows a grant");
                holds.push((side, granted, t0));
                if requested < GRANTS {
                    g.procs[side].send(acq).await.unwrap();
                    requested += 1;
                }
            }
            other => panic!("during the contention: {other:?}"),
        }
    }
    holds
}

/// `try` loops with alternation (see [`Contend::Trying`]).
async fn contend_trying(g: &mut Group, tr: &str, rel: &str) -> Vec<Hold> {
    let mut holds: Vec<Hold> = Vec::new();
    let mut granted_at: [Option<u64>; 2] = [None, None];
    // Whether a side waits for the other's grant before trying again; grants per side, and
    // how many the other side had when a side was granted (the replies of two processes
    // arrive in any order: the other's grant may be read before this side's release).
    let mut parked = [false, false];
    let mut grants = [0usize; 2];
    let mut other_had = [0usize; 2];
    let mut refused = [0usize; 2];
    for side in 0..2 {
        g.procs[side].send(tr).await.unwrap();
    }
    let mut in_flight = 2;
    while in_flight > 0 {
        let (side, reply) = g.next(WITHIN).await.unwrap();
        in_flight -= 1;
        let other = 1 - side;
        let done = holds.len() >= GRANTS;
        match reply {
            Reply::Busy { .. } => {
                refused[side] += 1;
                if !done {
                    g.procs[side].send(tr).await.unwrap();
                    in_flight += 1;
                }
            }
            Reply::Acquired { t1, .. } => {
                granted_at[side] = Some(t1);
                grants[side] += 1;
                other_had[side] = grants[other];
                g.procs[side].send(rel).await.unwrap();
                in_flight += 1;
                // The other side's turn is over: it may try again.
                if std::mem::take(&mut parked[other]) && !done {
                    g.procs[other].send(tr).await.unwrap();
                    in_flight += 1;
                }
            }
            Reply::Released { t0, .. } => {
                let granted = granted_at[side].take().expect("a release follows a grant");
                holds.push((side, granted, t0));
                if grants[other] > other_had[side] {
                    // The other side was granted after this one already: try again.
                    if !done {
                        g.procs[side].send(tr).await.unwrap();
                        in_flight += 1;
                    }
                } else {
                    parked[side] = true;
                }
            }
            other => panic!("during the contention: {other:?}"),
        }
    }
    eprintln!(
        "tries refused while the other side held: dlock {}, the peer {}",
        refused[0], refused[1]
    );
    assert!(
        refused[0] > 0 && refused[1] > 0,
        "a side was never refused: {refused:?}"
    );
    holds
}

/// etcd's Go `concurrency.Mutex` and dlock's `etcd://` are one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_go_mutex_and_dlock_exclude_each_other() {
    interop("etcd", "etcd-mutex", "").await;
}

/// The seed's `pg_advisory_lock(hashtext(name))` (psycopg here; JDBC sends the same SQL) and
/// dlock's `?key=hashtext` are one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashtext_advisory_sql_and_dlock_exclude_each_other() {
    interop("postgres", "psycopg-advisory", "key=hashtext").await;
}

/// Java ShedLock's `JdbcTemplateLockProvider` (`usingDbTime()`) and dlock's
/// `shedlock+postgres://` on one `shedlock` table are one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_shedlock_jdbc_and_dlock_exclude_each_other() {
    interop_as(
        "postgres",
        "shedlock-jdbc",
        "",
        Some("shedlock+postgres"),
        Contend::Trying,
    )
    .await;
}

/// Java ShedLock's `RedisLockProvider` (Spring Data Redis over Lettuce) and dlock's
/// `shedlock+redis://` on one key `job-lock:default:NAME` are one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_shedlock_redis_and_dlock_exclude_each_other() {
    interop_as(
        "redis",
        "shedlock-redis",
        "",
        Some("shedlock+redis"),
        Contend::Trying,
    )
    .await;
}

/// The seed's `AdvisoryLockService` (Spring `JdbcTemplate`, `pg_try_advisory_lock(hashtext(?))`
/// on the PostgreSQL JDBC driver) and dlock's `?key=hashtext` are one lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_jdbc_hashtext_advisory_and_dlock_exclude_each_other() {
    interop("postgres", "jdbc-advisory", "key=hashtext").await;
}

/// Apache Curator's `InterProcessMutex` at `/dlock-peers/NAME` and dlock's
/// `zk://…?base=/dlock-peers` are one lock (dlock's contender nodes are Curator's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_mutex_and_dlock_exclude_each_other() {
    interop("zookeeper", "curator-mutex", "base=/dlock-peers").await;
}

/// Curator's `LeaderSelector` is an `InterProcessMutex` on its path held while
/// `takeLeadership` runs (the same `_c_<uuid>-lock-<seq>` nodes): leadership at
/// `/dlock-peers-leader/NAME` and dlock's lock with `?base=/dlock-peers-leader` exclude each
/// other. (dlock has no election API of its own: a dlock "leader" is the holder of a lock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_leader_selector_and_dlock_exclude_each_other() {
    interop("zookeeper", "curator-leader", "base=/dlock-peers-leader").await;
}

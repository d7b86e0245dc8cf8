//! The peer-harness protocol's conformance test (`peers/README.md`, "Conformance"): every
//! harness and peer, against real servers, checked for what `dlock compare`'s peers section
//! relies on. The Rust, Python, Go and Java harnesses are installed by `scripts/install-peers`
//! (which `make test` runs first); a missing one fails here with that instruction.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dlock_compare::peers::catalog::{HarnessKind, Harnesses, PEERS, peer_url};
use dlock_compare::peers::proc::{Group, Launch, Reply};
use dlock_peer_proto::mono_us;

const TTL_MS: u64 = 2000;

fn harnesses() -> Harnesses {
    let mut h = Harnesses::locate(std::path::Path::new(env!("CARGO_BIN_EXE_dlock-under-test")));
    // The tests run in harness/tests: the checkout's peers/ is two levels up.
    h.peers_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers");
    h
}

/// How to start `peer` (on `backend`), or a failure naming the install step.
fn launch(backend: &str, peer: &str) -> Launch {
    let h = harnesses();
    if peer == "dlock" {
        return h.dlock(TTL_MS);
    }
    let spec = PEERS
        .iter()
        .find(|p| p.backend == backend && p.peer == peer)
        .unwrap_or_else(|| panic!("no peer {peer} on {backend}"));
    h.launch(spec, TTL_MS).unwrap_or_else(|why| {
        panic!(
            "{why} ({} harness; `make test` runs scripts/install-peers first)",
            match spec.harness {
                HarnessKind::Rust => "Rust",
                HarnessKind::Python => "Python",
                HarnessKind::Go => "Go",
                HarnessKind::Java => "Java",
            }
        )
    })
}

async fn server(backend: &str) -> dlock_fixtures::Server {
    match backend {
        "postgres" | "shedlock-postgres" => dlock_fixtures::postgres().await,
        "redis" | "shedlock-redis" => dlock_fixtures::redis().await,
        "etcd" => dlock_fixtures::etcd().await,
        "zookeeper" => dlock_fixtures::zookeeper().await,
        other => panic!("no fixture for {other}"),
    }
    .unwrap_or_else(|e| panic!("{backend} server: {e:#}"))
}

const WITHIN: Duration = Duration::from_secs(15);

/// How long a killed holder's lock may take to reach the waiter: session peers at once,
/// lease peers within their ttl; plus a slack for poll intervals and a busy machine.
const FAILOVER_BOUND: Duration = Duration::from_millis(TTL_MS + 4000);

async fn conformance(backend: &str, peer: &str) {
    let srv = server(backend).await;
    let url = if peer == "dlock" {
        srv.url().to_string()
    } else {
        peer_url(backend, srv.url()).expect("peer URL")
    };
    let launch = launch(backend, peer);
    let name = format!("conf-{}", mono_us());

    // 1. ready, with a version, within a bound.
    let started = Instant::now();
    let mut g = Group::start(&launch, &url, 2)
        .await
        .expect("the harness starts");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        !g.version().is_empty() && g.version() != "?",
        "version {:?}",
        g.version()
    );

    // 2. acquire, release: T0 <= T1, inside the driver's own readings.
    let before = mono_us();
    let a = g
        .call(0, &format!("acquire {name} {TTL_MS}"), WITHIN)
        .await
        .unwrap();
    let after = mono_us();
    let Reply::Acquired { t0, t1, .. } = a else {
        panic!("acquire: {a:?}")
    };
    assert!(
        before <= t0 && t0 <= t1 && t1 <= after,
        "{before} {t0} {t1} {after}"
    );

    // 3. Held: another process's try is busy; its blocking acquire ends after the release.
    let b = g
        .call(1, &format!("try {name} {TTL_MS}"), WITHIN)
        .await
        .unwrap();
    assert!(matches!(b, Reply::Busy { .. }), "try while held: {b:?}");
    g.procs[1]
        .send(&format!("acquire {name} {TTL_MS}"))
        .await
        .unwrap();
    // Nothing may come from the waiter while the lock is held.
    let early = g.next(Duration::from_millis(300)).await;
    assert!(
        early.is_err(),
        "the waiter answered while the lock was held: {early:?}"
    );
    g.procs[0].send(&format!("release {name}")).await.unwrap();
    let (mut released, mut granted) = (None, None);
    while released.is_none() || granted.is_none() {
        match g.next(WITHIN).await.unwrap() {
            (0, Reply::Released { t0, .. }) => released = Some(t0),
            (1, Reply::Acquired { t1, .. }) => granted = Some(t1),
            other => panic!("during the handoff: {other:?}"),
        }
    }
    // The waiter may be told before the holder's release call returns (the server frees
    // the lock, then answers), but never before the holder began to release.
    assert!(
        granted.unwrap() >= released.unwrap(),
        "granted at {granted:?}, before the holder read its release command at {released:?}"
    );
    let r = g.call(1, &format!("release {name}"), WITHIN).await.unwrap();
    assert!(matches!(r, Reply::Released { .. }), "{r:?}");

    // 4. Releasing what is not held is an error, and the harness keeps answering.
    let e = g.call(0, &format!("release {name}"), WITHIN).await.unwrap();
    assert!(
        matches!(e, Reply::Error { .. }),
        "release of a lock not held: {e:?}"
    );
    let e = g.call(0, "acquire bad/name 100", WITHIN).await.unwrap();
    assert!(matches!(e, Reply::Error { .. }), "a bad name: {e:?}");

    // 6. throughput answers OPS > 0 or says unsupported.
    let t = g
        .call(0, &format!("throughput 4 distinct 300 {TTL_MS}"), WITHIN)
        .await
        .unwrap();
    match t {
        Reply::Throughput { ops, .. } => assert!(ops > 0, "no acquire+release in 300 ms"),
        Reply::Unsupported(_) => {}
        other => panic!("throughput: {other:?}"),
    }

    // 5. A holder killed with SIGKILL: the waiter gets the lock within the bound.
    let kname = format!("{name}-kill");
    let a = g
        .call(0, &format!("acquire {kname} {TTL_MS}"), WITHIN)
        .await
        .unwrap();
    assert!(matches!(a, Reply::Acquired { .. }), "{a:?}");
    g.procs[1]
        .send(&format!("acquire {kname} {TTL_MS}"))
        .await
        .unwrap();
    let killed = Instant::now();
    g.kill(0).await;
    match g
        .next(FAILOVER_BOUND + Duration::from_secs(5))
        .await
        .unwrap()
    {
        (1, Reply::Acquired { .. }) => {}
        other => panic!("after the holder's SIGKILL: {other:?}"),
    }
    let took = killed.elapsed();
    assert!(took < FAILOVER_BOUND, "failover took {took:?}");

    // 7. quit: bye, exit 0.
    let mut last = g.procs.pop().expect("the waiter");
    last.send("quit").await.unwrap();
    match g.next(WITHIN).await.unwrap() {
        (1, Reply::Bye) => {}
        other => panic!("quit: {other:?}"),
    }
    let status = last.quit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
}

macro_rules! conformance_tests {
    ($($test:ident: $backend:literal, $peer:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            conformance($backend, $peer).await;
        }
    )*};
}

conformance_tests! {
    dlock_on_postgres: "postgres", "dlock";
    dlock_on_redis: "redis", "dlock";
    sqlx_advisory: "postgres", "sqlx-advisory";
    psycopg_advisory: "postgres", "psycopg-advisory";
    rslock: "redis", "rslock";
    redis_py: "redis", "redis-py";
    python_redis_lock: "redis", "python-redis-lock";
    pottery: "redis", "pottery";
    etcd_v3lock: "etcd", "etcd-v3lock";
    etcd_mutex: "etcd", "etcd-mutex";
    etcd_election: "etcd", "etcd-election";
    redsync: "redis", "redsync";
    kazoo: "zookeeper", "kazoo";
    shedlock_jdbc: "shedlock-postgres", "shedlock-jdbc";
    jdbc_advisory: "postgres", "jdbc-advisory";
    shedlock_redis: "shedlock-redis", "shedlock-redis";
    redisson: "redis", "redisson";
    redisson_fenced: "redis", "redisson-fenced";
    curator_mutex: "zookeeper", "curator-mutex";
    curator_leader: "zookeeper", "curator-leader";
}

/// Every peer of the catalogue has a conformance test above (a new peer without one fails).
#[test]
fn every_peer_is_tested() {
    let src = include_str!("peers_protocol.rs");
    for p in PEERS {
        assert!(
            src.contains(&format!("\"{}\", \"{}\";", p.backend, p.peer))
                || (p.backend == "redlock" && src.contains(&format!("\"redis\", \"{}\";", p.peer))),
            "no conformance test for {} on {}",
            p.peer,
            p.backend
        );
    }
}

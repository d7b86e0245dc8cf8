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
    let srv = match backend {
        "postgres" => dlock_fixtures::postgres().await,
        "etcd" => dlock_fixtures::etcd().await,
        other => panic!("no fixture for {other}"),
    }
    .unwrap_or_else(|e| panic!("{backend} server: {e:#}"));
    let h = harnesses();
    let spec = PEERS
        .iter()
        .find(|p| p.backend == backend && p.peer == peer)
        .expect("a catalogued peer");
    let launch = h
        .launch(spec, TTL_MS)
        .unwrap_or_else(|why| panic!("{why} (`make test` runs scripts/install-peers first)"));
    let dlock_url = if dlock_option.is_empty() {
        srv.url().to_string()
    } else {
        let sep = if srv.url().contains('?') { '&' } else { '?' };
        format!("{}{sep}{dlock_option}", srv.url())
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

    // Both contend: a grant is answered by a release, the releaser asks again, until
    // GRANTS acquisitions have been asked for and all of them granted and released.
    let mut holds: Vec<(usize, u64, u64)> = Vec::new(); // (side, granted, release began)
    let mut granted_at: [Option<u64>; 2] = [None, None];
    for side in 0..2 {
        g.procs[side].send(&acq).await.unwrap();
    }
    let mut requested = 2;
    while holds.len() < GRANTS {
        match g.next(WITHIN).await.unwrap() {
            (side, Reply::Acquired { t1, .. }) => {
                granted_at[side] = Some(t1);
                g.procs[side].send(&rel).await.unwrap();
            }
            (side, Reply::Released { t0, .. }) => {
                let granted = granted_at[side].take().expect("a release follows a grant");
                holds.push((side, granted, t0));
                if requested < GRANTS {
                    g.procs[side].send(&acq).await.unwrap();
                    requested += 1;
                }
            }
            other => panic!("during the contention: {other:?}"),
        }
    }
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

//! Renewals over a slow link (issue 24, 9): a 2 s lock held through a fault proxy that delays
//! each direction, against real Redis and etcd servers. How slow may the link get before the
//! holder loses its lock although the server never would have taken it away?
//!
//! `slow_links_at_every_delay` is the measurement behind lock-core's README (*Measured*); it
//! is ignored by default (about 15 s): `cargo test -p dlock-server-tests --test slow_renewal
//! -- --ignored --nocapture`.

mod common;

use common::unique;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock::{LockOptions, LockState};
use dlock_fixtures as fixtures;
use dlock_fixtures::faults::{Fault, FaultProxy};
use tokio::time::{Instant, timeout};

/// The lock's ttl.
const TTL: Duration = Duration::from_secs(2);

/// How long the holder is watched on the slow link: three leases.
const WATCH: Duration = Duration::from_secs(6);

/// Connects through `proxy` on a clean link, acquires a 2 s lock, then delays each direction
/// by `delay`: the first state the guard leaves `Held` for and when (from the slowdown), or
/// `None` if it stayed `Held` for [`WATCH`].
async fn first_trouble(
    proxy: &FaultProxy,
    scheme: &str,
    delay: Duration,
) -> Result<Option<(LockState, Duration)>> {
    proxy.set(Fault::Pass);
    let backend = dlock::connect(&format!("{scheme}://{}", proxy.addr())).await?;
    let g = backend
        .acquire(&unique("slow-renewal"), &LockOptions::new().with_ttl(TTL))
        .await?;
    proxy.set(Fault::Latency(delay));
    let slowed = Instant::now();
    let trouble = timeout(WATCH, g.not_held())
        .await
        .ok()
        .map(|s| (s, slowed.elapsed()));
    proxy.set(Fault::Pass);
    // The lock names are unique: whatever the release does, it cannot disturb another run.
    drop(g);
    Ok(trouble)
}

/// One proxy per delay in front of `upstream`, all slowed at once: what each delay did.
async fn sweep(
    scheme: &'static str,
    upstream: std::net::SocketAddr,
    delays_ms: &[u64],
) -> Result<Vec<(u64, Option<(LockState, Duration)>)>> {
    let mut runs = Vec::new();
    for &ms in delays_ms {
        let proxy = FaultProxy::start(upstream).await?;
        runs.push(tokio::spawn(async move {
            let out = first_trouble(&proxy, scheme, Duration::from_millis(ms)).await;
            (ms, out)
        }));
    }
    let mut out = Vec::new();
    for run in runs {
        let (ms, result) = run.await?;
        out.push((ms, result?));
    }
    Ok(out)
}

fn report(scheme: &str, results: &[(u64, Option<(LockState, Duration)>)]) {
    for (ms, r) in results {
        match r {
            None => eprintln!("{scheme}: {ms} ms each way: held for {WATCH:?}"),
            Some((s, at)) => eprintln!("{scheme}: {ms} ms each way: {s} after {at:?}"),
        }
    }
}

/// The measurement: for each delay each way, whether a 2 s lock on Redis and on etcd stays
/// held for three leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 15 s); run with --ignored --nocapture"]
async fn slow_links_at_every_delay() -> Result<()> {
    common::init_tracing("lock_redis=error,lock_etcd=error,lock_core=error");
    let delays = [250, 300, 325, 350, 450, 500, 550, 600, 625, 650];
    let redis = fixtures::managed_redis(Default::default()).await?;
    let upstream = redis.addr().context("a managed Redis has an address")?;
    report("redis", &sweep("redis", upstream, &delays).await?);
    let etcd = fixtures::managed_etcd(Default::default()).await?;
    let upstream = etcd.addr().context("a managed etcd has an address")?;
    report("etcd", &sweep("etcd", upstream, &delays).await?);
    Ok(())
}

/// A Redis holder whose round trip is 60 % of its lease (600 ms each way under a 2 s lock)
/// should keep its lock: every renewal reaches the server long before the lease would
/// expire, so the guard must not give up while one is on its way.
#[tokio::test]
async fn a_round_trip_of_60_percent_of_the_lease_keeps_a_redis_lock() -> Result<()> {
    common::init_tracing("lock_redis=info,lock_core=info");
    let redis = fixtures::managed_redis(Default::default()).await?;
    let upstream = redis.addr().context("a managed Redis has an address")?;
    let proxy = FaultProxy::start(upstream).await?;
    let trouble = first_trouble(&proxy, "redis", Duration::from_millis(600)).await?;
    ensure!(
        trouble.is_none(),
        "the guard left Held over a 600 ms link: {trouble:?}"
    );
    Ok(())
}

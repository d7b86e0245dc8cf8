//! etcd: uncontended acquire + release beside its raw floor, and handoff latency with 8
//! waiters.
//!
//! The floor is what the backend cannot avoid: one txn that puts a key if it is absent, and
//! one delete, on the same client (the backend's own connection) in the same run. The server
//! is `fixtures::etcd()` (a managed single node, or `DLOCK_TEST_ETCD_URL`).
//!
//! `cargo bench -p benches --bench etcd`; `DLOCK_BENCH_SAMPLES` sets the samples per round
//! (default 500), `DLOCK_BENCH_ROUNDS` the rounds (default 3). Criterion's own group follows
//! the percentile report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use benches::{Samples, env_usize, micros, once, report_vs_floor};
use criterion::Criterion;
use dlock::etcd::EtcdBackend;
use dlock::etcd::etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use dlock::{Backend, LockName, LockOptions};

const WAITERS: usize = 8;

/// The floor: put-if-absent txn + delete, on the raw client.
async fn floor_op(client: &Client, key: &str) -> Result<()> {
    let mut kv = client.kv_client();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, "", None)]);
    let resp = kv.txn(txn).await?;
    anyhow::ensure!(resp.succeeded(), "floor key {key} already existed");
    kv.delete(key, None).await?;
    Ok(())
}

/// `n` samples each of the dlock operation and of the floor, alternating (after 30 unmeasured
/// warm-up rounds of each).
async fn interleaved(
    n: usize,
    backend: &EtcdBackend,
    name: &LockName,
    opts: &LockOptions,
    client: &Client,
    floor_key: &str,
) -> Result<(Samples, Samples)> {
    Samples::collect(30, 0, || async {
        floor_op(client, floor_key).await?;
        once(backend, name, opts).await
    })
    .await?;
    let (mut measured, mut floor) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        for side in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            if side == 0 {
                once(backend, name, opts).await?;
                measured.push(t.elapsed());
            } else {
                floor_op(client, floor_key).await?;
                floor.push(t.elapsed());
            }
        }
    }
    Ok((Samples::from(measured), Samples::from(floor)))
}

/// Time from a holder calling release to the next waiter holding the lock, with one holder
/// and `WAITERS` waiters queued behind it the whole time.
fn main() -> Result<()> {
    let rt = benches::runtime()?;
    let server = rt.block_on(dlock_fixtures::etcd())?;
    benches::pin_apart(&server.pid().into_iter().collect::<Vec<_>>());
    let backend = rt.block_on(EtcdBackend::connect(server.url()))?;
    let client = backend.client().clone();
    let n = env_usize("DLOCK_BENCH_SAMPLES", 500);
    let rounds = env_usize("DLOCK_BENCH_ROUNDS", 3);
    let run = std::process::id();
    let name = LockName::new(format!("bench-{run}-uncontended"))?;
    let opts = LockOptions::new().with_ttl(Duration::from_secs(10));
    let floor_key = format!("bench-{run}-floor");

    println!(
        "etcd at {} (this machine, {n} samples per round)",
        server.url()
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Interleaved, alternating which goes first, so a slow phase of the disk (etcd
        // fsyncs every write) hits both sides alike.
        // On a runtime worker, where application code runs.
        let (b, nm, o) = (backend.clone(), name.clone(), opts.clone());
        let (c, k) = (client.clone(), floor_key.clone());
        let (measured, floor) = rt.block_on(async move {
            tokio::spawn(async move { interleaved(n, &b, &nm, &o, &c, &k).await }).await?
        })?;
        let label = format!("round {round}: acquire+release vs txn put-if-absent+delete");
        ratios.push(report_vs_floor(&label, &measured, &floor));
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "p50 ratio over {rounds} rounds: min {:.3}× median {:.3}× max {:.3}×",
        ratios[0],
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );

    // The handoff `dlock compare` reports, with one backend (one connection) for all the
    // contenders.
    let per_task = env_usize("DLOCK_BENCH_HANDOFF_ROUNDS", 20);
    let shared: Arc<dyn Backend> = Arc::new(backend.clone());
    let connect = || {
        let b = Arc::clone(&shared);
        async move { anyhow::Ok(b) }
    };
    let h = rt.block_on(dlock_compare::bench::handoff(
        connect,
        WAITERS,
        per_task * (WAITERS + 1),
    ))?;
    println!(
        "handoff with {WAITERS} waiters (release called → next holder granted): p50 {:>8.1} µs  p99 {:>8.1} µs ({} samples)",
        micros(h.p50()),
        micros(h.p99()),
        h.len()
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group("etcd");
    group.bench_function("acquire_release", |b| {
        b.to_async(&rt)
            .iter(|| async { once(&backend, &name, &opts).await.unwrap() })
    });
    group.bench_function("floor_txn_put_if_absent_delete", |b| {
        b.to_async(&rt)
            .iter(|| async { floor_op(&client, &floor_key).await.unwrap() })
    });
    group.finish();
    c.final_summary();
    Ok(())
}

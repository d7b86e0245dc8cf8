//! MariaDB `GET_LOCK`: uncontended try-acquire + release beside the raw floor
//! (`GET_LOCK(name, 0)` + `RELEASE_LOCK(name)` on a raw sqlx connection, same server, same
//! run, alternated one by one), and handoff latency with 8 waiters (each on its own waiting
//! session, woken by the server; measured as `dlock compare` measures it).
//! `cargo bench -p benches --bench mariadb`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Samples, micros, report_vs_floor};
use criterion::{Criterion, criterion_group, criterion_main};
use dlock::{LockName, LockOptions};
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;
use tokio::sync::Mutex;

const WARMUP: usize = 200;
const SAMPLES: usize = 2000;
const ROUNDS: usize = 3;

/// One measured operation.
type BoxedOp = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// The fixture's URL as sqlx takes it (`mysql://`).
fn sqlx_url(url: &str) -> String {
    url.replacen("mariadb://", "mysql://", 1)
}

fn bench(c: &mut Criterion) {
    let rt = benches::runtime().unwrap();
    let db = rt
        .block_on(dlock_fixtures::mariadb())
        .expect("MariaDB fixture");
    benches::pin_apart(&db.pid().into_iter().collect::<Vec<_>>());
    let url = db.url().to_string();
    let backend = rt.block_on(dlock::connect(&url)).unwrap();
    let raw = Arc::new(Mutex::new(
        rt.block_on(MySqlConnection::connect(&sqlx_url(&url)))
            .unwrap(),
    ));
    let name = LockName::new("bench-uncontended").unwrap();
    let opts = LockOptions::new();

    let dlock_op = || -> BoxedOp {
        let (backend, name, opts) = (backend.clone(), name.clone(), opts.clone());
        Box::pin(async move {
            let g = backend.acquire(&name, &opts).await?;
            g.release().await?;
            Ok(())
        })
    };
    let raw_op = || -> BoxedOp {
        let raw = raw.clone();
        Box::pin(async move {
            let mut conn = raw.lock().await;
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                .bind("bench-floor")
                .fetch_one(&mut *conn)
                .await?;
            anyhow::ensure!(got == Some(1), "the floor's lock was refused: {got:?}");
            let _: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
                .bind("bench-floor")
                .fetch_one(&mut *conn)
                .await?;
            Ok(())
        })
    };

    // Warm up both paths, then alternate one floor and one dlock operation, so that load from
    // other processes on this shared machine hits both alike; three rounds.
    rt.block_on(Samples::collect(WARMUP, 0, raw_op)).unwrap();
    rt.block_on(Samples::collect(WARMUP, 0, dlock_op)).unwrap();
    for round in 1..=ROUNDS {
        let (ours, floor) = rt
            .block_on(async {
                let (mut m, mut f) = (Vec::new(), Vec::new());
                for _ in 0..SAMPLES {
                    let t = Instant::now();
                    raw_op().await?;
                    f.push(t.elapsed());
                    let t = Instant::now();
                    dlock_op().await?;
                    m.push(t.elapsed());
                }
                anyhow::Ok((Samples::from(m), Samples::from(f)))
            })
            .unwrap();
        report_vs_floor(
            &format!("mariadb acquire+release (round {round})"),
            &ours,
            &floor,
        );
    }

    // The comparison's handoff measurement: 9 clients on one lock, each releasing as soon
    // as it is granted.
    let connect = || {
        let url = url.clone();
        async move { Ok(dlock::connect(&url).await?) }
    };
    let handoff = rt
        .block_on(dlock_compare::bench::handoff(connect, 8, 160))
        .unwrap();
    println!(
        "mariadb handoff with 8 waiters: p50 {:.1} µs  p99 {:.1} µs ({} handoffs)",
        micros(handoff.p50()),
        micros(handoff.p99()),
        handoff.len()
    );

    let mut group = c.benchmark_group("mariadb");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("acquire_release", |b| b.to_async(&rt).iter(dlock_op));
    group.bench_function("raw_floor", |b| b.to_async(&rt).iter(raw_op));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

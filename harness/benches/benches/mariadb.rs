//! MariaDB `GET_LOCK`: uncontended try-acquire + release beside the raw floor
//! (`GET_LOCK(name, 0)` + `RELEASE_LOCK(name)` on a raw sqlx connection, same server, same
//! run, alternated one by one), and handoff latency with 8 waiters (each on its own waiting
//! session, woken by the server). `cargo bench -p benches --bench mariadb`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Samples, micros, report_vs_floor};
use criterion::{Criterion, criterion_group, criterion_main};
use dlock::{LockName, LockOptions, Wait};
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

    let handoff = rt.block_on(handoff(&url, 8, 20));
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

/// `waiters` clients wait on one lock; each, once granted, notes the time since the previous
/// holder's release and releases at once. `rounds` times.
async fn handoff(url: &str, waiters: usize, rounds: usize) -> Samples {
    let mut all = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..=waiters {
        clients.push(dlock::connect(url).await.unwrap());
    }
    for round in 0..rounds {
        let name = LockName::new(format!("bench-handoff-{round}")).unwrap();
        let released_at = Arc::new(Mutex::new(None::<Instant>));
        let first = clients[0]
            .acquire(&name, &LockOptions::new())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for c in &clients[1..] {
            let (c, name, released_at) = (c.clone(), name.clone(), released_at.clone());
            tasks.push(tokio::spawn(async move {
                let g = c
                    .acquire(&name, &LockOptions::new().with_wait(Wait::Forever))
                    .await
                    .unwrap();
                let now = Instant::now();
                let mut r = released_at.lock().await;
                let gap = r.map(|t| now - t);
                *r = Some(Instant::now());
                g.release().await.unwrap();
                gap
            }));
        }
        // Every waiter must be queued in the server before the first release.
        wait_for_waiters(url, waiters as i64).await;
        *released_at.lock().await = Some(Instant::now());
        first.release().await.unwrap();
        for t in tasks {
            if let Some(gap) = t.await.unwrap() {
                all.push(gap);
            }
        }
    }
    Samples::from(all)
}

/// Waits until `n` sessions wait in `GET_LOCK` (the process list's `User lock` state).
async fn wait_for_waiters(url: &str, n: i64) {
    let mut conn = MySqlConnection::connect(&sqlx_url(url)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE state = 'User lock'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(Instant::now() < deadline, "waiters did not queue up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

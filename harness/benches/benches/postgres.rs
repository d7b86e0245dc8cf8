//! PostgreSQL: uncontended try-acquire + release beside the raw floor (the same two
//! statements on a raw sqlx connection, same server, same run), and handoff latency with 8
//! waiters. `cargo bench -p benches --bench postgres`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Samples, micros, report_vs_floor};
use criterion::{Criterion, criterion_group, criterion_main};
use dlock::{LockName, LockOptions, Wait};
use sqlx::Connection;
use tokio::sync::Mutex;

const WARMUP: usize = 200;

/// One measured operation.
type BoxedOp = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;
const SAMPLES: usize = 2000;
const ROUNDS: usize = 3;

fn bench(c: &mut Criterion) {
    let rt = benches::runtime().unwrap();
    let pg = rt
        .block_on(dlock_fixtures::postgres())
        .expect("PostgreSQL fixture");
    benches::pin_apart(&pg.pid().into_iter().collect::<Vec<_>>());
    let url = pg.url().to_string();
    let backend = rt.block_on(dlock::connect(&url)).unwrap();
    let raw = Arc::new(Mutex::new(
        rt.block_on(sqlx::PgConnection::connect(&url)).unwrap(),
    ));
    let name = LockName::new("bench-uncontended").unwrap();
    let opts = LockOptions::new();

    let dlock_op = || {
        let (backend, name, opts) = (backend.clone(), name.clone(), opts.clone());
        async move {
            let g = backend.acquire(&name, &opts).await?;
            g.release().await.map(|_| ())
        }
    };
    let raw_op = || {
        let raw = raw.clone();
        async move {
            let mut conn = raw.lock().await;
            let ok: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind("bench-floor")
                    .fetch_one(&mut *conn)
                    .await?;
            assert!(ok);
            let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind("bench-floor")
                .fetch_one(&mut *conn)
                .await?;
            Ok::<(), sqlx::Error>(())
        }
    };

    // A connection of its own, so that each of the three measured paths has one server
    // process (as warm or cold as the others when its turn comes).
    let raw2 = Arc::new(Mutex::new(
        rt.block_on(sqlx::PgConnection::connect(&url)).unwrap(),
    ));
    let raw_ours = || {
        let raw = raw2.clone();
        async move {
            let mut conn = raw.lock().await;
            let row: (bool, i32, i64) = sqlx::query_as("SELECT pg_try_advisory_lock(k), pg_backend_pid(), k FROM (SELECT hashtextextended($1, 0) AS k) s")
                .bind("bench-floor2")
                .fetch_one(&mut *conn)
                .await?;
            let _: (bool, i32) =
                sqlx::query_as("SELECT pg_advisory_unlock($1::int8), pg_backend_pid()")
                    .bind(row.2)
                    .fetch_one(&mut *conn)
                    .await?;
            Ok::<(), sqlx::Error>(())
        }
    };
    // Warm up every path, then alternate one floor and one dlock operation, so that load
    // from other processes on this shared machine hits both alike; three rounds. Then the
    // breakdown, alternated the same way: dlock's own SQL on a raw connection against the
    // floor, which is what the server costs without dlock's client side. (Two paths at a
    // time: with three, the server process of the one measured last has idled longest, which
    // skews its number.)
    rt.block_on(Samples::collect(WARMUP, 0, raw_op)).unwrap();
    rt.block_on(Samples::collect(WARMUP, 0, raw_ours)).unwrap();
    rt.block_on(Samples::collect(WARMUP, 0, dlock_op)).unwrap();
    let alternate = |measured: &dyn Fn() -> BoxedOp, floor: &dyn Fn() -> BoxedOp| {
        rt.block_on(async {
            let (mut m, mut f) = (Vec::new(), Vec::new());
            for _ in 0..SAMPLES {
                let t = Instant::now();
                floor().await?;
                f.push(t.elapsed());
                let t = Instant::now();
                measured().await?;
                m.push(t.elapsed());
            }
            anyhow::Ok((Samples::from(m), Samples::from(f)))
        })
        .unwrap()
    };
    let boxed_dlock = || -> BoxedOp {
        let op = dlock_op();
        Box::pin(async move { Ok(op.await?) })
    };
    let boxed_floor = || -> BoxedOp {
        let op = raw_op();
        Box::pin(async move { Ok(op.await?) })
    };
    let boxed_ours = || -> BoxedOp {
        let op = raw_ours();
        Box::pin(async move { Ok(op.await?) })
    };
    for round in 1..=ROUNDS {
        let (ours, floor) = alternate(&boxed_dlock, &boxed_floor);
        report_vs_floor(
            &format!("postgres acquire+release (round {round})"),
            &ours,
            &floor,
        );
    }
    let (stmts, floor) = alternate(&boxed_ours, &boxed_floor);
    report_vs_floor(
        "  breakdown: dlock's statements, raw connection",
        &stmts,
        &floor,
    );

    let handoff = rt.block_on(handoff(&url, 8, 20));
    println!(
        "postgres handoff with 8 waiters: p50 {:.1} µs  p99 {:.1} µs ({} handoffs)",
        micros(handoff.p50()),
        micros(handoff.p99()),
        handoff.len()
    );

    let mut group = c.benchmark_group("postgres");
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
    let clients: Vec<_> = connect_n(url, waiters + 1).await;
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
        // every waiter must be queued in the server before the first release
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

async fn connect_n(url: &str, n: usize) -> Vec<Arc<dyn dlock::Backend>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(dlock::connect(url).await.unwrap());
    }
    v
}

async fn wait_for_waiters(url: &str, n: i64) {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
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

//! ZooKeeper backend latency, beside its raw floor measured in the same run.
//!
//! - Uncontended `acquire` + `release` against the floor: create an EPHEMERAL_SEQUENTIAL node
//!   `_c_<uuid>-lock-` and delete it again, on a `zookeeper-client` session of its own (the
//!   client library dlock uses, same settings). Beside it the recipe floor: the same with the
//!   contender listing (`getChildren`) pipelined behind the create, which is the least a
//!   Curator-compatible lock can send. All are measured alternately, one operation each, so
//!   drift (JIT, a busy neighbour) hits them alike.
//! - Handoff with 8 waiters: 9 sessions contend for one lock, each releasing as soon as it
//!   is granted; the handoff is the time from the start of one release to the next grant.
//!
//! The server is a managed standalone ZooKeeper with the C2 compiler on. Run with
//! `cargo bench -p benches --no-default-features --features zookeeper --bench zookeeper`;
//! `ZK_BENCH_SAMPLES` changes the number of samples per measurement (default 3000).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::{Samples, micros, report_vs_floor};
use criterion::Criterion;
use dlock::{Backend, LockName, LockOptions, Wait};
use dlock_fixtures::{self as fixtures, ZooKeeperOptions};
use zookeeper_client::{Acls, Client, CreateMode};

const FLOOR_PARENT: &str = "/bench-floor/job";
const WAITERS: usize = 8;
const HANDOFFS: usize = 400;

fn main() -> Result<()> {
    let rt = benches::runtime()?;
    let samples = benches::env_usize("ZK_BENCH_SAMPLES", 3000);

    let server = rt.block_on(fixtures::managed_zookeeper(ZooKeeperOptions {
        extra_jvm_args: vec!["-XX:TieredStopAtLevel=4".into()],
        ..ZooKeeperOptions::default()
    }))?;
    benches::pin_apart(&server.pid().into_iter().collect::<Vec<_>>());
    let host = server.addr().context("managed server address")?.to_string();
    let url = format!("{}?base=/bench-dlock&session_timeout=10s", server.url());

    let (backend, raw, floor_path) = rt.block_on(async {
        let backend = dlock::connect(&url).await?;
        let raw = Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .connect(&host)
            .await?;
        raw.mkdir(
            FLOOR_PARENT,
            &CreateMode::Container.with_acls(Acls::anyone_all()),
        )
        .await?;
        let floor_path = format!(
            "{FLOOR_PARENT}/_c_{}-lock-",
            uuid::Uuid::new_v4().hyphenated()
        );
        anyhow::Ok((backend, raw, floor_path))
    })?;
    let name = LockName::new("job")?;
    let opts = LockOptions::new();

    let floor_op = || async {
        let (_, seq) = raw
            .create(
                &floor_path,
                b"dlock pid 1",
                &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
            )
            .await?;
        raw.delete(&format!("{floor_path}{seq}"), None).await?;
        anyhow::Ok(())
    };
    // The least any Curator-compatible lock can do: the create with the contender listing
    // pipelined behind it (one round trip), then the delete.
    let recipe_op = || async {
        let create = raw.create(
            &floor_path,
            b"dlock pid 1",
            &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
        );
        let list = raw.list_children(FLOOR_PARENT);
        let (created, listed) = tokio::join!(create, list);
        let (_, seq) = created?;
        listed?;
        raw.delete(&format!("{floor_path}{seq}"), None).await?;
        anyhow::Ok(())
    };
    let dlock_op = || async {
        let g = backend.acquire(&name, &opts).await?;
        anyhow::ensure!(g.release().await?, "release reported the lock was not ours");
        anyhow::Ok(())
    };

    rt.block_on(async {
        // Warm-up: enough for the JIT to compile the server's hot paths.
        Samples::collect(2000, 0, floor_op).await?;
        Samples::collect(2000, 0, recipe_op).await?;
        Samples::collect(2000, 0, dlock_op).await?;
        // Interleaved one by one, so drift hits all three alike.
        let (mut floor, mut recipe, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..samples {
            let t = Instant::now();
            floor_op().await?;
            floor.push(t.elapsed());
            let t = Instant::now();
            recipe_op().await?;
            recipe.push(t.elapsed());
            let t = Instant::now();
            dlock_op().await?;
            ours.push(t.elapsed());
        }
        let (floor, recipe, ours) = (
            Samples::from(floor),
            Samples::from(recipe),
            Samples::from(ours),
        );
        report_vs_floor(
            "zookeeper acquire+release vs create+delete",
            &ours,
            &floor,
        );
        report_vs_floor(
            "zookeeper acquire+release vs create|list+delete",
            &ours,
            &recipe,
        );
        report_vs_floor(
            "raw create|list+delete vs create+delete",
            &recipe,
            &floor,
        );
        // Phase by phase, to see what dlock adds to the recipe: its acquire against the
        // pipelined create|list, its release against the delete.
        let (mut raw_enter, mut raw_leave, mut acquire, mut release) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..samples {
            let t = Instant::now();
            let create = raw.create(
                &floor_path,
                b"dlock pid 1",
                &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
            );
            let list = raw.list_children(FLOOR_PARENT);
            let (created, listed) = tokio::join!(create, list);
            let (_, seq) = created?;
            listed?;
            raw_enter.push(t.elapsed());
            let t = Instant::now();
            raw.delete(&format!("{floor_path}{seq}"), None).await?;
            raw_leave.push(t.elapsed());
            let t = Instant::now();
            let g = backend.acquire(&name, &opts).await?;
            acquire.push(t.elapsed());
            let t = Instant::now();
            anyhow::ensure!(g.release().await?);
            release.push(t.elapsed());
        }
        report_vs_floor(
            "zookeeper acquire vs create|list",
            &Samples::from(acquire),
            &Samples::from(raw_enter),
        );
        report_vs_floor(
            "zookeeper release vs delete",
            &Samples::from(release),
            &Samples::from(raw_leave),
        );
        let handoff = handoff_latency(&url).await?;
        println!(
            "zookeeper handoff with {WAITERS} waiters: p50 {:>8.1} µs  p99 {:>8.1} µs ({} handoffs)",
            micros(handoff.p50()),
            micros(handoff.p99()),
            handoff.len()
        );
        anyhow::Ok(())
    })?;

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    c.bench_function("zookeeper/acquire_release", |b| {
        b.to_async(&rt)
            .iter(|| async { dlock_op().await.expect("acquire+release") })
    });
    c.bench_function("zookeeper/floor_create_delete", |b| {
        b.to_async(&rt)
            .iter(|| async { floor_op().await.expect("create+delete") })
    });
    c.final_summary();
    drop(server);
    Ok(())
}

/// 1 holder + `WAITERS` waiters on separate sessions; each releases as soon as it is
/// granted. Handoff = next grant − start of the previous release.
async fn handoff_latency(url: &str) -> Result<Samples> {
    let name = LockName::new("handoff")?;
    let events: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    for _ in 0..=WAITERS {
        backends.push(dlock::connect(url).await?);
    }
    let mut tasks = Vec::new();
    for backend in backends {
        let (name, events) = (name.clone(), Arc::clone(&events));
        tasks.push(tokio::spawn(async move {
            let opts = LockOptions::new().with_wait(Wait::For(Duration::from_secs(30)));
            loop {
                let g = backend.acquire(&name, &opts).await?;
                let granted = Instant::now();
                let done = {
                    let mut ev = events.lock().expect("events");
                    // The release starts right after this: the end of this hold.
                    ev.push((granted, Instant::now()));
                    ev.len() > HANDOFFS + WAITERS
                };
                g.release().await?;
                if done {
                    return anyhow::Ok(());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut ev = events.lock().expect("events").clone();
    ev.sort_by_key(|(granted, _)| *granted);
    // Only while every contender was still queued: the first HANDOFFS grants.
    let handoffs: Vec<Duration> = ev
        .windows(2)
        .take(HANDOFFS)
        .map(|w| w[1].0.saturating_duration_since(w[0].1))
        .collect();
    Ok(Samples::from(handoffs))
}

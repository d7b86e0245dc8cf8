//! The contention driver: for every backend of the comparison, on servers started by the
//! fixtures, uncontended acquire + release beside the backend's raw floor
//! (`dlock_compare::bench::Floor`, 2000 samples each, alternating), throughput with 64 tasks
//! on distinct names, handoff latency with 8 waiters, and 10,000 locks held at once by this
//! process (time, resident memory, sockets).
//!
//! `cargo bench -p benches --bench contention [-- BACKEND…]` (default: all eight);
//! `DLOCK_BENCH_MANY` changes the 10,000.

use std::sync::Arc;

use anyhow::Result;
use dlock_compare::bench::{self, BenchPlan, micros};
use dlock_compare::scenario::BACKENDS;
use dlock_fixtures as fixtures;

/// The servers for `backend` and its URL (the handles keep them running).
async fn start(backend: &str) -> Result<(String, Vec<fixtures::Server>, Vec<fixtures::Cluster>)> {
    Ok(match backend {
        "postgres" | "shedlock-postgres" => {
            let s = fixtures::postgres().await?;
            let prefix = if backend == "postgres" {
                ""
            } else {
                "shedlock+"
            };
            (format!("{prefix}{}", s.url()), vec![s], vec![])
        }
        "redis" | "shedlock-redis" => {
            let s = fixtures::redis().await?;
            let prefix = if backend == "redis" { "" } else { "shedlock+" };
            (format!("{prefix}{}", s.url()), vec![s], vec![])
        }
        "redlock" => {
            let c = fixtures::redlock(3).await?;
            (c.url().to_string(), vec![], vec![c])
        }
        "etcd" => {
            let s = fixtures::etcd().await?;
            (s.url().to_string(), vec![s], vec![])
        }
        "zookeeper" => {
            let s = fixtures::zookeeper().await?;
            (s.url().to_string(), vec![s], vec![])
        }
        "mariadb" => {
            let s = fixtures::mariadb().await?;
            (s.url().to_string(), vec![s], vec![])
        }
        other => anyhow::bail!("unknown backend {other:?}"),
    })
}

fn main() -> Result<()> {
    // criterion-style arguments (`--bench`) are ignored; anything else names a backend.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let many = benches::env_usize("DLOCK_BENCH_MANY", 10_000);
    let plan = BenchPlan {
        handoffs: 160,
        per_task: 100,
        many,
        ..BenchPlan::short()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for backend in BACKENDS
        .iter()
        .filter(|b| chosen.is_empty() || chosen.iter().any(|c| c == *b))
    {
        rt.block_on(async {
            let (url, _servers, _clusters) = start(backend).await?;
            // First, while no other connection of this run is opening or closing: the sockets
            // counted are the fresh backend's own.
            let m = bench::hold_many(
                || async { Ok(dlock::connect(&url).await?) },
                plan.many,
            )
            .await?;
            println!(
                "{backend}: {} locks held at once: acquired in {:.2} s, +{:.1} MiB resident (this process; allocator reuse makes later backends read low), {} sockets",
                m.locks,
                m.acquire.as_secs_f64(),
                m.rss_mib,
                m.connections
            );
            let client = dlock::connect(&url).await?;
            if let Some(floor) = bench::Floor::connect(backend, &url).await? {
                let (ours, raw) = bench::uncontended(&*client, &floor, 2000).await?;
                bench::report_vs_floor(
                    &format!("{backend}: acquire+release vs {}", floor.describe()),
                    &ours,
                    &raw,
                );
            }
            let tp = bench::throughput(Arc::clone(&client), plan.tasks, plan.per_task).await?;
            println!(
                "{backend}: {} tasks on distinct names: {tp:.0} acquire+release/s",
                plan.tasks
            );
            let u = url.clone();
            let h = bench::handoff(
                || {
                    let u = u.clone();
                    async move { Ok(dlock::connect(&u).await?) }
                },
                plan.waiters,
                plan.handoffs,
            )
            .await?;
            println!(
                "{backend}: handoff with {} waiters: p50 {:.0} µs  p99 {:.0} µs ({} handoffs)",
                plan.waiters,
                micros(h.p50()),
                micros(h.p99()),
                h.len()
            );
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

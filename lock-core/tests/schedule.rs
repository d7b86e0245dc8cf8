//! The cron scheduler on `memory://`: three replicas, one run per tick.
#![cfg(feature = "cron")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::schedule::ScheduledJob;
use lock_core::{Backend, ErrorKind, JobOutcome, LockName, MemoryBackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_run_each_tick_exactly_once() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let runs = Arc::new(AtomicUsize::new(0));
    // Start just after a second boundary, so all replicas aim at the same ticks (as replicas
    // with synchronised clocks do); otherwise a start straddling a boundary splits them.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1100 - ms)).await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let job = ScheduledJob::new(
            backend.clone(),
            LockName::new("purge").unwrap(),
            "* * * * * *",
            Duration::from_secs(10),
            Some(Duration::from_millis(500)),
        )
        .unwrap();
        let runs = runs.clone();
        replicas.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let runs = runs.clone();
                let tick = job
                    .run_next(|_| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(())
                    })
                    .await
                    .unwrap();
                outcomes.push((tick.at, tick.outcome.unwrap()));
            }
            outcomes
        }));
    }
    let mut per_tick = std::collections::BTreeMap::new();
    for r in replicas {
        for (at, outcome) in r.await.unwrap() {
            let e = per_tick.entry(at).or_insert((0, 0));
            match outcome {
                JobOutcome::Ran(()) => e.0 += 1,
                JobOutcome::Skipped => e.1 += 1,
                JobOutcome::Failed(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), per_tick.len());
    for (at, (ran, skipped)) in &per_tick {
        assert_eq!((*ran, *skipped), (1, 2), "tick {at}");
    }
}

#[test]
fn bad_schedules_are_invalid_options() {
    let b: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let n = LockName::new("j").unwrap();
    for (cron, most, least) in [
        ("every day", 10, None),
        ("* * * * * *", 10, Some(20)),
        ("* * * * * *", 0, None),
    ] {
        let err = ScheduledJob::new(
            b.clone(),
            n.clone(),
            cron,
            Duration::from_secs(most),
            least.map(Duration::from_secs),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidOptions, "{cron}");
    }
}

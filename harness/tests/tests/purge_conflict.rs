//! The seed's purge conflict on a real PostgreSQL (`dlock_compare::strategies::purge`): three
//! workers run `DELETE FROM emp_details WHERE last_updated < now() - interval '30 days'` on
//! the same tick at SERIALIZABLE, without a lock, under dlock's advisory lock, under a
//! ShedLock table, as SKIP LOCKED batches and as optimistic batches; then again beside a live
//! stream of inserts and updates. Prints the measured table.

use dlock_compare::strategies::purge::{self, PurgePlan, Strategy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_tick_under_each_strategy() {
    let pg = dlock_fixtures::postgres()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e:#} (scripts/install-servers installs it)"));
    let quiet = PurgePlan {
        old_rows: 20_000,
        recent_rows: 5_000,
        live: false,
        ..PurgePlan::default()
    };
    println!(
        "| strategy | live stream | errors | retries | rows deleted | workers deleted / skipped / failed | conflicts | wall ms | old left | live ops | live lock-wait samples |"
    );
    for s in Strategy::ALL {
        let o = purge::run(pg.url(), s, &quiet).await.expect("run");
        print_row(&o);
        assert_eq!(o.recent_rows_deleted, 0, "{o:?}");
        assert_eq!(o.old_rows_left, 0, "the purge is complete: {o:?}");
        assert_eq!(
            o.rows_deleted, quiet.old_rows,
            "each old row deleted once: {o:?}"
        );
        match s {
            Strategy::NoLock => {
                // One worker deletes; each other one either fails to serialize or, if its
                // snapshot came after the winner's commit, finds nothing.
                assert_eq!(o.workers_that_deleted, 1, "{o:?}");
                assert_eq!(o.workers_failed as u32, o.serialization_errors, "{o:?}");
            }
            Strategy::Advisory | Strategy::ShedLock => {
                assert_eq!(o.workers_that_deleted, 1, "{o:?}");
                assert_eq!(o.workers_skipped, quiet.workers - 1, "{o:?}");
                assert_eq!(o.serialization_errors, 0, "{o:?}");
            }
            Strategy::SkipLocked | Strategy::Optimistic => {
                assert_eq!((o.workers_failed, o.serialization_errors), (0, 0), "{o:?}");
            }
            // At SERIALIZABLE a row another worker deleted after the batch's snapshot is not
            // skipped but fails the batch: measured, not a bound (some worker still finishes).
            Strategy::SkipLockedSerializable => {}
        }
    }
    // Beside live traffic: inserts, and updates that make random rows (old ones included)
    // recent again. A touched old row must survive; none of the seeded recent rows may go.
    let live = PurgePlan {
        live: true,
        ..quiet.clone()
    };
    for s in Strategy::ALL {
        let o = purge::run(pg.url(), s, &live).await.expect("run");
        print_row(&o);
        assert_eq!(o.recent_rows_deleted, 0, "{o:?}");
        assert!(o.rows_deleted <= live.old_rows, "{o:?}");
        let l = o.live.as_ref().expect("the live stream's numbers");
        assert!(l.ops > 0 && l.samples > 0, "{l:?}");
        match s {
            // The batches retry small units: they finish.
            Strategy::SkipLocked | Strategy::Optimistic => {
                assert_eq!(o.old_rows_left, 0, "retries complete the purge: {o:?}")
            }
            Strategy::SkipLockedSerializable => {}
            // One whole-table statement at SERIALIZABLE beside live updates may fail every
            // attempt (that is the seed's conflict, measured); but never on two workers.
            _ => assert!(o.workers_that_deleted <= 1, "{o:?}"),
        }
    }
    let base = purge::live_baseline(pg.url(), &live, std::time::Duration::from_millis(500))
        .await
        .expect("baseline");
    println!(
        "live stream alone for 500 ms: {} ops, {} of {} samples waiting on a lock, p99 {:.0} µs",
        base.ops, base.lock_wait_samples, base.samples, base.p99_us
    );
    assert_eq!(
        base.lock_wait_samples, 0,
        "nothing to wait for without a purge: {base:?}"
    );
}

fn print_row(o: &purge::PurgeOutcome) {
    let (ops, waits) = o
        .live
        .as_ref()
        .map_or(("—".to_string(), "—".to_string()), |l| {
            (
                l.ops.to_string(),
                format!("{} of {}", l.lock_wait_samples, l.samples),
            )
        });
    println!(
        "| {} | {} | {} | {} | {} | {} / {} / {} | {} | {:.0} | {} | {ops} | {waits} |",
        o.strategy.name(),
        if o.live.is_some() { "yes" } else { "no" },
        o.serialization_errors,
        o.retries,
        o.rows_deleted,
        o.workers_that_deleted,
        o.workers_skipped,
        o.workers_failed,
        o.conflicts,
        o.wall_ms,
        o.old_rows_left
    );
}

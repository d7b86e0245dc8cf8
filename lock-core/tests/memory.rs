//! The contract of DESIGN.md, checked on the `memory://` reference backend. Most tests run
//! on tokio's paused clock, so lease expiry and waiting are exact and instantaneous.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lock_core::{
    Backend, BackendExt, Election, ErrorKind, JobOutcome, LockMode, LockName, LockOptions,
    LockState, MemoryBackend, Renew, Wait,
};
use tokio::time::Instant;

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn no_renew(ttl: Duration) -> LockOptions {
    LockOptions::new().with_ttl(ttl).with_renew(Renew::Off)
}

/// Mutual exclusion: a second exclusive acquire is refused while the first is held.
#[tokio::test(start_paused = true)]
async fn exclusive_lock_refuses_a_second_holder() {
    let b = MemoryBackend::new();
    let n = name("job");
    let a = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = b.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    assert!(err.to_string().contains("\"job\""), "{err}");
    // a different name is a different lock
    b.acquire(&name("other"), &LockOptions::new())
        .await
        .unwrap();
    assert!(a.release().await.unwrap());
    b.acquire(&n, &LockOptions::new()).await.unwrap();
}

/// Shared mode: shared holders coexist; exclusive and shared exclude each other.
#[tokio::test(start_paused = true)]
async fn shared_holders_coexist_and_exclude_exclusive() {
    let b = MemoryBackend::new();
    let n = name("reports");
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    let s1 = b.acquire(&n, &shared).await.unwrap();
    let s2 = b.acquire(&n, &shared).await.unwrap();
    // Readers do not write: no fencing tokens for shared grants.
    assert_eq!((s1.token(), s2.token()), (None, None));
    assert_eq!(s1.mode(), LockMode::Shared);
    let err = b.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    s1.release().await.unwrap();
    s2.release().await.unwrap();
    let x = b.acquire(&n, &LockOptions::new()).await.unwrap();
    assert_eq!(
        b.acquire(&n, &shared).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    drop(x);
}

/// A bounded wait ends in `Timeout` after the wait, not before.
#[tokio::test(start_paused = true)]
async fn bounded_wait_times_out_after_the_wait() {
    let b = MemoryBackend::new();
    let n = name("job");
    let _a = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let start = Instant::now();
    let opts = LockOptions::new().with_wait(Wait::For(secs(2)));
    let err = b.acquire(&n, &opts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(start.elapsed(), secs(2));
}

/// Waiting is by notification: the waiter holds the lock at the very instant of the release.
#[tokio::test(start_paused = true)]
async fn waiter_is_granted_at_the_instant_of_release() {
    let b = MemoryBackend::new();
    let n = name("job");
    let a = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let waiter = {
        let (b, n) = (b.clone(), n.clone());
        tokio::spawn(async move {
            let opts = LockOptions::new().with_wait(Wait::Forever);
            let g = b.acquire(&n, &opts).await.unwrap();
            (Instant::now(), g)
        })
    };
    tokio::time::sleep(secs(5)).await;
    let released_at = Instant::now();
    assert!(a.release().await.unwrap());
    let (granted_at, g) = waiter.await.unwrap();
    // Paused clock: any polling interval would show up as elapsed time.
    assert_eq!(granted_at, released_at);
    assert_eq!(g.state(), LockState::Held);
}

/// Release, then re-acquire; release reports that the lock was ours.
#[tokio::test(start_paused = true)]
async fn release_then_reacquire() {
    let b = MemoryBackend::new();
    let n = name("job");
    for _ in 0..3 {
        let g = b.acquire(&n, &LockOptions::new()).await.unwrap();
        assert!(g.release().await.unwrap());
        assert_eq!(b.holders(&n), 0);
    }
}

/// A stale release after expiry is refused and leaves the new holder alone.
#[tokio::test(start_paused = true)]
async fn stale_release_never_frees_the_next_holders_grant() {
    let b = MemoryBackend::new();
    let n = name("job");
    let old = b.acquire(&n, &no_renew(secs(1))).await.unwrap();
    tokio::time::sleep(secs(2)).await;
    let new = b.acquire(&n, &LockOptions::new()).await.unwrap();
    assert_eq!(old.state(), LockState::Lost);
    assert!(
        !old.release().await.unwrap(),
        "stale release must report not ours"
    );
    assert_eq!(b.holders(&n), 1);
    new.extend(secs(5)).await.unwrap();
    assert_eq!(
        b.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
}

/// Fencing tokens strictly increase across grants, crashes (leaked guards) and restarts.
#[tokio::test(start_paused = true)]
async fn fencing_tokens_strictly_increase() {
    let b = MemoryBackend::new();
    let n = name("job");
    let mut last = None;
    let mut check = |t| {
        assert!(Some(t) > last, "{t:?} after {last:?}");
        last = Some(t);
    };
    for i in 0..6 {
        let g = b.acquire(&n, &no_renew(secs(1))).await.unwrap();
        check(g.token().unwrap());
        match i % 3 {
            0 => assert!(g.release().await.unwrap()),
            1 => {
                // the holder "crashes": nothing is released, the lease runs out
                g.leak();
                tokio::time::sleep(secs(2)).await;
            }
            _ => {
                b.simulate_restart();
                drop(g);
            }
        }
    }
}

/// The holder learns of the loss before anyone else is granted the lock.
#[tokio::test(start_paused = true)]
async fn holder_learns_of_expiry_before_the_next_grant() {
    let b = MemoryBackend::new();
    let n = name("job");
    let start = Instant::now();
    let old = b.acquire(&n, &no_renew(secs(1))).await.unwrap();
    let deadline = old.valid_until().unwrap();
    assert!(
        deadline < start + secs(1),
        "client deadline must precede the lease end"
    );
    let waiter = {
        let (b, n) = (b.clone(), n.clone());
        tokio::spawn(async move {
            let g = b
                .acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
                .await
                .unwrap();
            (Instant::now(), g)
        })
    };
    assert_eq!(old.not_held().await, LockState::Lost);
    let learned_at = Instant::now();
    let (granted_at, _g) = waiter.await.unwrap();
    assert!(learned_at < granted_at, "{learned_at:?} !< {granted_at:?}");
    assert_eq!(
        granted_at - start,
        secs(1),
        "expiry without release is noticed at once"
    );
}

/// Auto-renewal keeps the lock far past one ttl while the guard lives.
#[tokio::test(start_paused = true)]
async fn renewal_keeps_the_lock_while_the_guard_lives() {
    let b = MemoryBackend::new();
    let n = name("job");
    let g = b
        .acquire(&n, &LockOptions::new().with_ttl(secs(1)))
        .await
        .unwrap();
    tokio::time::sleep(secs(30)).await;
    assert_eq!(g.state(), LockState::Held);
    assert_eq!(
        b.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    assert!(g.release().await.unwrap());
}

/// Renewal is bounded by `max_hold`: after it the lease runs out and the guard turns `Lost`.
#[tokio::test(start_paused = true)]
async fn renewal_is_bounded_by_max_hold() {
    let b = MemoryBackend::new();
    let n = name("job");
    let start = Instant::now();
    let opts = LockOptions::new()
        .with_ttl(secs(1))
        .with_renew(Renew::Auto {
            max_hold: Some(secs(5)),
        });
    let g = b.acquire(&n, &opts).await.unwrap();
    assert_eq!(g.not_held().await, LockState::Lost);
    let lost_after = start.elapsed();
    assert!(
        lost_after > secs(3) && lost_after <= secs(5),
        "lost after {lost_after:?}"
    );
    let next = b
        .acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
        .await
        .unwrap();
    assert!(start.elapsed() <= secs(5));
    assert!(next.token() > g.token());
}

/// A renewal that finds the lock gone turns the guard `Lost` and never re-acquires.
#[tokio::test(start_paused = true)]
async fn renewal_never_reacquires_a_lost_lock() {
    let b = MemoryBackend::new();
    let n = name("job");
    let g = b
        .acquire(&n, &LockOptions::new().with_ttl(secs(3)))
        .await
        .unwrap();
    b.simulate_restart();
    assert_eq!(g.not_held().await, LockState::Lost);
    tokio::time::sleep(secs(10)).await;
    assert_eq!(b.holders(&n), 0, "the renewal must not take the lock again");
    assert_eq!(g.extend(secs(3)).await.unwrap_err().kind(), ErrorKind::Lost);
}

/// Renewal stops with the guard: a leaked guard's lock expires after one ttl.
#[tokio::test(start_paused = true)]
async fn renewal_stops_when_the_guard_goes() {
    let b = MemoryBackend::new();
    let n = name("job");
    let start = Instant::now();
    let g = b
        .acquire(&n, &LockOptions::new().with_ttl(secs(2)))
        .await
        .unwrap();
    g.leak();
    b.acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), secs(2));
}

/// A dropped guard is released promptly in the background.
#[tokio::test(start_paused = true)]
async fn dropped_guard_is_released_promptly() {
    let b = MemoryBackend::new();
    let n = name("job");
    let g = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let watch = g.watch();
    drop(g);
    assert_eq!(watch.state(), LockState::Released);
    let start = Instant::now();
    b.acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// A guard dropped outside any runtime neither panics nor blocks; the lease frees the lock.
#[test]
fn guard_dropped_outside_a_runtime_does_not_panic() {
    let b = MemoryBackend::new();
    let n = name("job");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let g = rt
        .block_on(b.acquire(&n, &no_renew(Duration::from_millis(50))))
        .unwrap();
    drop(rt);
    drop(g);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(b.holders(&n), 0);
}

/// Cancel safety: a dropped acquire never leaves the lock held, at any point of its wait.
#[tokio::test(start_paused = true)]
async fn dropped_acquire_never_leaves_the_lock_held() {
    let b = MemoryBackend::new();
    let n = name("job");
    // 1. dropped by a timeout while waiting
    let a = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let r = tokio::time::timeout(
        secs(1),
        b.acquire(&n, &LockOptions::new().with_wait(Wait::Forever)),
    )
    .await;
    assert!(r.is_err());
    assert!(a.release().await.unwrap());
    assert_eq!(b.holders(&n), 0);
    // 2. dropped after the release woke it but before it ran again
    let a = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let opts = LockOptions::new().with_wait(Wait::Forever);
    let mut fut = Box::pin(b.acquire(&n, &opts));
    assert!(futures_poll_once(fut.as_mut()).await.is_none());
    assert!(a.release().await.unwrap());
    drop(fut);
    assert_eq!(b.holders(&n), 0);
    b.acquire(&n, &LockOptions::new()).await.unwrap();
}

async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// `at_least`: a release before it keeps the lock taken until `at_least` after the grant.
#[tokio::test(start_paused = true)]
async fn at_least_keeps_the_lock_after_an_early_release() {
    let b = MemoryBackend::new();
    let n = name("job");
    let start = Instant::now();
    let opts = no_renew(secs(10)).with_at_least(secs(5));
    let g = b.acquire(&n, &opts).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    assert!(g.release().await.unwrap());
    assert_eq!(
        b.acquire(&n, &LockOptions::new()).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    b.acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), secs(5));
    // a release after at_least frees at once
    let n2 = name("job2");
    let g = b.acquire(&n2, &opts).await.unwrap();
    tokio::time::sleep(secs(6)).await;
    assert!(g.release().await.unwrap());
    b.acquire(&n2, &LockOptions::new()).await.unwrap();
}

/// `extend` moves the deadline; zero is invalid input.
#[tokio::test(start_paused = true)]
async fn extend_moves_the_deadline() {
    let b = MemoryBackend::new();
    let n = name("job");
    let g = b.acquire(&n, &no_renew(secs(1))).await.unwrap();
    let before = g.valid_until().unwrap();
    g.extend(secs(10)).await.unwrap();
    assert!(g.valid_until().unwrap() > before + secs(8));
    tokio::time::sleep(secs(5)).await;
    assert_eq!(g.state(), LockState::Held);
    assert_eq!(
        g.extend(Duration::ZERO).await.unwrap_err().kind(),
        ErrorKind::InvalidOptions
    );
}

/// Bad options are typed errors from `acquire`, and nothing is taken.
#[tokio::test(start_paused = true)]
async fn invalid_options_are_rejected_before_locking() {
    let b = MemoryBackend::new();
    let n = name("job");
    let err = b
        .acquire(&n, &LockOptions::new().with_ttl(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidOptions);
    assert_eq!(err.backend(), "memory");
    assert_eq!(b.holders(&n), 0);
}

/// Contention: many tasks on a multi-threaded runtime, never two inside at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_never_overlaps() {
    let b = Arc::new(MemoryBackend::new());
    let n = name("hot");
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (b, n, inside, entered) = (b.clone(), n.clone(), inside.clone(), entered.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = None;
            for _ in 0..50 {
                let g = b
                    .acquire(&n, &LockOptions::new().with_wait(Wait::Forever))
                    .await
                    .unwrap();
                assert!(g.token() > last);
                last = g.token();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "overlap");
                entered.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(g.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(entered.load(Ordering::SeqCst), 400);
}

/// `with_lock` runs the closure under the lock and cancels it when the lock is lost.
#[tokio::test(start_paused = true)]
async fn with_lock_runs_under_the_lock_and_cancels_on_loss() {
    let b = MemoryBackend::new();
    let n = name("job");
    let token = b
        .with_lock(&n, &LockOptions::new(), |held| async move {
            assert_eq!(held.state(), LockState::Held);
            held.token()
        })
        .await
        .unwrap();
    assert!(token.is_some());
    assert_eq!(b.holders(&n), 0, "released afterwards");

    let finished = Arc::new(AtomicUsize::new(0));
    let f2 = finished.clone();
    let err = b
        .with_lock(&n, &no_renew(secs(1)), |_| async move {
            tokio::time::sleep(secs(10)).await;
            f2.fetch_add(1, Ordering::SeqCst);
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "closure must be cancelled"
    );
}

/// `run_exclusive`: runs once, skips while held elsewhere, reports job failures.
#[tokio::test(start_paused = true)]
async fn run_exclusive_runs_skips_and_fails() {
    let b = MemoryBackend::new();
    let n = name("purge");
    let out: JobOutcome<u32, String> = b
        .run_exclusive(&n, secs(60), None, |_| async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(out, JobOutcome::Ran(7));
    let other = b.acquire(&n, &LockOptions::new()).await.unwrap();
    let out: JobOutcome<u32, String> = b
        .run_exclusive(&n, secs(60), None, |_| async { Ok(1) })
        .await
        .unwrap();
    assert!(out.skipped());
    assert!(other.release().await.unwrap());
    let out: JobOutcome<u32, String> = b
        .run_exclusive(&n, secs(60), Some(secs(30)), |_| async {
            Err("boom".into())
        })
        .await
        .unwrap();
    assert_eq!(out, JobOutcome::Failed("boom".to_string()));
    // at_least keeps the next run out even though the failed job ended at once
    let out: JobOutcome<u32, String> = b
        .run_exclusive(&n, secs(60), None, |_| async { Ok(2) })
        .await
        .unwrap();
    assert!(out.skipped());
    tokio::time::sleep(secs(31)).await;
    let out: JobOutcome<u32, String> = b
        .run_exclusive(&n, secs(60), None, |_| async { Ok(3) })
        .await
        .unwrap();
    assert_eq!(out, JobOutcome::Ran(3));
}

/// Election: one leader at a time; the next is elected when the leader's lock is lost, and
/// the old leader is told.
#[tokio::test(start_paused = true)]
async fn election_hands_over_when_the_leader_is_lost() {
    let b = MemoryBackend::new();
    let backend: Arc<dyn Backend> = Arc::new(b.clone());
    let n = name("leader");
    let opts = LockOptions::new().with_ttl(secs(2));
    let e1 = Election::new(backend.clone(), n.clone(), opts.clone());
    let e2 = Election::new(backend, n.clone(), opts);
    let mut l1 = e1.campaign().await.unwrap();
    assert!(l1.is_leader());
    assert!(e2.try_campaign().await.unwrap().is_none());
    let second = tokio::spawn(async move { e2.campaign().await.unwrap() });
    tokio::time::sleep(secs(10)).await;
    assert!(!second.is_finished(), "only one leader at a time");
    b.simulate_restart();
    assert_eq!(l1.lost().await, LockState::Lost);
    let l2 = second.await.unwrap();
    assert!(l2.term() > l1.term());
    assert!(!l1.resign().await.unwrap());
}

/// Every `memory://NAME` URL is one shared instance; different names are independent.
#[tokio::test(start_paused = true)]
async fn memory_urls_share_named_instances() {
    let mut reg = lock_core::Registry::new();
    lock_core::register_memory(&mut reg);
    let a1 = reg.connect("memory://shared-test").await.unwrap();
    let a2 = reg.connect("memory://shared-test").await.unwrap();
    let other = reg.connect("memory://other-test").await.unwrap();
    let n = name("job");
    let _g = a1.acquire(&n, &LockOptions::new()).await.unwrap();
    assert_eq!(
        a2.acquire(&n, &LockOptions::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Contended
    );
    other.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = reg.connect("memory://a/b").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
}

/// A confirmation reported by a backend task while `Held` moves the deadline: the supervisor
/// must not declare the lock lost at the old deadline.
#[tokio::test(start_paused = true)]
async fn external_confirmation_moves_the_deadline() {
    use lock_core::{Grant, Guard, Lease, LeaseMonitor, lease_deadline};
    struct Never;
    impl Lease for Never {
        fn extend(&self, _ttl: Duration) -> lock_core::BoxFuture<'_, lock_core::Result<bool>> {
            Box::pin(std::future::pending())
        }
        fn release(&self) -> lock_core::BoxFuture<'_, lock_core::Result<bool>> {
            Box::pin(async { Ok(true) })
        }
    }
    let n = name("job");
    let start = Instant::now();
    let monitor = LeaseMonitor::new(&n, "test", Some(lease_deadline(start, secs(1))));
    let guard = Guard::new(
        Grant {
            name: n,
            backend: "test",
            token: None,
            lease: Arc::new(Never),
            monitor: monitor.clone(),
            requested_at: start,
        },
        &no_renew(secs(1)),
    );
    // Sleeps here advance tokio's paused clock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    monitor.report_confirmed(Some(Instant::now() + secs(5)));
    tokio::time::sleep(secs(2)).await;
    assert_eq!(guard.state(), LockState::Held);
    assert_eq!(guard.not_held().await, LockState::Lost);
    assert_eq!(start.elapsed(), Duration::from_millis(5500));
}

/// A lease whose backend keeps a [`lock_core::Supervisors`] timetable: counts its renewals.
struct Counted {
    table: lock_core::Supervisors,
    extends: Arc<std::sync::atomic::AtomicUsize>,
}

impl lock_core::Lease for Counted {
    fn extend(&self, _ttl: Duration) -> lock_core::BoxFuture<'_, lock_core::Result<bool>> {
        self.extends
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(true) })
    }
    fn release(&self) -> lock_core::BoxFuture<'_, lock_core::Result<bool>> {
        Box::pin(async { Ok(true) })
    }
    fn supervisors(&self) -> Option<&lock_core::Supervisors> {
        Some(&self.table)
    }
}

fn counted_guard(
    table: &lock_core::Supervisors,
    opts: &LockOptions,
) -> (lock_core::Guard, Arc<std::sync::atomic::AtomicUsize>) {
    use lock_core::{Grant, Guard, LeaseMonitor, lease_deadline};
    let n = name("job");
    let start = Instant::now();
    let extends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lease = Arc::new(Counted {
        table: table.clone(),
        extends: extends.clone(),
    });
    let monitor = LeaseMonitor::new(&n, "test", Some(lease_deadline(start, opts.ttl())));
    let guard = Guard::new(
        Grant {
            name: n,
            backend: "test",
            token: None,
            lease,
            monitor,
            requested_at: start,
        },
        opts,
    );
    (guard, extends)
}

/// With a backend timetable the supervisor starts lazily: a renewed grant is renewed on
/// schedule all the same, a grant without renewal turns Lost at its deadline, and grants
/// released early never renew.
#[tokio::test(start_paused = true)]
async fn lazily_started_supervisors_renew_and_expire_on_schedule() {
    let table = lock_core::Supervisors::new();
    let renewed = LockOptions::new().with_ttl(secs(3));
    let (held, extends) = counted_guard(&table, &renewed);
    let (short, short_extends) = counted_guard(&table, &renewed);
    let (expiring, _) = counted_guard(&table, &no_renew(secs(2)));
    let start = Instant::now();
    short.release().await.unwrap();
    assert_eq!(expiring.not_held().await, LockState::Lost);
    let lost_after = start.elapsed();
    assert!(
        lost_after >= secs(1) && lost_after <= secs(2),
        "lost after {lost_after:?}"
    );
    // Advances tokio's paused clock.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    // Every ttl/3 = 1 s: ten renewals in 10.5 s (plus the 1-2 s above).
    let n = extends.load(std::sync::atomic::Ordering::SeqCst);
    assert!((11..=13).contains(&n), "{n} renewals");
    assert_eq!(held.state(), LockState::Held);
    assert_eq!(short_extends.load(std::sync::atomic::Ordering::SeqCst), 0);
    held.release().await.unwrap();
    let before = extends.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(secs(5)).await;
    assert_eq!(extends.load(std::sync::atomic::Ordering::SeqCst), before);
}

/// Registering a grant wakes the timer task only when the grant is due before the time the
/// timer already sleeps until: in a steady stream of short holds (each released before its
/// first renewal), the timer reads the timetable a few times, not once per grant. (It did
/// once per grant when an emptied timetable made the timer forget the time it slept until.)
#[tokio::test(start_paused = true)]
async fn short_holds_do_not_wake_the_supervisor_timer_per_grant() {
    let table = lock_core::Supervisors::new();
    let opts = LockOptions::new().with_ttl(secs(30));
    for _ in 0..200 {
        let (guard, _) = counted_guard(&table, &opts);
        guard.release().await.unwrap();
        // Let the timer task run if it was woken: it finds the timetable empty again, as it
        // does when a backend's release awaits the network before the timer gets a turn.
        tokio::task::yield_now().await;
        // Advances tokio's paused clock: 200 holds take 2 s, well before the first renewal.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rounds = table.timer_rounds();
    assert!(
        rounds <= 3,
        "the timer read the timetable {rounds} times for 200 grants"
    );
    // And a grant that lives long enough is still renewed on schedule.
    let (held, extends) = counted_guard(&table, &LockOptions::new().with_ttl(secs(3)));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let n = extends.load(std::sync::atomic::Ordering::SeqCst);
    assert!((3..=4).contains(&n), "{n} renewals in 3.5 s with ttl 3 s");
    held.release().await.unwrap();
}

/// The table forgets a name once nobody holds or waits for it, and fencing tokens keep
/// increasing across that (one counter for the table).
#[tokio::test]
async fn idle_names_are_forgotten_and_tokens_keep_increasing() {
    let b = MemoryBackend::new();
    let mut last = 0;
    for i in 0..100 {
        let g = b
            .acquire(&name(&format!("n{}", i % 10)), &LockOptions::new())
            .await
            .unwrap();
        let t = g.token().unwrap().get();
        assert!(t > last, "token {t} after {last}");
        last = t;
        assert_eq!(b.tracked_names(), 1);
        assert!(g.release().await.unwrap());
        assert_eq!(b.tracked_names(), 0);
    }
    // A waiter keeps the entry (and its wake-up) alive until it is done.
    let held = b.acquire(&name("busy"), &LockOptions::new()).await.unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let g = b
                .acquire(
                    &name("busy"),
                    &LockOptions::new().with_wait(Wait::For(secs(5))),
                )
                .await
                .unwrap();
            g.release().await.unwrap()
        })
    };
    // Released only once the waiter waits: forgetting the entry now would lose its wake-up.
    while b.waiters(&name("busy")) == 0 {
        tokio::task::yield_now().await;
    }
    assert!(held.release().await.unwrap());
    assert!(
        tokio::time::timeout(secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
    );
    assert_eq!(b.tracked_names(), 0);
}

/// Semaphores: a permit is the lowest free slot below the caller's limit, with a token that
/// rises per slot; the semaphore is a name space apart from the lock; a released slot is
/// taken again; a bigger limit gets a slot beyond the smaller one's (the caller's rule).
#[tokio::test(start_paused = true)]
async fn permits_take_the_lowest_free_slot() {
    let b = MemoryBackend::new();
    let n = name("reports");
    let two = LockOptions::new().with_permits(2);
    let p0 = b.acquire(&n, &two).await.unwrap();
    let p1 = b.acquire(&n, &two).await.unwrap();
    assert_eq!((p0.slot(), p1.slot()), (Some(0), Some(1)));
    assert_eq!(p0.permits(), Some(2));
    let err = b.acquire(&n, &two).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    // The lock of the same name is not the semaphore.
    let lock = b.acquire(&n, &LockOptions::new()).await.unwrap();
    assert_eq!(lock.slot(), None);
    let t0 = p0.token().unwrap();
    assert!(p0.release().await.unwrap());
    let again = b.acquire(&n, &two).await.unwrap();
    assert_eq!(again.slot(), Some(0));
    assert!(again.token().unwrap() > t0);
    let three = b
        .acquire(&n, &LockOptions::new().with_permits(3))
        .await
        .unwrap();
    assert_eq!(three.slot(), Some(2));
    drop((p1, lock));
}

/// Writer preference: once an exclusive request waits, new shared requests wait behind it;
/// when the writer gives up, they get in again.
#[tokio::test(start_paused = true)]
async fn a_waiting_writer_holds_back_new_readers() {
    let b = MemoryBackend::new();
    let n = name("rw");
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    let r1 = b.acquire(&n, &shared).await.unwrap();
    let (b2, n2) = (b.clone(), n.clone());
    let writer = tokio::spawn(async move {
        b2.acquire(
            &n2,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await
    });
    while b.waiters(&n) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        b.acquire(&n, &shared).await.unwrap_err().kind(),
        ErrorKind::Contended
    );
    // The writer gives up after its wait; readers get in again.
    let err = writer.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let r2 = b.acquire(&n, &shared).await.unwrap();
    drop((r1, r2));
}

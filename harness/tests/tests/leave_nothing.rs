//! Nothing left behind: a `dlock run` that finds the lock busy exits 75 and leaves no
//! contender record, session or lease that would stall the next waiter. Each test: a holder
//! holds, a busy `dlock run` exits 75, a `dlock hold --wait` queues, the holder releases; the
//! waiter must be granted within a handoff's time, not a session timeout (ZooKeeper's default
//! is 10 s: a contender node left by the busy try's session would stall the waiter that long).

mod common;

use std::time::Duration;

use common::{Holder, Kind, dlock, on_backend, unique};

/// Release → the waiter's grant, far below any session timeout or ttl in play here (10 s,
/// 30 s); a handoff takes milliseconds (ShedLock's Redis waiter polls, 400 ms).
const HANDOFF_BOUND_MS: i64 = 2_000;

/// `t_ms` of an event.
fn t_ms(ev: &serde_json::Value) -> i64 {
    ev["t_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no t_ms in {ev}"))
}

/// Holder, a busy `dlock run`, `busy_try` (anything else that tries and gives up), a queued
/// waiter, release; asserts the waiter got the lock within [`HANDOFF_BOUND_MS`].
fn handoff_after_busy_tries(url: &str, busy_try: impl FnOnce(&str, &str)) {
    let name = unique("leave-nothing");
    let name = name.as_str();
    let mut holder = Holder::start(url, name, &[]);
    holder.acquired();

    let (code, stderr) = dlock(&["run", url, name, "--", "true"]);
    assert_eq!(code, Some(75), "a busy dlock run must exit 75: {stderr}");
    busy_try(url, name);

    let mut waiter = Holder::start(url, name, &["--wait", "30s"]);
    let first = waiter.next_event().expect("the waiter ended at once");
    assert_eq!(
        first["event"], "waiting",
        "the waiter must find the lock held: {first}"
    );

    let (events, code) = holder.finish();
    assert_eq!(code, Some(0), "the holder's exit: {events:?}");
    let released = events
        .iter()
        .find(|e| e["event"] == "released")
        .unwrap_or_else(|| panic!("no released event: {events:?}"));
    assert_eq!(released["ours"], true, "{released}");

    let acquired = waiter
        .next_event()
        .expect("the waiter ended without the lock");
    assert_eq!(acquired["event"], "acquired", "{acquired}");
    let gap = t_ms(&acquired) - t_ms(released);
    assert!(
        gap < HANDOFF_BOUND_MS,
        "the waiter got the lock {gap} ms after the release: something the busy try left \
         stalled it (a handoff takes milliseconds)"
    );
    let (_, code) = waiter.finish();
    assert_eq!(code, Some(0));
}

/// The busy CLI try and a library try whose runtime ends at once, then the handoff.
fn busy_tries_leave_nothing(url: &str) {
    handoff_after_busy_tries(url, library_try_then_runtime_gone);
}

/// Also a library client that fails a try and whose runtime shuts down at once, without
/// `Backend::close`: the try itself must withdraw before it reports busy.
fn library_try_then_runtime_gone(url: &str, name: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = dlock::connect(url).await.unwrap();
        let n = dlock::LockName::new(name).unwrap();
        let r = backend
            .acquire(
                &n,
                &dlock::LockOptions::new().with_ttl(Duration::from_secs(30)),
            )
            .await;
        assert_eq!(
            r.err().map(|e| e.kind()),
            Some(dlock::ErrorKind::Contended),
            "the library's try must find the lock busy"
        );
    });
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_busy_try_leaves_no_contender_node() {
    on_backend(Kind::Zookeeper, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_busy_try_leaves_nothing() {
    on_backend(Kind::Etcd, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_busy_try_leaves_nothing() {
    on_backend(Kind::Postgres, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_busy_try_leaves_nothing() {
    on_backend(Kind::Redis, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_busy_try_leaves_nothing() {
    on_backend(Kind::Redlock, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedlock_postgres_busy_try_leaves_nothing() {
    on_backend(Kind::ShedlockPostgres, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedlock_redis_busy_try_leaves_nothing() {
    on_backend(Kind::ShedlockRedis, busy_tries_leave_nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_busy_try_leaves_nothing() {
    on_backend(Kind::MariaDb, busy_tries_leave_nothing).await;
}

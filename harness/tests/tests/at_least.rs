//! `dlock run --at-least` on every backend: a second run inside the window finds the lock
//! busy (75), one after it gets it (0). Backends with server-side `at_least` (Redis, etcd,
//! ShedLock) keep the lock on the server; PostgreSQL, ZooKeeper and MariaDB keep it from the
//! process, which therefore stays until the window has passed (a session lock goes with its
//! session).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kind, dlock, on_backend, unique};

const AT_LEAST: Duration = Duration::from_secs(4);

/// How long after the window the lock may still be taken: etcd rounds the at_least lease up
/// to whole seconds (+1 s) and expires leases a little late; the others free at once.
const OVERSHOOT: Duration = Duration::from_secs(3);

/// The first run's exit, if it comes within `limit`.
fn exits_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn at_least_window_holds(url: &str) {
    let name = unique("at-least");
    let name = name.as_str();
    let dir = std::env::temp_dir().join(format!("dlock-at-least-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    let at_least = format!("{}s", AT_LEAST.as_secs());
    let mut first = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["run", "--at-least", &at_least, url, name, "--", "touch"])
        .arg(&marker)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // The command ran, so the lock was granted before now.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&marker).exists() {
        assert!(
            Instant::now() < deadline,
            "{url}: the first run's command never ran"
        );
        if let Some(status) = first.try_wait().unwrap() {
            panic!("{url}: the first run ended ({status}) before its command ran");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ran_by = Instant::now();
    // Give a first run that drops the lock with its process the chance to do so: with the
    // lock kept only by the process, an early exit here would free it.
    let exited = exits_within(&mut first, Duration::from_secs(1));
    assert!(
        ran_by.elapsed() < AT_LEAST,
        "{url}: too slow to test inside the window"
    );
    let (code, stderr) = dlock(&["run", url, name, "--", "true"]);
    assert_eq!(
        code,
        Some(75),
        "{url}: a run inside the --at-least window must find the lock busy (first run \
         exited: {exited:?}): {stderr}"
    );
    let status = exited.unwrap_or_else(|| first.wait().unwrap());
    assert!(status.success(), "{url}: the first run: {status}");
    // The window ends at most AT_LEAST after the grant, which came before `ran_by`; a backend
    // may overshoot a little (etcd: whole-second leases and its expiry sweep), never much.
    let after = ran_by + AT_LEAST;
    std::thread::sleep(after.saturating_duration_since(Instant::now()));
    let until = after + OVERSHOOT;
    loop {
        let (code, stderr) = dlock(&["run", url, name, "--", "true"]);
        if code == Some(0) {
            break;
        }
        assert_eq!(code, Some(75), "{url}: {stderr}");
        assert!(
            Instant::now() < until,
            "{url}: still busy {OVERSHOOT:?} after the --at-least window ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_honours_at_least() {
    on_backend(Kind::Postgres, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_honours_at_least() {
    on_backend(Kind::Zookeeper, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_honours_at_least() {
    on_backend(Kind::Etcd, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_honours_at_least() {
    on_backend(Kind::Redis, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_honours_at_least() {
    on_backend(Kind::Redlock, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedlock_postgres_honours_at_least() {
    on_backend(Kind::ShedlockPostgres, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedlock_redis_honours_at_least() {
    on_backend(Kind::ShedlockRedis, at_least_window_holds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_honours_at_least() {
    on_backend(Kind::MariaDb, at_least_window_holds).await;
}

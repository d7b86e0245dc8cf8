//! The README's cron recipe, as written, on every backend: three pods run the same line at the
//! same tick, plus a fourth whose clock is a second behind; exactly one runs the purge, the
//! others exit 0 without a word (cron mails any output and any failure). A second tick, after
//! the `--at-least` window, runs it exactly once more.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Kind, dlock, on_backend, unique};

/// The recipe's `--at-least`, shortened from the README's 5m so the test takes seconds.
const AT_LEAST: &str = "3s";

/// One pod's line of the crontab: the README's recipe with the test's URL, name and job.
fn pod(url: &str, name: &str, out: &Path) -> std::process::Child {
    let job = format!("echo ran >> {}", out.display());
    Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["run", "--skip-ok", "--at-least", AT_LEAST])
        .args([url, name, "--", "sh", "-c", &job])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dlock run")
}

fn runs(out: &Path) -> usize {
    std::fs::read_to_string(out)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Three pods at the tick, a late one a second later; every pod exits 0 and is silent.
fn tick(url: &str, name: &str, out: &Path) {
    let pods: Vec<_> = (0..3).map(|_| pod(url, name, out)).collect();
    std::thread::sleep(Duration::from_secs(1)); // the late pod's clock is a second behind
    let late = pod(url, name, out);
    for p in pods.into_iter().chain([late]) {
        let o = p.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "{url}: a pod exited {}: {stderr}",
            o.status
        );
        assert!(
            stderr.is_empty(),
            "{url}: a pod printed (cron would mail it): {stderr}"
        );
    }
}

fn recipe_runs_once_per_tick(url: &str) {
    let name = unique("cron");
    let name = name.as_str();
    let out = std::env::temp_dir().join(format!("dlock-cron-{name}"));
    tick(url, name, &out);
    assert_eq!(runs(&out), 1, "{url}: tick 1 must run the job exactly once");
    // The next tick comes after the window (cron: a day later). Wait until the lock is free;
    // a plain try takes and releases it at once.
    let until = Instant::now() + Duration::from_secs(10);
    while dlock(&["run", url, name, "--", "true"]).0 != Some(0) {
        assert!(
            Instant::now() < until,
            "{url}: the lock never freed after tick 1"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tick(url, name, &out);
    assert_eq!(
        runs(&out),
        2,
        "{url}: tick 2 must run the job exactly once more"
    );
    let _ = std::fs::remove_file(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_postgres() {
    on_backend(Kind::Postgres, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_zookeeper() {
    on_backend(Kind::Zookeeper, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_etcd() {
    on_backend(Kind::Etcd, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_redis() {
    on_backend(Kind::Redis, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_redlock() {
    on_backend(Kind::Redlock, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_shedlock_postgres() {
    on_backend(Kind::ShedlockPostgres, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_shedlock_redis() {
    on_backend(Kind::ShedlockRedis, recipe_runs_once_per_tick).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_recipe_on_mariadb() {
    on_backend(Kind::MariaDb, recipe_runs_once_per_tick).await;
}

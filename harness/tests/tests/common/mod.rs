//! Helpers shared by the real-server test files.
#![allow(dead_code)]

pub mod redis_tls;
pub mod secrets;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A lock name no other test (or run) uses.
pub fn unique(prefix: &str) -> dlock::LockName {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = N.fetch_add(1, Ordering::Relaxed);
    dlock::LockName::new(format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())).unwrap()
}

/// Test logs through the test harness's writer: `RUST_LOG` if set, else `default_filter`.
pub fn init_tracing(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_test_writer()
        .try_init();
}

/// The wall clock in ms since the Unix epoch (to compare with times other processes print).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Polls `f` (a question to a server or a process) with a short backoff, 5 ms doubling up to
/// 100 ms, until it says yes; an error naming `what` and the last answer after `limit`.
pub async fn eventually<F, Fut>(
    what: &str,
    limit: std::time::Duration,
    mut f: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let until = std::time::Instant::now() + limit;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        let last = match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if std::time::Instant::now() >= until {
            anyhow::bail!("{what}: not within {limit:?} (last: {last})");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
}

/// `url` with `query` appended (`?` or `&` as needed).
pub fn with_query(url: &str, query: &str) -> String {
    if query.is_empty() {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

/// A `dlock hold` child process and its event stream.
pub struct Holder {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Holder {
    /// Starts `dlock hold [args…] URL NAME`.
    pub fn start(url: &str, name: &str, args: &[&str]) -> Holder {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
            .arg("hold")
            .args(args)
            .arg(url)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start dlock hold");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Holder {
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON event (blocking), or `None` at end of output.
    pub fn next_event(&mut self) -> Option<serde_json::Value> {
        let line = self.lines.next()?.ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
    }

    /// Waits for the `acquired` event (after a `waiting` event, if it waited) and returns its
    /// token.
    pub fn acquired(&mut self) -> Option<u64> {
        let mut ev = self
            .next_event()
            .expect("dlock hold ended before acquiring");
        if ev["event"] == "waiting" {
            ev = self
                .next_event()
                .expect("dlock hold ended before acquiring");
        }
        assert_eq!(ev["event"], "acquired", "{ev}");
        ev["token"].as_u64()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin (the holder releases) and waits for the exit code.
    pub fn finish(mut self) -> (Vec<serde_json::Value>, Option<i32>) {
        drop(self.stdin.take());
        let mut events = Vec::new();
        while let Some(ev) = self.next_event() {
            events.push(ev);
        }
        let code = self.child.wait().ok().and_then(|s| s.code());
        (events, code)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `dlock ARGS…` to completion; returns the exit code and stderr.
pub fn dlock(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dlock");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every state change of a guard with when the guard learned it, until it is `Lost` or
/// released.
pub fn record_states(
    mut watch: dlock::StateWatch,
) -> tokio::sync::mpsc::UnboundedReceiver<(dlock::LockState, tokio::time::Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let state = watch.changed().await;
            if tx.send((state, watch.state_since())).is_err()
                || matches!(state, dlock::LockState::Lost | dlock::LockState::Released)
            {
                return;
            }
        }
    });
    rx
}

/// The eight backends the process tests (`dlock run`/`hold` as cron would run them) cover.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Postgres,
    ShedlockPostgres,
    Redis,
    ShedlockRedis,
    Redlock,
    Etcd,
    Zookeeper,
    MariaDb,
}

/// The servers behind a [`Kind`], alive while this lives.
pub enum Servers {
    One(Box<dlock_fixtures::Server>),
    Many(dlock_fixtures::Cluster),
}

/// Starts (or finds, through `DLOCK_TEST_*_URL`) the servers of `kind`; the URL to them.
pub async fn servers(kind: Kind) -> (Servers, String) {
    use dlock_fixtures as fixtures;
    let one = |s: fixtures::Server, prefix: &str| {
        let url = format!("{prefix}{}", s.url());
        (Servers::One(Box::new(s)), url)
    };
    match kind {
        Kind::Postgres => one(fixtures::postgres().await.unwrap(), ""),
        Kind::ShedlockPostgres => one(fixtures::postgres().await.unwrap(), "shedlock+"),
        Kind::Redis => one(fixtures::redis().await.unwrap(), ""),
        Kind::ShedlockRedis => one(fixtures::redis().await.unwrap(), "shedlock+"),
        Kind::Etcd => one(fixtures::etcd().await.unwrap(), ""),
        Kind::Zookeeper => one(fixtures::zookeeper().await.unwrap(), ""),
        Kind::MariaDb => one(fixtures::mariadb().await.unwrap(), ""),
        Kind::Redlock => {
            let c = fixtures::redlock(3).await.unwrap();
            let url = c.url().to_string();
            (Servers::Many(c), url)
        }
    }
}

/// Runs `test` with the URL of `kind` on a blocking thread (it waits on child processes),
/// the servers alive until it returns.
pub async fn on_backend(kind: Kind, test: fn(&str)) {
    let (servers, url) = servers(kind).await;
    tokio::task::spawn_blocking(move || test(&url))
        .await
        .unwrap();
    drop(servers);
}

//! Helpers shared by the etcd test files: etcd's default and short-election options, the
//! contender keys as etcd stores them, a `dlock hold` process with its JSON events, and
//! `etcdctl` against one endpoint.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use dlock::etcd::EtcdBackend;
use dlock::etcd::etcd_client::{GetOptions, SortOrder, SortTarget};
use dlock::{LockName, LockOptions};
use dlock_fixtures::EtcdOptions;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// etcd with a short election timeout: 1 s minimum lease TTL.
pub fn fast() -> EtcdOptions {
    EtcdOptions {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(500),
        ..EtcdOptions::default()
    }
}

/// Lock options with a ttl of `ttl_ms`.
pub fn opts(ttl_ms: u64) -> LockOptions {
    LockOptions::new().with_ttl(Duration::from_millis(ttl_ms))
}

/// One contender key as etcd stores it.
#[derive(Debug, Clone)]
pub struct Contender {
    /// The full key: `NAME/<lease id in hex>`.
    pub key: String,
    /// The key's create revision (the holder's token once it holds).
    pub create_revision: i64,
    /// The lease the key is attached to.
    pub lease: i64,
}

/// The contenders of `name` (nested locks excluded), oldest first, read with the raw client.
pub async fn contenders(b: &EtcdBackend, name: &LockName) -> Result<Vec<Contender>> {
    let prefix = b.key_prefix(name);
    let mut kv = b.client().kv_client();
    let resp = kv
        .get(
            prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Ascend),
            ),
        )
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .filter(|kv| !kv.key()[prefix.len()..].contains(&b'/'))
        .map(|kv| Contender {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        })
        .collect())
}

/// Polls `cond` (a server read) until it holds, for at most `within`.
pub async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match cond().await {
            Ok(true) => return Ok(()),
            Ok(false) => "condition false".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end {
            bail!("{what}: not within {within:?} (last: {last})");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits (up to 10 s) until `name` has `n` contenders.
pub async fn queue_len_is(b: &EtcdBackend, name: &LockName, n: usize) -> Result<()> {
    until(
        &format!("{n} contenders on {name}"),
        Duration::from_secs(10),
        || async { Ok(contenders(b, name).await?.len() == n) },
    )
    .await
}

/// A `dlock hold` process and its JSON events.
pub struct Holder {
    child: Child,
    /// Closing it tells `dlock hold` to release.
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Collected by a task, to explain a missing event.
    stderr: Arc<std::sync::Mutex<String>>,
}

impl Holder {
    /// Starts `dlock hold [args…] URL NAME`, reading its events and stderr in the background.
    pub fn spawn(url: &str, name: &LockName, args: &[&str]) -> Result<Holder> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
            .arg("hold")
            .args(args)
            .arg(url)
            .arg(name.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning dlock hold")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let err_text = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = Arc::clone(&err_text);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Ok(Holder {
            child,
            stdin,
            events,
            stderr: err_text,
        })
    }

    /// The next event called `event` (others are skipped), within `within`.
    pub async fn expect(&mut self, event: &str, within: Duration) -> Result<Value> {
        let end = Instant::now() + within;
        loop {
            let got = timeout(
                end.saturating_duration_since(Instant::now()),
                self.events.recv(),
            )
            .await
            .map_err(|_| {
                anyhow!(
                    "no {event:?} event within {within:?}; stderr: {}",
                    self.stderr()
                )
            })?;
            match got {
                Some(v) if v["event"] == event => return Ok(v),
                Some(_) => {}
                None => bail!(
                    "dlock hold ended without a {event:?} event; stderr: {}",
                    self.stderr()
                ),
            }
        }
    }

    /// Closes stdin: `dlock hold` releases and exits.
    pub fn let_go(&mut self) {
        self.stdin = None;
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("dlock hold already exited"))?;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        ensure!(rc == 0, "kill({pid}, {sig}) failed");
        Ok(())
    }

    /// Waits (up to `within`) for the process to exit; its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Result<i32> {
        let status = timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("dlock hold did not exit within {within:?}"))??;
        status
            .code()
            .ok_or_else(|| anyhow!("dlock hold died of a signal: {status}"))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// The `token` field of an event.
pub fn token_of(event: &Value) -> Result<u64> {
    event["token"]
        .as_u64()
        .ok_or_else(|| anyhow!("event without a token: {event}"))
}

/// The `t_ms` field of an event (wall-clock ms since the Unix epoch).
pub fn t_ms(event: &Value) -> Result<u64> {
    event["t_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("event without t_ms: {event}"))
}

/// `etcdctl` against one endpoint (`etcd://h:p…` → `h:p`).
pub fn etcdctl(url: &str) -> Command {
    let endpoint = url
        .trim_start_matches("etcd://")
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

//! Helpers shared by the ZooKeeper test files: servers and URLs, a foreign session (the
//! fixtures' raw-protocol `ZkSession`, which writes nodes in Apache Curator's format
//! independently of dlock's code) and what it sees, Curator's node names and order, and a
//! `dlock hold` process with its JSON events.
#![allow(dead_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock::{Backend, LockName, LockOptions, Wait};
use dlock_fixtures::zookeeper::ZkSession;
use dlock_fixtures::{self as fixtures, Server};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// A standalone server for one test, dropped (process and directory) when the test ends.
pub async fn own_server() -> Result<Server> {
    fixtures::zookeeper().await
}

/// The first `host:port` of a `zk://` URL.
pub fn first_addr(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("zk://").context("not a zk:// URL")?;
    let host = rest
        .split(['/', '?', ','])
        .next()
        .context("no host in the URL")?;
    host.to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

/// A raw-protocol session of its own on the first server of `url` (another client).
pub async fn foreign_session(url: &str) -> Result<ZkSession> {
    ZkSession::connect(first_addr(url)?, Duration::from_secs(30)).await
}

/// A dlock backend for `url`.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    dlock::connect(url)
        .await
        .with_context(|| format!("connecting to {}", dlock::redact(url)))
}

/// `n` as a lock name (test names are valid).
pub fn name(n: &str) -> LockName {
    LockName::new(n).expect("valid test name")
}

/// Options that wait up to `d`.
pub fn wait_for(d: Duration) -> LockOptions {
    LockOptions::new().with_wait(Wait::For(d))
}

/// The children of `path` as a fresh foreign session sees them (empty if it does not exist).
pub async fn children(url: &str, path: &str) -> Result<Vec<String>> {
    let mut s = foreign_session(url).await?;
    let c = s.children(path).await?.unwrap_or_default();
    s.close().await?;
    Ok(c)
}

/// Waits (up to 10 s) until `path` has `n` children.
pub async fn children_count_is(url: &str, path: &str, n: usize) -> Result<()> {
    crate::common::eventually(
        &format!("{path} to have {n} children"),
        Duration::from_secs(10),
        || async { Ok(children(url, path).await?.len() == n) },
    )
    .await
}

/// `_c_` + 36-character UUID + `-lock-` + 10 digits: Curator's protected lock node name.
pub fn is_curator_lock_node(n: &str) -> bool {
    let Some(rest) = n.strip_prefix("_c_") else {
        return false;
    };
    let (uuid, seq) = rest.split_at(rest.len().min(36));
    uuid.len() == 36
        && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && seq.len() == 16
        && seq.starts_with("-lock-")
        && seq[6..].chars().all(|c| c.is_ascii_digit())
}

/// Curator's order: by what follows the last `lock-`.
pub fn curator_sorted(mut nodes: Vec<String>) -> Vec<String> {
    fn key(n: &str) -> &str {
        n.rfind("lock-").map_or(n, |i| &n[i + 5..])
    }
    nodes.sort_by(|a, b| key(a).cmp(key(b)));
    nodes
}

// ---------------------------------------------------------------------------------------------
// `dlock hold` processes

/// A `dlock hold` process and its stdout, one JSON event a line.
pub struct Holder {
    /// The process; closing its stdin makes it release.
    pub child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Holder {
    /// Starts `dlock hold [extra…] URL LOCK`.
    pub fn spawn(url: &str, lock: &str, extra: &[&str]) -> Result<Holder> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
            .arg("hold")
            .args(extra)
            .arg(url)
            .arg(lock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning dlock hold")?;
        let stdout = child.stdout.take().context("no stdout")?;
        Ok(Holder {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next JSON event, within `limit`.
    pub async fn event(&mut self, limit: Duration) -> Result<serde_json::Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .context("no event from dlock hold in time")??
            .context("dlock hold ended without an event")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits for the `acquired` event (after a `waiting` event, if it waited); its token.
    pub async fn acquired(&mut self) -> Result<u64> {
        let mut e = self.event(Duration::from_secs(20)).await?;
        if e["event"] == "waiting" {
            e = self.event(Duration::from_secs(20)).await?;
        }
        ensure!(e["event"] == "acquired", "expected acquired, got {e}");
        e["token"].as_u64().context("no token")
    }
}

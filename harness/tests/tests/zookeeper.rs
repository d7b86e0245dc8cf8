//! The ZooKeeper backend (`zk://`) against real ZooKeeper servers from the fixtures: a shared
//! standalone server for the tests that do not hurt it (`DLOCK_TEST_ZOOKEEPER_URL` points them
//! at an existing one), managed servers and a 3-member ensemble for the ones that need known
//! session-timeout bounds or kill members.
//!
//! "Another client" is played by the fixtures' raw-protocol `ZkSession`, which writes nodes in
//! Apache Curator's format independently of dlock's code; holders in other processes are
//! `dlock hold`; network faults come from `dlock_fixtures::faults::FaultProxy`, and the one it
//! lacks (cut the answer to a given request) from the small proxy in `fault_proxy` below.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Renew, Wait};
use dlock_fixtures::{self as fixtures, Server, ZooKeeperOptions, zookeeper::ZkSession};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A standalone server for one test, dropped (process and directory) when the test ends.
async fn own_server() -> Result<Server> {
    fixtures::zookeeper().await
}

/// The first `host:port` of a `zk://` URL.
fn first_addr(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("zk://").context("not a zk:// URL")?;
    let host = rest
        .split(['/', '?', ','])
        .next()
        .context("no host in the URL")?;
    host.to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

async fn foreign_session(url: &str) -> Result<ZkSession> {
    ZkSession::connect(first_addr(url)?, Duration::from_secs(30)).await
}

async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    dlock::connect(url)
        .await
        .with_context(|| format!("connecting to {}", dlock::redact(url)))
}

fn name(n: &str) -> LockName {
    LockName::new(n).expect("valid test name")
}

fn wait_for(d: Duration) -> LockOptions {
    LockOptions::new().with_wait(Wait::For(d))
}

/// The children of `path` as a fresh foreign session sees them (empty if it does not exist).
async fn children(url: &str, path: &str) -> Result<Vec<String>> {
    let mut s = foreign_session(url).await?;
    let c = s.children(path).await?.unwrap_or_default();
    s.close().await?;
    Ok(c)
}

async fn children_count_is(url: &str, path: &str, n: usize) -> Result<()> {
    common::eventually(
        &format!("{path} to have {n} children"),
        Duration::from_secs(10),
        || async { Ok(children(url, path).await?.len() == n) },
    )
    .await
}

/// `_c_` + 36-character UUID + `-lock-` + 10 digits: Curator's protected lock node name.
fn is_curator_lock_node(n: &str) -> bool {
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
fn curator_sorted(mut nodes: Vec<String>) -> Vec<String> {
    fn key(n: &str) -> &str {
        n.rfind("lock-").map_or(n, |i| &n[i + 5..])
    }
    nodes.sort_by(|a, b| key(a).cmp(key(b)));
    nodes
}

// ---------------------------------------------------------------------------------------------
// `dlock hold` processes

struct Holder {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn spawn(url: &str, lock: &str, extra: &[&str]) -> Result<Holder> {
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
    async fn event(&mut self, limit: Duration) -> Result<serde_json::Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .context("no event from dlock hold in time")??
            .context("dlock hold ended without an event")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Waits for the `acquired` event (after a `waiting` event, if it waited); its token.
    async fn acquired(&mut self) -> Result<u64> {
        let mut e = self.event(Duration::from_secs(20)).await?;
        if e["event"] == "waiting" {
            e = self.event(Duration::from_secs(20)).await?;
        }
        ensure!(e["event"] == "acquired", "expected acquired, got {e}");
        e["token"].as_u64().context("no token")
    }
}

// ---------------------------------------------------------------------------------------------
// Single server: the contract

#[tokio::test]
async fn acquire_release_and_tokens_are_creation_zxids_that_increase() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("basics"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let (a, b) = (connect(&url).await?, connect(&url).await?);
    let job = name("job");
    let lock_path = format!("{base}/job");

    let g = a.acquire(&job, &LockOptions::new()).await?;
    let token = g.token().context("zk grants carry a token")?.get();
    let nodes = children(&url, &lock_path).await?;
    ensure!(nodes.len() == 1, "one contender node, got {nodes:?}");
    ensure!(is_curator_lock_node(&nodes[0]), "{:?}", nodes[0]);
    let mut zk = foreign_session(&url).await?;
    let stat = zk
        .stat(&format!("{lock_path}/{}", nodes[0]))
        .await?
        .context("node")?;
    ensure!(
        stat.czxid as u64 == token,
        "token {token} is not czxid {stat:?}"
    );
    ensure!(stat.ephemeral_owner != 0, "the node must be ephemeral");
    zk.close().await?;

    // Someone else: a try fails at once, a bounded wait times out; neither leaves a node.
    let err = b.acquire(&job, &LockOptions::new()).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    let started = Instant::now();
    let err = b
        .acquire(&job, &wait_for(Duration::from_millis(300)))
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Timeout, "{err}");
    ensure!(started.elapsed() >= Duration::from_millis(300));
    ensure!(
        err.to_string().contains("still held"),
        "unclear message: {err}"
    );
    children_count_is(&url, &lock_path, 1).await?;

    ensure!(
        g.release().await?,
        "release of a held lock reports it was ours"
    );
    children_count_is(&url, &lock_path, 0).await?;

    // Successive grants alternate between two sessions: tokens strictly increase.
    let mut last = token;
    for i in 0..20 {
        let who = if i % 2 == 0 { &b } else { &a };
        let g = who.acquire(&job, &LockOptions::new()).await?;
        let t = g.token().context("token")?.get();
        ensure!(t > last, "token {t} after {last}");
        last = t;
        ensure!(g.release().await?);
    }
    Ok(())
}

#[tokio::test]
async fn waiters_are_granted_in_queue_order_when_the_holder_releases() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("queue"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let holder = connect(&url).await?;
    let g = holder.acquire(&name("q"), &LockOptions::new()).await?;
    let mut waiters = Vec::new();
    for i in 0..3 {
        let b = connect(&url).await?;
        waiters.push(tokio::spawn(async move {
            let g = b
                .acquire(&name("q"), &LockOptions::new().with_wait(Wait::Forever))
                .await?;
            let at = Instant::now();
            let t = g.token().map(|t| t.get());
            g.release().await?;
            anyhow::Ok((i, at, t))
        }));
        // Queue them one after another, so their order is known.
        children_count_is(&url, &format!("{base}/q"), i + 2).await?;
    }
    let released = Instant::now();
    ensure!(g.release().await?);
    let mut got = Vec::new();
    for w in waiters {
        got.push(w.await??);
    }
    got.sort_by_key(|(_, at, _)| *at);
    let order: Vec<usize> = got.iter().map(|(i, _, _)| *i).collect();
    ensure!(order == [0, 1, 2], "granted out of queue order: {order:?}");
    let handoff = got[0].1 - released;
    ensure!(
        handoff < Duration::from_secs(2),
        "first waiter took {handoff:?} after the release (waiting should be by watch)"
    );
    ensure!(got.windows(2).all(|w| w[0].2 < w[1].2), "tokens {got:?}");
    Ok(())
}

#[tokio::test]
async fn every_name_maps_to_its_own_valid_znode() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("names"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let b = connect(&url).await?;
    let long_ascii = "x".repeat(LockName::MAX_LEN);
    let long_emoji = "🔒".repeat(LockName::MAX_LEN / 4);
    let cases: Vec<(&str, String)> = vec![
        ("a/b", "a%2Fb".into()),
        ("a_b", "a_b".into()),
        ("a%2Fb", "a%252Fb".into()),
        (".", "%2E".into()),
        ("..", "%2E%2E".into()),
        ("zookeeper", "zookeeper".into()),
        ("tab\there", "tab%09here".into()),
        ("ключ 🔒", "ключ %F0%9F%94%92".into()),
        ("it's; DROP TABLE x", "it's; DROP TABLE x".into()),
        (&long_ascii, long_ascii.clone()),
        (&long_emoji, "%F0%9F%94%92".repeat(LockName::MAX_LEN / 4)),
    ];
    // All held at once: they are different locks.
    let mut guards = Vec::new();
    for (n, _) in &cases {
        guards.push(b.acquire(&name(n), &LockOptions::new()).await?);
    }
    let mut got = children(&url, &base).await?;
    got.sort();
    let mut want: Vec<String> = cases.iter().map(|(_, z)| z.clone()).collect();
    want.sort();
    ensure!(got == want, "znodes under {base}: {got:?}");
    for g in guards {
        ensure!(g.release().await?);
    }

    // Directly under the root of the tree, `zookeeper` is the server's own node.
    let root_url = common::with_query(server.url(), "base=/");
    let b = connect(&root_url).await?;
    let g = b.acquire(&name("zookeeper"), &LockOptions::new()).await?;
    let mut zk = foreign_session(&url).await?;
    let nodes = zk.children("/%7Aookeeper").await?.unwrap_or_default();
    ensure!(nodes.len() == 1, "{nodes:?}");
    zk.close().await?;
    ensure!(g.release().await?);
    Ok(())
}

#[tokio::test]
async fn bad_urls_options_and_modes_fail_with_typed_errors() -> Result<()> {
    common::init_tracing("warn");
    for (url, needle) in [
        ("zk://", "no ZooKeeper host"),
        ("zk://127.0.0.1:2181?base=locks", "must start with /"),
        ("zk://127.0.0.1:2181?bsae=/x", "unknown option \"bsae\""),
        ("zk://127.0.0.1:2181?session_timeout=soon", "not a duration"),
        ("zk://127.0.0.1:2181?session_timeout=1ms", "out of range"),
        ("zk://127.0.0.1:2181/zookeeper", "reserved"),
        ("zk://127.0.0.1:99999", "bad port"),
    ] {
        let err = dlock::connect(url).await.unwrap_err();
        ensure!(err.kind() == ErrorKind::InvalidUrl, "{url}: {err}");
        ensure!(err.to_string().contains(needle), "{url}: {err}");
    }
    // Nothing listens on port 1: a connection error, quickly.
    let started = Instant::now();
    let err = dlock::connect("zk://127.0.0.1:1?session_timeout=5s")
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Connection, "{err}");
    ensure!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    let server = own_server().await?;
    let b = connect(&common::with_query(
        server.url(),
        &format!("base=/{}", common::unique("bad")),
    ))
    .await?;
    let err = b
        .acquire(
            &name("x"),
            &LockOptions::new().with_mode(dlock::LockMode::Shared),
        )
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Unsupported, "{err}");
    let err = b
        .acquire(&name("x"), &LockOptions::new().with_ttl(Duration::ZERO))
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::InvalidOptions, "{err}");
    let g = b.acquire(&name("x"), &LockOptions::new()).await?;
    let err = g.extend(Duration::from_secs(1)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Unsupported, "{err}");
    ensure!(
        g.state() == LockState::Held,
        "an unsupported extend changes nothing"
    );
    ensure!(g.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Curator interoperability

#[tokio::test]
async fn a_curator_format_node_keeps_dlock_out_until_it_goes() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("curator"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let lock_path = format!("{base}/nightly-purge");

    // Another client takes the lock the way Curator's InterProcessMutex does.
    let mut curator = foreign_session(&url).await?;
    curator.create_node(&base, b"", 4).await?;
    curator.create_node(&lock_path, b"", 4).await?;
    let theirs = curator
        .create_node(
            &format!("{lock_path}/_c_0d4b5a6e-9c1f-4a59-8a1e-2f6c3b7d9e01-lock-"),
            b"127.0.0.1",
            3,
        )
        .await?;
    let their_czxid = curator.stat(&theirs).await?.context("their node")?.czxid;

    let b = connect(&url).await?;
    let err = b
        .acquire(&name("nightly-purge"), &LockOptions::new())
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");

    let waiter = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            let g = b
                .acquire(&name("nightly-purge"), &wait_for(Duration::from_secs(20)))
                .await?;
            anyhow::Ok((g, Instant::now()))
        }
    });
    children_count_is(&url, &lock_path, 2).await?;
    ensure!(
        !waiter.is_finished(),
        "dlock must wait behind the Curator node"
    );
    let gone = Instant::now();
    curator.close().await?; // its ephemeral node goes with the session
    let (g, at) = waiter.await??;
    ensure!(
        at - gone < Duration::from_secs(5),
        "granted {:?} after the Curator node went",
        at - gone
    );
    let token = g.token().context("token")?.get();
    ensure!(
        token > their_czxid as u64,
        "token {token} vs their czxid {their_czxid}"
    );

    // The other way round: a Curator contender arriving now sorts behind dlock's node, so by
    // Curator's own rule (lowest sequence holds) it waits.
    let mut curator = foreign_session(&url).await?;
    let late = curator
        .create_node(
            &format!("{lock_path}/_c_7f3e2d1c-0b9a-4876-9543-210fedcba987-lock-"),
            b"",
            3,
        )
        .await?;
    let order = curator_sorted(curator.children(&lock_path).await?.unwrap_or_default());
    ensure!(order.len() == 2, "{order:?}");
    ensure!(
        is_curator_lock_node(&order[0]),
        "dlock's node {:?}",
        order[0]
    );
    ensure!(
        late.ends_with(&order[1]),
        "Curator must see dlock's node first: {order:?}"
    );
    ensure!(g.release().await?);
    let order = curator.children(&lock_path).await?.unwrap_or_default();
    ensure!(late.ends_with(&order[0]) && order.len() == 1, "{order:?}");
    curator.close().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cancel safety, at_least, hold limits, tokens across container re-creation

#[tokio::test]
async fn a_dropped_acquire_leaves_no_node_behind() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("cancel"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let lock_path = format!("{base}/c");
    let (a, b) = (connect(&url).await?, connect(&url).await?);
    let g = a.acquire(&name("c"), &LockOptions::new()).await?;
    let pending = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            b.acquire(&name("c"), &LockOptions::new().with_wait(Wait::Forever))
                .await
                .map(|_| ())
        }
    });
    children_count_is(&url, &lock_path, 2).await?;
    pending.abort();
    ensure!(pending.await.unwrap_err().is_cancelled());
    children_count_is(&url, &lock_path, 1).await?;
    ensure!(g.release().await?);
    // Nothing of the dropped contender is left in the way.
    let g = b.acquire(&name("c"), &LockOptions::new()).await?;
    ensure!(g.release().await?);
    Ok(())
}

#[tokio::test]
async fn at_least_keeps_the_lock_taken_after_an_early_release() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let url = common::with_query(
        server.url(),
        &format!("base=/{}", common::unique("atleast")),
    );
    let (a, b) = (connect(&url).await?, connect(&url).await?);
    let at_least = Duration::from_millis(800);
    // Taken before asking, so it is no later than the grant that at_least counts from.
    let acquired = Instant::now();
    let g = a
        .acquire(&name("job"), &LockOptions::new().with_at_least(at_least))
        .await?;
    ensure!(g.release().await?, "still ours at release");
    let err = b
        .acquire(&name("job"), &LockOptions::new())
        .await
        .unwrap_err();
    ensure!(
        err.kind() == ErrorKind::Contended,
        "taken until at_least: {err}"
    );
    let g = b
        .acquire(&name("job"), &wait_for(Duration::from_secs(10)))
        .await?;
    let after = acquired.elapsed();
    ensure!(after >= at_least, "free after {after:?}, before at_least");
    ensure!(
        after < at_least + Duration::from_secs(3),
        "free only after {after:?}"
    );
    ensure!(g.release().await?);
    Ok(())
}

#[tokio::test]
async fn without_renewal_the_lock_is_held_for_at_most_one_ttl() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let url = common::with_query(
        server.url(),
        &format!("base=/{}", common::unique("norenew")),
    );
    let (a, b) = (connect(&url).await?, connect(&url).await?);
    let ttl = Duration::from_millis(700);
    let opts = LockOptions::new().with_ttl(ttl).with_renew(Renew::Off);
    let acquired = Instant::now();
    let g = a.acquire(&name("job"), &opts).await?;
    let waiter = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            let g = b
                .acquire(&name("job"), &wait_for(Duration::from_secs(10)))
                .await?;
            anyhow::Ok((g, Instant::now()))
        }
    });
    let state = tokio::time::timeout(Duration::from_secs(5), g.not_held()).await?;
    let lost_at = Instant::now();
    ensure!(state == LockState::Lost, "{state}");
    ensure!(lost_at - acquired < ttl + Duration::from_secs(2));
    let (g2, granted_at) = waiter.await??;
    ensure!(lost_at <= granted_at, "the holder learns first");
    ensure!(granted_at - acquired >= ttl, "{:?}", granted_at - acquired);
    ensure!(
        !g.release().await?,
        "the node was freed at the limit: not ours any more"
    );
    ensure!(g2.release().await?);
    Ok(())
}

#[tokio::test]
async fn tokens_keep_increasing_when_the_lock_container_is_recreated() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let base = format!("/{}", common::unique("container"));
    let url = common::with_query(server.url(), &format!("base={base}"));
    let lock_path = format!("{base}/job");
    let b = connect(&url).await?;
    let mut last = 0;
    let mut first_sequence = None;
    for _ in 0..3 {
        let g = b.acquire(&name("job"), &LockOptions::new()).await?;
        last = g.token().context("token")?.get();
        first_sequence.get_or_insert(children(&url, &lock_path).await?[0].clone());
        ensure!(g.release().await?);
    }
    // What ZooKeeper's container reaper does to an empty lock node (here at once): the
    // sequence counter restarts with the new parent; the creation zxid does not.
    let mut zk = foreign_session(&url).await?;
    ensure!(
        zk.delete(&lock_path).await?,
        "the empty container was there"
    );
    zk.close().await?;
    let g = b.acquire(&name("job"), &LockOptions::new()).await?;
    let node = children(&url, &lock_path).await?[0].clone();
    let first = first_sequence.context("first node")?;
    ensure!(
        node[node.len() - 10..] == first[first.len() - 10..],
        "sequence restarted: {first} then {node}"
    );
    let t = g.token().context("token")?.get();
    ensure!(t > last, "token {t} after {last}");
    ensure!(g.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Across processes

#[tokio::test]
async fn processes_exclude_each_other() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let url = common::with_query(server.url(), &format!("base=/{}", common::unique("procs")));
    let mut first = Holder::spawn(&url, "report", &[])?;
    let t1 = first.acquired().await?;

    let busy = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["hold", &url, "report"])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(
        busy.status.code() == Some(75),
        "a second holder must find it busy: {busy:?}"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["run", &url, "report", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(run.status.code() == Some(75), "{run:?}");

    let mut second = Holder::spawn(&url, "report", &["--wait", "30s"])?;
    drop(first.child.stdin.take()); // closing stdin releases
    let released = first.event(Duration::from_secs(10)).await?;
    ensure!(
        released["event"] == "released" && released["ours"] == true,
        "{released}"
    );
    let t2 = second.acquired().await?;
    ensure!(t2 > t1, "tokens {t1} then {t2}");
    drop(second.child.stdin.take());
    ensure!(second.event(Duration::from_secs(10)).await?["ours"] == true);
    ensure!(second.child.wait().await?.success());

    let run = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args([
            "run",
            &url,
            "report",
            "--",
            "sh",
            "-c",
            "echo $DLOCK_FENCING_TOKEN",
        ])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(run.status.success(), "{run:?}");
    let t3: u64 = String::from_utf8_lossy(&run.stdout).trim().parse()?;
    ensure!(t3 > t2, "tokens {t2} then {t3}");
    Ok(())
}

/// SIGKILL the holder process: its session stays until ZooKeeper expires it, about one session
/// timeout later; then the waiter gets the lock. Measured three times.
#[tokio::test]
async fn a_killed_holder_frees_the_lock_after_about_one_session_timeout() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let timeout = Duration::from_secs(2);
    let base = format!("/{}", common::unique("killed"));
    let url = common::with_query(server.url(), &format!("base={base}&session_timeout=2s"));
    let waiter_backend = connect(&url).await?;
    let mut failovers = Vec::new();
    let mut last_token = 0;
    for round in 0..3 {
        let lock = format!("job{round}");
        let mut holder = Holder::spawn(&url, &lock, &[])?;
        let t_holder = holder.acquired().await?;
        ensure!(t_holder > last_token);
        let waiter = tokio::spawn({
            let b = Arc::clone(&waiter_backend);
            let lock = lock.clone();
            async move {
                let g = b
                    .acquire(&name(&lock), &wait_for(Duration::from_secs(20)))
                    .await?;
                anyhow::Ok((g, Instant::now()))
            }
        });
        children_count_is(&url, &format!("{base}/{lock}"), 2).await?;
        let pid = holder.child.id().context("holder pid")? as i32;
        let killed = Instant::now();
        // SAFETY: kill(2) on a child we spawned and still own.
        ensure!(unsafe { libc::kill(pid, libc::SIGKILL) } == 0);
        let (g, granted) = waiter.await??;
        let failover = granted - killed;
        let t = g.token().context("token")?.get();
        ensure!(
            t > t_holder,
            "token {t} after the killed holder's {t_holder}"
        );
        last_token = t;
        ensure!(g.release().await?);
        let _ = holder.child.wait().await;
        failovers.push(failover);
    }
    eprintln!("zookeeper SIGKILL failover with session_timeout={timeout:?}: {failovers:?}");
    for f in &failovers {
        // Not freed by the TCP close: the server keeps the session until it expires.
        ensure!(*f >= timeout / 2, "freed after only {f:?}");
        ensure!(
            *f < timeout + Duration::from_secs(4),
            "freed only after {f:?}"
        );
    }
    Ok(())
}

/// SIGSTOP the holder past its session timeout: the lock is handed on (the server cannot tell a
/// pause from a crash), and once resumed the holder learns from the session's expiry that it
/// lost the lock: well before dlock's own disconnection timer (about 57 % of the timeout) could say
/// so, which shows the expired-session path turning the guard `Lost`.
#[tokio::test]
async fn a_paused_holder_learns_of_the_loss_soon_after_it_resumes() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let base = format!("/{}", common::unique("paused"));
    let url = common::with_query(server.url(), &format!("base={base}&session_timeout=2s"));
    let mut holder = Holder::spawn(&url, "job", &[])?;
    let t_holder = holder.acquired().await?;
    let other = connect(&url).await?;
    let waiter = tokio::spawn({
        let other = Arc::clone(&other);
        async move {
            other
                .acquire(&name("job"), &wait_for(Duration::from_secs(20)))
                .await
        }
    });
    children_count_is(&url, &format!("{base}/job"), 2).await?;
    let pid = holder.child.id().context("holder pid")? as i32;
    // SAFETY: kill(2) on a child we spawned and still own.
    ensure!(unsafe { libc::kill(pid, libc::SIGSTOP) } == 0);
    let g = waiter.await??;
    let t = g.token().context("token")?.get();
    ensure!(
        t > t_holder,
        "token {t} after the paused holder's {t_holder}"
    );
    let resumed_ms = common::wall_ms();
    // SAFETY: as above.
    ensure!(unsafe { libc::kill(pid, libc::SIGCONT) } == 0);
    let lost_ms = loop {
        let e = holder.event(Duration::from_secs(10)).await?;
        ensure!(e["event"] == "state", "unexpected {e}");
        if e["state"] == "lost" {
            break e["t_ms"].as_u64().context("t_ms")?;
        }
    };
    let learned = Duration::from_millis(lost_ms.saturating_sub(resumed_ms));
    eprintln!(
        "zookeeper SIGSTOP past the session timeout: the holder knew it lost {learned:?} after SIGCONT"
    );
    ensure!(
        learned < Duration::from_secs(3),
        "learned only after {learned:?}"
    );
    ensure!(g.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Network faults through the proxy

#[tokio::test]
async fn a_blackholed_holder_turns_unverifiable_then_lost_before_anyone_else_acquires() -> Result<()>
{
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let timeout = Duration::from_secs(2);
    let proxy = dlock_fixtures::faults::FaultProxy::start(first_addr(server.url())?).await?;
    let base = format!("/{}", common::unique("blackhole"));
    let options = format!("base={base}&session_timeout=2s");
    let holder_url = common::with_query(&format!("zk://{}", proxy.addr()), &options);
    let direct_url = common::with_query(server.url(), &options);
    let holder = connect(&holder_url).await?;
    let other = connect(&direct_url).await?;

    let g = holder.acquire(&name("job"), &LockOptions::new()).await?;
    let mut states = g.watch();
    let waiter = tokio::spawn({
        let other = Arc::clone(&other);
        async move {
            let g = other
                .acquire(&name("job"), &wait_for(Duration::from_secs(20)))
                .await?;
            anyhow::Ok((g, Instant::now()))
        }
    });
    children_count_is(&direct_url, &format!("{base}/job"), 2).await?;

    let cut = Instant::now();
    proxy.set(dlock_fixtures::faults::Fault::Blackhole);
    let first = tokio::time::timeout(Duration::from_secs(10), states.not_held()).await?;
    let unverifiable = Instant::now();
    ensure!(first == LockState::Unverifiable, "first {first}");
    let second = tokio::time::timeout(Duration::from_secs(10), states.lost_or_released()).await?;
    let lost = Instant::now();
    ensure!(second == LockState::Lost, "then {second}");
    let (g2, granted) = waiter.await??;
    eprintln!(
        "zookeeper blackhole with session_timeout={timeout:?}: unverifiable after {:?}, lost \
         after {:?}, another client granted after {:?}",
        unverifiable - cut,
        lost - cut,
        granted - cut
    );
    ensure!(
        unverifiable - cut < timeout,
        "unverifiable before the session can expire"
    );
    ensure!(
        unverifiable < lost && lost < granted,
        "the holder learns first"
    );
    ensure!(
        granted - cut >= timeout / 2,
        "the server kept the session for about its timeout"
    );

    // Heal the network: the old session is gone, so the old guard's release frees nothing,
    // and the backend carries on with a new session.
    proxy.set(dlock_fixtures::faults::Fault::Pass);
    ensure!(
        !g.release().await?,
        "the expired session's lock is not ours any more"
    );
    let err = holder
        .acquire(&name("job"), &LockOptions::new())
        .await
        .unwrap_err();
    ensure!(
        err.kind() == ErrorKind::Contended,
        "new session, lock held by the other: {err}"
    );
    ensure!(g2.release().await?);
    let g = holder.acquire(&name("job"), &LockOptions::new()).await?;
    ensure!(g.release().await?);
    Ok(())
}

/// A connection that breaks long enough for the holder's guard to turn Lost, but not long
/// enough for the server to expire the session, reconnects to the same session, whose
/// ephemeral node is still there: it should be deleted then, so that a lock nobody believes in
/// does not keep everyone out until the holder releases or exits.
#[tokio::test]
async fn a_lock_reported_lost_during_a_disconnection_is_freed_on_reconnect() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let timeout = Duration::from_secs(4);
    let proxy = dlock_fixtures::faults::FaultProxy::start(first_addr(server.url())?).await?;
    let base = format!("/{}", common::unique("orphan"));
    let options = format!("base={base}&session_timeout=4s");
    let holder = connect(&common::with_query(
        &format!("zk://{}", proxy.addr()),
        &options,
    ))
    .await?;
    let direct_url = common::with_query(server.url(), &options);
    let other = connect(&direct_url).await?;

    let g = holder.acquire(&name("job"), &LockOptions::new()).await?;
    let mut states = g.watch();
    let cut = Instant::now();
    proxy.set(dlock_fixtures::faults::Fault::Reset);
    let state = tokio::time::timeout(Duration::from_secs(10), states.lost_or_released()).await?;
    ensure!(state == LockState::Lost, "got {state}");
    let lost = cut.elapsed();
    proxy.set(dlock_fixtures::faults::Fault::Pass);
    let g2 = other
        .acquire(&name("job"), &wait_for(Duration::from_secs(20)))
        .await?;
    let granted = cut.elapsed();
    eprintln!(
        "zookeeper connection reset, session_timeout={timeout:?}: lost after {lost:?}, the \
         other client granted after {granted:?}"
    );
    ensure!(
        granted < timeout * 7 / 8,
        "freed by deleting the node after the reconnect, not by the session expiring: {granted:?}"
    );
    ensure!(
        !g.release().await?,
        "the node was deleted: not ours any more"
    );
    // The holder's session survived: it works, and sees the lock taken.
    let err = holder
        .acquire(&name("job"), &LockOptions::new())
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    ensure!(g2.release().await?);
    Ok(())
}

/// A 200 ms burst of connection resets between the holder and its server, well inside a 2 s
/// session timeout, should cost the holder nothing: its client reconnects to the same session,
/// the guard goes `Unverifiable` and then `Held` again (never `Lost`), release reports the lock
/// was still ours, and a client queued straight at the server is granted only after that
/// release.
#[tokio::test]
async fn a_200ms_burst_of_connection_resets_does_not_cost_the_lock() -> Result<()> {
    use dlock_fixtures::faults::{Fault, FaultProxy};
    use tokio::time::Instant;
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let proxy = FaultProxy::start(first_addr(server.url())?).await?;
    let base = format!("/{}", common::unique("reset-blip"));
    let options = format!("base={base}&session_timeout=2s");
    let holder = connect(&common::with_query(
        &format!("zk://{}", proxy.addr()),
        &options,
    ))
    .await?;
    let direct_url = common::with_query(server.url(), &options);
    let other = connect(&direct_url).await?;

    let g = holder.acquire(&name("job"), &LockOptions::new()).await?;
    let mut states = common::record_states(g.watch());
    let waiter = tokio::spawn({
        let other = Arc::clone(&other);
        async move {
            let g = other
                .acquire(&name("job"), &wait_for(Duration::from_secs(60)))
                .await?;
            anyhow::Ok((g, Instant::now()))
        }
    });
    children_count_is(&direct_url, &format!("{base}/job"), 2).await?;

    proxy.set(Fault::Reset);
    // The length of the fault, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Fault::Pass);
    let healed = Instant::now();

    let (first, _) = tokio::time::timeout(Duration::from_secs(10), states.recv())
        .await
        .context("the reset should have disconnected the holder")?
        .context("state recorder ended")?;
    let held_again = if first == LockState::Held {
        // Unverifiable and back before the recorder looked.
        Instant::now()
    } else {
        ensure!(
            first == LockState::Unverifiable,
            "a reset should make the guard unverifiable, not {first}"
        );
        let (next, at) = tokio::time::timeout(Duration::from_secs(10), states.recv())
            .await
            .context("the guard never turned back to held")?
            .context("state recorder ended")?;
        ensure!(
            next == LockState::Held,
            "after a 200 ms reset, the guard should turn held again, not {next} ({:?} after \
             the network was back)",
            at.saturating_duration_since(healed)
        );
        at
    };
    eprintln!(
        "zookeeper connection reset for 200 ms, session_timeout=2s: held again {:?} after the \
         network was back",
        held_again.saturating_duration_since(healed)
    );
    ensure!(g.state() == LockState::Held, "got {}", g.state());
    ensure!(
        !waiter.is_finished(),
        "the queued client was granted the lock while we held it"
    );
    let releasing = Instant::now();
    ensure!(g.release().await?, "the lock should still have been ours");
    let (g2, granted) = tokio::time::timeout(Duration::from_secs(10), waiter).await???;
    ensure!(granted >= releasing, "granted before our release");
    ensure!(g2.release().await?);
    while let Ok((s, _)) = states.try_recv() {
        ensure!(s != LockState::Lost, "the guard turned lost");
    }
    Ok(())
}

/// Curator's protected mode: the connection breaks after the server created our node but
/// before its answer arrives. The client must find its node by its `_c_<uuid>` prefix instead
/// of creating a second one (which would be an orphan ahead of it: a deadlock until the session
/// ends).
#[tokio::test]
async fn a_connection_loss_during_create_finds_our_own_node() -> Result<()> {
    common::init_tracing("warn");
    let server = own_server().await?;
    let proxy = fault_proxy::FaultProxy::start(first_addr(server.url())?).await?;
    let base = format!("/{}", common::unique("protected"));
    let options = format!("base={base}&session_timeout=5s");
    let url = common::with_query(&format!("zk://{}", proxy.addr()), &options);
    let direct_url = common::with_query(server.url(), &options);
    let b = connect(&url).await?;
    // Parents first, so the cut hits the create of the contender node itself.
    let g = b.acquire(&name("job"), &LockOptions::new()).await?;
    ensure!(g.release().await?);

    proxy.cut_reply_after(b"-lock-");
    let connections = proxy.connections();
    let g = b.acquire(&name("job"), &LockOptions::new()).await?;
    ensure!(proxy.cuts() == 1, "the fault was injected");
    ensure!(proxy.connections() > connections, "the client reconnected");
    let nodes = children(&direct_url, &format!("{base}/job")).await?;
    ensure!(nodes.len() == 1, "exactly our node, no orphan: {nodes:?}");
    let mut zk = foreign_session(&direct_url).await?;
    let stat = zk
        .stat(&format!("{base}/job/{}", nodes[0]))
        .await?
        .context("node")?;
    zk.close().await?;
    ensure!(Some(stat.czxid as u64) == g.token().map(|t| t.get()));
    ensure!(g.release().await?);
    children_count_is(&direct_url, &format!("{base}/job"), 0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ensemble and restarts

/// One member down: the member serving the holder's session is killed, the holder's client
/// moves to another member within its session (guard `Unverifiable`, then `Held` again) and
/// keeps the lock. Two down: no quorum, nothing is granted, the holder cannot be sure.
#[tokio::test]
async fn an_ensemble_works_with_one_member_down_and_refuses_with_two_down() -> Result<()> {
    common::init_tracing("warn");
    let cluster = fixtures::zookeeper_ensemble(3, ZooKeeperOptions::default()).await?;
    let base = format!("/{}", common::unique("ensemble"));
    let url = common::with_query(cluster.url(), &format!("base={base}&session_timeout=4s"));
    let (a, b) = (connect(&url).await?, connect(&url).await?);
    let g = a.acquire(&name("job"), &LockOptions::new()).await?;
    let t0 = g.token().context("token")?.get();

    // Find the member that serves the holder's session (the owner of its node) and kill it.
    let node = children(&url, &format!("{base}/job")).await?;
    let mut zk = foreign_session(&url).await?;
    let owner = zk
        .stat(&format!("{base}/job/{}", node[0]))
        .await?
        .context("the holder's node")?
        .ephemeral_owner;
    zk.close().await?;
    let mut serving = None;
    for (i, m) in cluster.members().iter().enumerate() {
        let addr = m.addr().context("member address")?;
        let cons = fixtures::zookeeper::four_letter_word(addr, "cons").await?;
        if cons.contains(&format!("sid={owner:#x},")) {
            serving = Some(i);
        }
    }
    let serving = serving.with_context(|| format!("no member serves session {owner:#x}"))?;
    // Follow the guard from before the kill: the move can be over before kill_member returns.
    let mut states = g.watch();
    let moved = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let state = states.changed().await;
            seen.push(state);
            if state != LockState::Unverifiable {
                return (seen, Instant::now());
            }
        }
    });
    let killed = Instant::now();
    cluster.kill_member(serving).await?;
    let (seen, back) = tokio::time::timeout(Duration::from_secs(10), moved).await??;
    ensure!(
        seen == [LockState::Unverifiable, LockState::Held],
        "the holder's guard went {seen:?}"
    );
    eprintln!(
        "zookeeper ensemble: the holder's session moved to another member {:?} after its \
         member was killed",
        back - killed
    );
    let err = b
        .acquire(&name("job"), &LockOptions::new())
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "still held: {err}");
    ensure!(g.release().await?, "still ours after the move");

    let held = b
        .acquire(&name("job"), &wait_for(Duration::from_secs(10)))
        .await?;
    let t1 = held.token().context("token")?.get();
    ensure!(t1 > t0);

    let second = (serving + 1) % 3;
    cluster.kill_member(second).await?;
    let started = Instant::now();
    let err = a
        .acquire(&name("job"), &wait_for(Duration::from_secs(2)))
        .await
        .unwrap_err();
    eprintln!(
        "zookeeper ensemble without quorum: acquire failed after {:?}: {err}",
        started.elapsed()
    );
    ensure!(
        matches!(err.kind(), ErrorKind::Connection | ErrorKind::Timeout),
        "{err}"
    );
    ensure!(err.to_string().contains("ZooKeeper"), "unclear: {err}");
    ensure!(started.elapsed() < Duration::from_secs(15));
    let state = tokio::time::timeout(Duration::from_secs(10), held.not_held()).await?;
    ensure!(
        state != LockState::Held,
        "the holder cannot be sure any more"
    );

    cluster.restart_members(&[serving, second]).await?;
    let _ = held.release().await; // may fail or find its session gone: either is fine
    let c = connect(&url).await?;
    let g = c
        .acquire(&name("job"), &wait_for(Duration::from_secs(20)))
        .await?;
    let t2 = g.token().context("token")?.get();
    ensure!(t2 > t1, "token {t2} after {t1}");
    ensure!(g.release().await?);
    Ok(())
}

#[tokio::test]
async fn tokens_keep_increasing_across_a_server_restart() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let url = common::with_query(
        server.url(),
        &format!("base=/{}&session_timeout=4s", common::unique("restart")),
    );
    let b = connect(&url).await?;
    let g = b.acquire(&name("job"), &LockOptions::new()).await?;
    let before = g.token().context("token")?.get();
    ensure!(g.release().await?);
    server.restart().await?;
    let b = connect(&url).await?;
    let g = b.acquire(&name("job"), &LockOptions::new()).await?;
    let after = g.token().context("token")?.get();
    ensure!(
        after > before,
        "token {after} after the restart, {before} before"
    );
    ensure!(g.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A TCP proxy for one upstream that can cut a connection right after the server answered a
/// request containing a given byte pattern (the answer is never delivered): the one fault the
/// shared `dlock_fixtures::faults::FaultProxy` (used for everything else) does not have.
mod fault_proxy {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use anyhow::Result;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    #[derive(Default)]
    struct Faults {
        cut_pattern: Mutex<Option<Vec<u8>>>,
        cuts: AtomicUsize,
        connections: AtomicUsize,
    }

    pub struct FaultProxy {
        addr: SocketAddr,
        faults: Arc<Faults>,
        accept: tokio::task::JoinHandle<()>,
    }

    impl Drop for FaultProxy {
        fn drop(&mut self) {
            self.accept.abort();
        }
    }

    impl FaultProxy {
        pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let faults = Arc::new(Faults::default());
            let accept = tokio::spawn({
                let faults = Arc::clone(&faults);
                async move {
                    while let Ok((client, _)) = listener.accept().await {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            continue;
                        };
                        faults.connections.fetch_add(1, Ordering::SeqCst);
                        let _ = (client.set_nodelay(true), server.set_nodelay(true));
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        let (close, closed) = watch::channel(false);
                        let cut_pending = Arc::new(AtomicBool::new(false));
                        tokio::spawn(pump(
                            cr,
                            sw,
                            Arc::clone(&faults),
                            Direction::Up,
                            Arc::clone(&cut_pending),
                            close.clone(),
                            closed.clone(),
                        ));
                        tokio::spawn(pump(
                            sr,
                            cw,
                            Arc::clone(&faults),
                            Direction::Down,
                            cut_pending,
                            close,
                            closed,
                        ));
                    }
                }
            });
            Ok(FaultProxy {
                addr,
                faults,
                accept,
            })
        }

        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// Once: after the next client chunk containing `pattern` is forwarded, the server's
        /// next answer is dropped and both sides of that connection are closed.
        pub fn cut_reply_after(&self, pattern: &[u8]) {
            *self.faults.cut_pattern.lock().unwrap() = Some(pattern.to_vec());
        }

        pub fn cuts(&self) -> usize {
            self.faults.cuts.load(Ordering::SeqCst)
        }

        pub fn connections(&self) -> usize {
            self.faults.connections.load(Ordering::SeqCst)
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Direction {
        Up,
        Down,
    }

    async fn pump(
        mut from: OwnedReadHalf,
        mut to: OwnedWriteHalf,
        faults: Arc<Faults>,
        direction: Direction,
        cut_pending: Arc<AtomicBool>,
        close: watch::Sender<bool>,
        mut closed: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = closed.wait_for(|c| *c) => break,
            };
            let chunk = &buf[..n];
            match direction {
                Direction::Up => {
                    let mut pattern = faults.cut_pattern.lock().unwrap();
                    if pattern
                        .as_ref()
                        .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()))
                    {
                        *pattern = None;
                        cut_pending.store(true, Ordering::SeqCst);
                    }
                }
                Direction::Down => {
                    if cut_pending.load(Ordering::SeqCst) {
                        faults.cuts.fetch_add(1, Ordering::SeqCst);
                        let _ = close.send(true);
                        break;
                    }
                }
            }
            if to.write_all(chunk).await.is_err() {
                break;
            }
        }
        let _ = close.send(true);
    }
}

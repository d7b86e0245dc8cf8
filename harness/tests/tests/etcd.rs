//! The etcd backend against real etcd servers from the fixtures: a single node
//! (`DLOCK_TEST_ETCD_URL` or a managed one), managed nodes with etcd's default and with a
//! short election timeout (50 ms heartbeat, 500 ms election: the server then grants 1 s
//! leases, which makes the kill and pause tests faster), and 3-node clusters.
//!
//! Cross-process tests run the `dlock` binary (`dlock hold`) and `etcdctl lock`. Every test
//! uses its own lock names, so they run in parallel.

mod common;

use common::{unique, wall_ms};

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use dlock::etcd::EtcdBackend;
use dlock::etcd::etcd_client::{GetOptions, SortOrder, SortTarget};
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Wait};
use dlock_fixtures::faults::{Fault, FaultProxy};
use dlock_fixtures::{self as fixtures, EtcdOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

// ---------------------------------------------------------------------------------------------
// Helpers.

/// etcd with a short election timeout: 1 s minimum lease TTL.
fn fast() -> EtcdOptions {
    EtcdOptions {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout: Duration::from_millis(500),
    }
}

fn opts(ttl_ms: u64) -> LockOptions {
    LockOptions::new().with_ttl(Duration::from_millis(ttl_ms))
}

/// One contender key as etcd stores it.
#[derive(Debug, Clone)]
struct Contender {
    key: String,
    create_revision: i64,
    lease: i64,
}

/// The contenders of `name` (nested locks excluded), oldest first, read with the raw client.
async fn contenders(b: &EtcdBackend, name: &LockName) -> Result<Vec<Contender>> {
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
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Result<()>
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

async fn queue_len_is(b: &EtcdBackend, name: &LockName, n: usize) -> Result<()> {
    until(
        &format!("{n} contenders on {name}"),
        Duration::from_secs(10),
        || async { Ok(contenders(b, name).await?.len() == n) },
    )
    .await
}

/// A `dlock hold` process and its JSON events.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl Holder {
    fn spawn(url: &str, name: &LockName, args: &[&str]) -> Result<Holder> {
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
    async fn expect(&mut self, event: &str, within: Duration) -> Result<Value> {
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
    fn let_go(&mut self) {
        self.stdin = None;
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("dlock hold already exited"))?;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        ensure!(rc == 0, "kill({pid}, {sig}) failed");
        Ok(())
    }

    async fn exit_code(&mut self, within: Duration) -> Result<i32> {
        let status = timeout(within, self.child.wait())
            .await
            .map_err(|_| anyhow!("dlock hold did not exit within {within:?}"))??;
        status
            .code()
            .ok_or_else(|| anyhow!("dlock hold died of a signal: {status}"))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

fn token_of(event: &Value) -> Result<u64> {
    event["token"]
        .as_u64()
        .ok_or_else(|| anyhow!("event without a token: {event}"))
}

fn t_ms(event: &Value) -> Result<u64> {
    event["t_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("event without t_ms: {event}"))
}

/// `etcdctl` against one endpoint (`etcd://h:p…` → `h:p`).
fn etcdctl(url: &str) -> Command {
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

// ---------------------------------------------------------------------------------------------
// Layout, tokens, options.

/// A held lock should be the key `NAME/<its lease id in hex>` and its token the key's create
/// revision; release should delete the key, and the next grant's token should be higher.
#[tokio::test]
async fn layout_matches_etcdctl_lock_and_token_is_the_create_revision() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("layout");
    let g = b.acquire(&name, &opts(5000)).await?;
    let held = contenders(&b, &name).await?;
    ensure!(held.len() == 1, "one key expected: {held:?}");
    let c = &held[0];
    ensure!(
        c.key == format!("{}/{:x}", name.as_str(), c.lease),
        "key {:?} is not NAME/<lease hex> for lease {:x}",
        c.key,
        c.lease
    );
    let t1 = g.token().context("etcd grants carry a token")?.get();
    ensure!(
        t1 == c.create_revision as u64,
        "token {t1} != create revision {}",
        c.create_revision
    );
    ensure!(
        g.release().await?,
        "release should report the lock was ours"
    );
    ensure!(
        contenders(&b, &name).await?.is_empty(),
        "release must delete the key"
    );
    let g2 = b.acquire(&name, &opts(5000)).await?;
    let t2 = g2.token().unwrap().get();
    ensure!(t2 > t1, "tokens must increase: {t1} then {t2}");
    ensure!(g2.release().await?);
    Ok(())
}

/// A ttl below the server's minimum lease TTL should be an InvalidOptions error naming the
/// minimum; a ttl that is not a whole number of seconds should be rounded up.
#[tokio::test]
async fn ttl_below_the_servers_minimum_is_rejected_and_fractions_round_up() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(EtcdOptions::default()).await?;
    let b = EtcdBackend::connect(server.url()).await?;
    ensure!(
        b.capabilities().min_ttl == Some(Duration::from_secs(2)),
        "{:?}",
        b.capabilities()
    );
    let name = unique("min-ttl");
    let err = b.acquire(&name, &opts(1000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::InvalidOptions, "{err}");
    ensure!(
        err.to_string().contains("minimum lease TTL of 2 s"),
        "{err}"
    );
    ensure!(
        contenders(&b, &name).await?.is_empty(),
        "a rejected ttl must not touch the server"
    );

    let g = b.acquire(&name, &opts(1500)).await?;
    let lease = contenders(&b, &name).await?[0].lease;
    let ttl = b.client().lease_client().time_to_live(lease, None).await?;
    ensure!(
        ttl.granted_ttl() == 2,
        "1.5 s should become a 2 s lease, got {}",
        ttl.granted_ttl()
    );
    ensure!(g.release().await?);

    let fast = fixtures::managed_etcd(fast()).await?;
    let b = EtcdBackend::connect(fast.url()).await?;
    ensure!(
        b.min_ttl() == Duration::from_secs(1),
        "500 ms election timeout → 1 s minimum, got {:?}",
        b.min_ttl()
    );
    Ok(())
}

/// Bad URLs should be InvalidUrl errors and an unreachable server a Connection error, neither
/// showing the password.
#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_typed_errors() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let err = dlock::connect("etcd://u:hunter2@127.0.0.1:2379?bogus=1")
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::InvalidUrl, "{err}");
    ensure!(err.to_string().contains("unknown option"), "{err}");
    ensure!(!err.to_string().contains("hunter2"), "{err}");
    let port = fixtures::free_ports(1)?[0];
    let started = Instant::now();
    let err = dlock::connect(&format!(
        "etcd://u:hunter2@127.0.0.1:{port}?connect_timeout=500ms"
    ))
    .await
    .unwrap_err();
    ensure!(err.kind() == ErrorKind::Connection, "{err}");
    ensure!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Extending by more than the lease's TTL should be Unsupported (etcd leases keep the TTL
/// they were granted with); extending within it should work; shared mode is Unsupported.
#[tokio::test]
async fn extend_within_the_lease_ttl_only_and_no_shared_mode() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("extend");
    let g = b.acquire(&name, &opts(3000)).await?;
    let err = g.extend(Duration::from_secs(10)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Unsupported, "{err}");
    ensure!(
        g.state() == LockState::Held,
        "an unsupported extend must not change the state"
    );
    let before = g.valid_until().unwrap();
    g.extend(Duration::from_secs(2)).await?;
    ensure!(g.valid_until().unwrap() > Instant::now() + Duration::from_millis(1500));
    let _ = before;
    ensure!(g.release().await?);
    let shared = LockOptions::new().with_mode(dlock::LockMode::Shared);
    let err = b.acquire(&name, &shared).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Unsupported, "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Contention and waiting.

/// A held lock should make a try fail with Contended and a bounded wait fail with Timeout
/// after about the wait, each leaving no key behind.
#[tokio::test]
async fn try_and_bounded_wait_on_a_held_lock() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("contended");
    let g = b.acquire(&name, &opts(5000)).await?;
    let err = b.acquire(&name, &opts(5000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    let started = Instant::now();
    let wait = opts(5000).with_wait(Wait::For(Duration::from_millis(300)));
    let err = b.acquire(&name, &wait).await.unwrap_err();
    let waited = started.elapsed();
    ensure!(err.kind() == ErrorKind::Timeout, "{err}");
    ensure!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    let keys = contenders(&b, &name).await?;
    ensure!(
        keys.len() == 1,
        "the failed attempts must withdraw their keys: {keys:?}"
    );
    ensure!(g.release().await?);
    let g = b.acquire(&name, &opts(5000)).await?;
    ensure!(g.release().await?);
    Ok(())
}

/// Waiters should be granted one at a time in queue order, with increasing tokens, each
/// promptly after the previous holder released.
#[tokio::test]
async fn waiters_are_granted_in_queue_order_one_at_a_time() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("queue");
    let first = b.acquire(&name, &opts(5000)).await?;
    let inside = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (b2, name2, inside, tx) = (b.clone(), name.clone(), Arc::clone(&inside), tx.clone());
        tasks.push(tokio::spawn(async move {
            let (b, name) = (b2, name2);
            let g = b
                .acquire(&name, &opts(5000).with_wait(Wait::Forever))
                .await?;
            let granted = Instant::now();
            ensure!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            let token = g.token().unwrap().get();
            tokio::task::yield_now().await;
            inside.store(false, Ordering::SeqCst);
            let _ = tx.send((i, token, granted));
            ensure!(g.release().await?);
            Ok::<_, anyhow::Error>(())
        }));
        // Queue them in a known order.
        queue_len_is(&b, &name, i + 2).await?;
    }
    let released_at = Instant::now();
    ensure!(first.release().await?);
    let mut last_token = 0;
    let mut last_at = released_at;
    for expect in 0..3 {
        let (i, token, at) = timeout(Duration::from_secs(10), rx.recv()).await?.unwrap();
        ensure!(i == expect, "waiter {i} granted before waiter {expect}");
        ensure!(
            token > last_token,
            "tokens must increase: {last_token} then {token}"
        );
        let handoff = at - last_at;
        ensure!(handoff < Duration::from_secs(2), "handoff took {handoff:?}");
        (last_token, last_at) = (token, at);
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Dropping an acquire that is waiting should remove its key, so it never holds the lock or
/// blocks anyone.
#[tokio::test]
async fn a_dropped_acquire_removes_its_key() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("cancel");
    let g = b.acquire(&name, &opts(5000)).await?;
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.acquire(&name, &opts(5000).with_wait(Wait::Forever)).await })
    };
    queue_len_is(&b, &name, 2).await?;
    waiter.abort();
    ensure!(waiter.await.unwrap_err().is_cancelled());
    queue_len_is(&b, &name, 1).await?;
    ensure!(g.release().await?);
    let g = b.acquire(&name, &opts(5000)).await?;
    ensure!(g.release().await?);
    Ok(())
}

/// A waiter whose key vanished while it waited (its lease revoked) must not believe it holds
/// the lock: it queues again and is granted with a new key and a higher token.
#[tokio::test]
async fn a_waiter_whose_key_vanished_does_not_believe_it_holds() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("vanished");
    let g = b.acquire(&name, &opts(5000)).await?;
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move { b.acquire(&name, &opts(6000).with_wait(Wait::Forever)).await })
    };
    queue_len_is(&b, &name, 2).await?;
    let old = contenders(&b, &name).await?[1].clone();
    b.client().lease_client().revoke(old.lease).await?;
    ensure!(g.release().await?);
    let w = timeout(Duration::from_secs(10), waiter).await???;
    let token = w.token().unwrap().get() as i64;
    ensure!(
        token > old.create_revision,
        "granted on the vanished key (token {token}, old key rev {})",
        old.create_revision
    );
    let now = contenders(&b, &name).await?;
    ensure!(
        now.len() == 1 && now[0].create_revision == token,
        "the holder's key must exist: {now:?}"
    );
    ensure!(w.release().await?);
    Ok(())
}

/// Names with `/` nest in etcd's key space (`a/b/` lies inside `a/`): a held `a/b` must not
/// block `a`, nor a waiter on `a`.
#[tokio::test]
async fn nested_names_do_not_block_each_other() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let outer = unique("nest");
    let inner = LockName::new(format!("{}/inner", outer.as_str()))?;
    let gi = b.acquire(&inner, &opts(5000)).await?;
    let go = b.acquire(&outer, &opts(5000)).await?;
    let waiter = {
        let (b, outer) = (b.clone(), outer.clone());
        tokio::spawn(async move {
            b.acquire(
                &outer,
                &opts(5000).with_wait(Wait::For(Duration::from_secs(10))),
            )
            .await
        })
    };
    queue_len_is(&b, &outer, 2).await?;
    ensure!(go.release().await?);
    let w = timeout(Duration::from_secs(10), waiter).await???;
    ensure!(gi.state() == LockState::Held);
    ensure!(w.release().await? && gi.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Guard state: keepalives, deadline, vanished key, at_least, restarts.

/// Deleting the holder's key behind its back should turn its guard Lost at the next renewal,
/// and release should then report the lock was not ours.
#[tokio::test]
async fn a_held_lock_whose_key_vanishes_turns_lost() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("deleted");
    let g = b.acquire(&name, &opts(3000)).await?;
    let key = contenders(&b, &name).await?[0].key.clone();
    b.client().kv_client().delete(key, None).await?;
    let state = timeout(Duration::from_secs(3), g.not_held()).await?;
    ensure!(state == LockState::Lost, "got {state}");
    ensure!(
        !g.release().await?,
        "release of a vanished key must report false"
    );
    Ok(())
}

/// With the server paused, the first missed keepalive should make the guard Unverifiable,
/// and the deadline (measured from the last acknowledged keepalive's send time) Lost, before
/// the server could expire the lease.
#[tokio::test]
async fn missed_keepalives_make_the_guard_unverifiable_then_lost_at_its_deadline() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("paused-server");
    let g = b.acquire(&name, &opts(2000)).await?;
    let mut watch = g.watch();
    server.pause().await?;
    let paused = Instant::now();
    let first = timeout(Duration::from_secs(3), watch.changed()).await?;
    let unverifiable_after = paused.elapsed();
    let deadline = g.valid_until().unwrap();
    let lost = timeout(Duration::from_secs(3), watch.lost_or_released()).await?;
    let lost_at = Instant::now();
    server.resume().await?;
    ensure!(
        first == LockState::Unverifiable,
        "first change should be unverifiable, got {first}"
    );
    ensure!(lost == LockState::Lost, "got {lost}");
    ensure!(
        lost_at >= deadline,
        "lost {:?} before its deadline",
        deadline - lost_at
    );
    ensure!(
        lost_at - deadline < Duration::from_millis(300),
        "lost {:?} after its deadline",
        lost_at - deadline
    );
    ensure!(
        deadline <= paused + Duration::from_millis(2000),
        "deadline beyond one ttl of the pause"
    );
    eprintln!(
        "server paused: unverifiable after {unverifiable_after:?}, lost after {:?}",
        lost_at - paused
    );
    Ok(())
}

/// A 200 ms burst of connection resets between the holder and etcd, well inside a 2 s lease,
/// should cost the holder nothing: its keepalives resume once the link is back, its guard goes
/// at worst `Unverifiable` and then `Held` again (never `Lost`), the lock stays its own (release
/// says so), and a client queued straight at the server is granted only after that release.
#[tokio::test]
async fn a_200ms_burst_of_connection_resets_does_not_cost_the_lock() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let upstream = server.addr().context("a managed etcd has an address")?;
    let proxy = FaultProxy::start(upstream).await?;
    let holder = EtcdBackend::connect(&format!("etcd://{}", proxy.addr())).await?;
    let direct = EtcdBackend::connect(server.url()).await?;
    let name = unique("reset-blip");
    let ttl = Duration::from_secs(2);
    let g = holder
        .acquire(&name, &LockOptions::new().with_ttl(ttl))
        .await?;
    let mut states = common::record_states(g.watch());
    let waiter = tokio::spawn({
        let direct = direct.clone();
        let name = name.clone();
        async move {
            let g = direct
                .acquire(&name, &opts(2000).with_wait(Wait::Forever))
                .await?;
            anyhow::Ok((g, Instant::now()))
        }
    });
    queue_len_is(&direct, &name, 2).await?;

    // Start the resets 50 ms before the guard's next keepalive, so that the keepalive meets
    // them: the renewal is sent a third of the ttl after the last acknowledged one, whose send
    // time the deadline gives away.
    let deadline = g.valid_until().context("etcd guards have a deadline")?;
    let last_sent = deadline - (ttl - dlock::drift_allowance(ttl));
    let mut start = last_sent + ttl / 3 - Duration::from_millis(50);
    while start < Instant::now() + Duration::from_millis(10) {
        start += ttl / 3;
    }
    tokio::time::sleep_until(start).await;
    // The deadline the resets threaten: unless a keepalive sent after this point is answered,
    // the guard turns Lost here.
    let threatened = g.valid_until().context("etcd guards have a deadline")?;
    proxy.set(Fault::Reset);
    // The length of the fault, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Fault::Pass);
    let healed = Instant::now();

    // Measurement probe (not a synchronisation): the first instant the guard is Held with a
    // deadline beyond the threatened one, i.e. a keepalive got through after the resets.
    let held_again = timeout_at(threatened + Duration::from_millis(300), async {
        loop {
            match g.state() {
                LockState::Held if g.valid_until().is_some_and(|d| d > threatened) => {
                    return Some(Instant::now());
                }
                LockState::Lost | LockState::Released => return None,
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await;
    let mut history = Vec::new();
    while let Ok((state, at)) = states.try_recv() {
        history.push((state, at.saturating_duration_since(healed)));
    }
    let held_again = match held_again {
        Ok(Some(at)) => at,
        _ => bail!(
            "the guard did not renew its lease after a 200 ms reset (state {}; changes, from \
             the end of the resets: {history:?})",
            g.state()
        ),
    };
    eprintln!(
        "etcd connection reset for 200 ms: keepalives answered again {:?} after the network \
         was back; guard state changes: {history:?}",
        held_again.saturating_duration_since(healed)
    );
    ensure!(
        history.iter().all(|(s, _)| *s != LockState::Lost),
        "the guard turned lost: {history:?}"
    );
    ensure!(
        !waiter.is_finished(),
        "the queued client was granted the lock while we held it"
    );
    let releasing = Instant::now();
    ensure!(g.release().await?, "the lock should still have been ours");
    let (g2, granted) = timeout(Duration::from_secs(10), waiter).await???;
    ensure!(granted >= releasing, "granted before our release");
    ensure!(g2.release().await?);
    while let Ok((s, _)) = states.try_recv() {
        ensure!(s != LockState::Lost, "the guard turned lost");
    }
    Ok(())
}

/// Over a slow link (100 ms added to every chunk each way, so that a keepalive and the key
/// check after it take a few hundred milliseconds of a 667 ms renewal budget) the guard should
/// stay `Held` through several renewals: a keepalive that is merely slow may be doubled on a
/// fresh connection, but must not be abandoned or make the guard unverifiable.
#[tokio::test]
async fn a_slow_link_keeps_the_lock_held_through_renewals() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let upstream = server.addr().context("a managed etcd has an address")?;
    let proxy = FaultProxy::start(upstream).await?;
    let holder = EtcdBackend::connect(&format!("etcd://{}", proxy.addr())).await?;
    let name = unique("slow-link");
    let ttl = Duration::from_secs(2);
    let g = holder
        .acquire(&name, &LockOptions::new().with_ttl(ttl))
        .await?;
    let mut states = common::record_states(g.watch());
    proxy.set(Fault::Latency(Duration::from_millis(100)));
    let first = g.valid_until().context("etcd guards have a deadline")?;
    // Four renewals' worth: if any had failed past the deadline, the guard would be Lost by
    // then, and one that failed at all would have shown as Unverifiable.
    let end = first + ttl;
    let changed = timeout_at(end, states.recv()).await;
    let renewed_to = g.valid_until();
    proxy.set(Fault::Pass);
    ensure!(
        changed.is_err(),
        "the guard changed state over a slow link: {changed:?}"
    );
    ensure!(
        renewed_to.is_some_and(|d| d > end),
        "the lease was not renewed over the slow link"
    );
    ensure!(g.release().await?, "still ours");
    Ok(())
}

/// `at_least` should keep the lock taken after an early release (on a lease nobody keeps
/// alive), and the lock should free itself afterwards.
#[tokio::test]
async fn at_least_keeps_the_lock_after_release_on_the_server() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("at-least");
    let at_least = Duration::from_millis(1500);
    let g = b
        .acquire(&name, &opts(3000).with_at_least(at_least))
        .await?;
    let acquired = g.acquired_at();
    let lease = contenders(&b, &name).await?[0].lease;
    ensure!(g.release().await?);
    let still = contenders(&b, &name).await?;
    ensure!(
        still.len() == 1 && still[0].lease != lease,
        "the key should stay, on another lease: {still:?}"
    );
    let err = b.acquire(&name, &opts(3000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    let g = b
        .acquire(
            &name,
            &opts(3000).with_wait(Wait::For(Duration::from_secs(10))),
        )
        .await?;
    let held_off = g.acquired_at() - acquired;
    ensure!(held_off >= at_least, "freed after {held_off:?}");
    ensure!(
        held_off < Duration::from_secs(4),
        "freed only after {held_off:?}"
    );
    ensure!(g.release().await?);
    Ok(())
}

/// Tokens should keep increasing across a server restart (revisions are persisted), and the
/// backend should reconnect by itself.
#[tokio::test]
async fn tokens_keep_increasing_across_a_server_restart() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("restart");
    let g = b.acquire(&name, &opts(2000)).await?;
    let t1 = g.token().unwrap().get();
    ensure!(g.release().await?);
    server.restart().await?;
    let g = b
        .acquire(
            &name,
            &opts(2000).with_wait(Wait::For(Duration::from_secs(10))),
        )
        .await?;
    let t2 = g.token().unwrap().get();
    ensure!(t2 > t1, "token {t2} after the restart is not above {t1}");
    ensure!(g.release().await?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Across processes: dlock hold, etcdctl lock.

/// Two `dlock hold` processes should exclude each other: a try exits 75, a waiter gets the
/// lock only after the holder released it, with a higher token.
#[tokio::test]
async fn dlock_processes_exclude_each_other() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("processes");
    let mut p1 = Holder::spawn(server.url(), &name, &["--ttl", "5s"])?;
    let t1 = token_of(&p1.expect("acquired", Duration::from_secs(10)).await?)?;
    let mut busy = Holder::spawn(server.url(), &name, &["--ttl", "5s"])?;
    ensure!(
        busy.exit_code(Duration::from_secs(10)).await? == 75,
        "a try on a held lock must exit 75"
    );
    let mut p2 = Holder::spawn(server.url(), &name, &["--ttl", "5s", "--wait", "30s"])?;
    queue_len_is(&b, &name, 2).await?;
    p1.let_go();
    let released = p1.expect("released", Duration::from_secs(10)).await?;
    ensure!(released["ours"] == true, "{released}");
    let acquired = p2.expect("acquired", Duration::from_secs(10)).await?;
    ensure!(token_of(&acquired)? > t1, "{acquired} after token {t1}");
    ensure!(
        t_ms(&acquired)? >= t_ms(&released)?,
        "granted before the release"
    );
    p2.let_go();
    ensure!(p2.exit_code(Duration::from_secs(10)).await? == 0);
    ensure!(p1.exit_code(Duration::from_secs(10)).await? == 0);
    Ok(())
}

/// `etcdctl lock NAME` holding the lock should make dlock wait; when etcdctl lets go, dlock
/// should get the lock with a higher token than etcdctl's key.
#[tokio::test]
async fn etcdctl_lock_excludes_dlock() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("etcdctl-holds");
    let mut ctl = etcdctl(server.url())
        .args(["lock", name.as_str()])
        .spawn()?;
    let mut out = BufReader::new(ctl.stdout.take().unwrap()).lines();
    let printed = timeout(Duration::from_secs(10), out.next_line())
        .await?
        .context("reading etcdctl")?
        .context("etcdctl lock printed nothing")?;
    let held = contenders(&b, &name).await?;
    ensure!(
        held.len() == 1 && held[0].key == printed.trim(),
        "etcdctl printed {printed:?}, keys {held:?}"
    );
    let err = b.acquire(&name, &opts(5000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            b.acquire(
                &name,
                &opts(5000).with_wait(Wait::For(Duration::from_secs(20))),
            )
            .await
        })
    };
    queue_len_is(&b, &name, 2).await?;
    ensure!(
        !waiter.is_finished(),
        "dlock got the lock while etcdctl holds it"
    );
    // etcdctl unlocks and exits on SIGINT.
    let pid = ctl.id().context("etcdctl exited early")?;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let g = timeout(Duration::from_secs(10), waiter).await???;
    ensure!(g.token().unwrap().get() > held[0].create_revision as u64);
    timeout(Duration::from_secs(10), ctl.wait()).await??;
    ensure!(g.release().await?);
    Ok(())
}

/// dlock holding the lock should make `etcdctl lock NAME -- CMD` wait; CMD should run once
/// dlock released.
#[tokio::test]
async fn dlock_excludes_etcdctl_lock() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("dlock-holds");
    let g = b.acquire(&name, &opts(5000)).await?;
    let mut ctl = etcdctl(server.url())
        .args(["lock", name.as_str(), "echo", "etcdctl-ran"])
        .spawn()?;
    queue_len_is(&b, &name, 2).await?;
    ensure!(
        ctl.try_wait()?.is_none(),
        "etcdctl lock finished while dlock holds the lock"
    );
    ensure!(g.release().await?);
    let out = timeout(Duration::from_secs(10), ctl.wait_with_output()).await??;
    ensure!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8_lossy(&out.stdout).contains("etcdctl-ran"));
    queue_len_is(&b, &name, 0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Failures of a holder process.

/// A SIGKILLed holder's lock should go to a waiting process after about one ttl (the lease
/// expires; nobody releases it), with a higher token. The measured failover is printed.
#[tokio::test]
async fn a_killed_holder_frees_the_lock_after_about_one_ttl() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("killed");
    let mut p1 = Holder::spawn(server.url(), &name, &["--ttl", "2s"])?;
    let t1 = token_of(&p1.expect("acquired", Duration::from_secs(10)).await?)?;
    let mut p2 = Holder::spawn(server.url(), &name, &["--ttl", "2s", "--wait", "30s"])?;
    queue_len_is(&b, &name, 2).await?;
    p1.signal(libc::SIGKILL)?;
    let killed_ms = wall_ms();
    let acquired = p2.expect("acquired", Duration::from_secs(10)).await?;
    let failover = Duration::from_millis(t_ms(&acquired)?.saturating_sub(killed_ms));
    eprintln!("etcd: SIGKILLed holder (ttl 2 s) → next holder after {failover:?}");
    ensure!(token_of(&acquired)? > t1);
    // The lease was renewed at most ttl/3 before the kill; etcd checks expiry every 500 ms.
    ensure!(
        failover >= Duration::from_millis(1200),
        "freed after only {failover:?}"
    );
    ensure!(
        failover <= Duration::from_millis(3500),
        "freed only after {failover:?}"
    );
    p2.let_go();
    ensure!(p2.exit_code(Duration::from_secs(10)).await? == 0);
    Ok(())
}

/// A holder paused (SIGSTOP) past its ttl loses the lock to a waiter. Its guard cannot run
/// while paused: it reports Lost the moment it resumes, trailing the next grant by about the
/// rest of the pause (printed), and its release then reports the lock was not ours (exit 76).
/// Its deadline itself had passed before the grant: the next grant needs the lease to
/// expire on the server, at least a ttl after the last keepalive was *received*, while the
/// holder's deadline is a ttl minus the drift allowance after it was *sent*.
#[tokio::test]
async fn a_paused_holder_learns_it_lost_the_lock_when_it_resumes() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("paused");
    let mut p1 = Holder::spawn(server.url(), &name, &["--ttl", "2s"])?;
    let t1 = token_of(&p1.expect("acquired", Duration::from_secs(10)).await?)?;
    let mut p2 = Holder::spawn(server.url(), &name, &["--ttl", "2s", "--wait", "30s"])?;
    queue_len_is(&b, &name, 2).await?;
    let lease = contenders(&b, &name).await?[0].lease;
    p1.signal(libc::SIGSTOP)?;
    let stopped_ms = wall_ms();
    // The server's view of the paused holder's lease: at most one ttl left.
    let left = b
        .client()
        .lease_client()
        .time_to_live(lease, None)
        .await?
        .ttl();
    ensure!(left <= 2, "lease has {left} s left");
    let acquired = p2.expect("acquired", Duration::from_secs(10)).await?;
    let granted_ms = t_ms(&acquired)?;
    ensure!(token_of(&acquired)? > t1);
    p1.signal(libc::SIGCONT)?;
    let resumed_ms = wall_ms();
    let lost = p1.expect("state", Duration::from_secs(5)).await?;
    ensure!(lost["state"] == "lost", "{lost}");
    p1.let_go();
    let released = p1.expect("released", Duration::from_secs(5)).await?;
    ensure!(
        released["ours"] == false,
        "a paused-out holder must not release someone else's lock: {released}"
    );
    ensure!(p1.exit_code(Duration::from_secs(5)).await? == 76);
    let lost_ms = t_ms(&lost)?;
    ensure!(
        lost_ms >= resumed_ms.saturating_sub(5),
        "lost reported before the resume?"
    );
    ensure!(
        lost_ms - resumed_ms.min(lost_ms) < 1000,
        "lost reported {} ms after the resume",
        lost_ms - resumed_ms
    );
    eprintln!(
        "etcd: holder paused (ttl 2 s): next grant {} ms after SIGSTOP; the paused guard reported \
         lost {} ms after SIGCONT, i.e. {} ms after the next grant",
        granted_ms - stopped_ms,
        lost_ms.saturating_sub(resumed_ms),
        lost_ms.saturating_sub(granted_ms)
    );
    p2.let_go();
    ensure!(p2.exit_code(Duration::from_secs(10)).await? == 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3-node clusters.

/// The index of the cluster member that leads (members are named m0, m1, m2).
async fn leader_index(b: &EtcdBackend) -> Result<usize> {
    let mut c = b.client().clone();
    let leader = c.status().await?.leader();
    let members = c.member_list().await?;
    let m = members
        .members()
        .iter()
        .find(|m| m.id() == leader)
        .ok_or_else(|| anyhow!("leader {leader:x} is not a member"))?;
    m.name()
        .strip_prefix('m')
        .and_then(|i| i.parse().ok())
        .ok_or_else(|| anyhow!("unexpected member name {:?}", m.name()))
}

/// With its leader killed, a 3-node cluster should keep serving: locks are granted and
/// released with increasing tokens, a held lock stays held and exclusive.
#[tokio::test]
async fn cluster_with_one_member_down_keeps_working() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let cluster = fixtures::etcd_cluster(3, EtcdOptions::default()).await?;
    let url = format!("{}?request_timeout=2s", cluster.url());
    let b = EtcdBackend::connect(&url).await?;
    let name = unique("cluster-one-down");
    // A ttl well above an election on a busy machine: the holder may turn Unverifiable while
    // the new leader is elected, but should not pass its deadline.
    let g = b.acquire(&name, &opts(6000)).await?;
    let leader = leader_index(&b).await?;
    cluster.kill_member(leader).await?;
    let killed = Instant::now();
    let other = unique("cluster-one-down-other");
    let mut last = g.token().unwrap().get();
    for _ in 0..5 {
        let g2 = b
            .acquire(
                &other,
                &opts(3000).with_wait(Wait::For(Duration::from_secs(10))),
            )
            .await?;
        let t = g2.token().unwrap().get();
        ensure!(t > last, "token {t} after {last}");
        last = t;
        ensure!(g2.release().await?);
    }
    eprintln!(
        "etcd cluster: leader killed; 5 acquire+release cycles done {:?} later",
        killed.elapsed()
    );
    let err = b.acquire(&name, &opts(3000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Contended, "{err}");
    ensure!(
        g.state() != LockState::Lost,
        "the holder lost its lock to a leader change"
    );
    ensure!(g.release().await?);
    Ok(())
}

/// With two of three members down the cluster has no quorum: acquiring should fail with a
/// clear Connection error, the holder's guard should turn Lost by its deadline, and nobody
/// else may get the lock until the quorum is back; then the next holder's token is higher.
#[tokio::test]
async fn cluster_without_quorum_grants_nothing_and_the_holder_learns_first() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let cluster = fixtures::etcd_cluster(3, EtcdOptions::default()).await?;
    let url = format!("{}?request_timeout=2s", cluster.url());
    let holder = EtcdBackend::connect(&url).await?;
    let other = EtcdBackend::connect(&url).await?;
    let name = unique("cluster-no-quorum");
    let g = holder.acquire(&name, &opts(3000)).await?;
    let t1 = g.token().unwrap().get();
    let mut watch = g.watch();
    let leader = leader_index(&holder).await?;
    let down = [leader, (leader + 1) % 3];
    for i in down {
        cluster.kill_member(i).await?;
    }
    let err = other.acquire(&name, &opts(3000)).await.unwrap_err();
    ensure!(err.kind() == ErrorKind::Connection, "{err}");
    let msg = err.to_string();
    ensure!(
        // Which of the three the client hits depends on the endpoint it picks: the survivor
        // (no leader, or no answer in time) or a killed member (connection refused).
        msg.contains("no leader") || msg.contains("did not answer") || msg.contains("unreachable"),
        "{msg}"
    );
    let state = timeout(Duration::from_secs(6), watch.lost_or_released()).await?;
    let lost_at = Instant::now();
    ensure!(state == LockState::Lost, "got {state}");
    // A contender keeps trying through the outage; nothing may be granted before the restart.
    let restarting = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (failed_tx, mut failed) = mpsc::unbounded_channel();
    let contender = {
        let (other, name, restarting) = (other.clone(), name.clone(), Arc::clone(&restarting));
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            loop {
                let wait = opts(3000).with_wait(Wait::For(Duration::from_secs(2)));
                match other.acquire(&name, &wait).await {
                    Ok(g) => {
                        let at = Instant::now();
                        let began = *restarting.lock().unwrap();
                        ensure!(
                            began.is_some_and(|r| r < at),
                            "granted while the cluster had no quorum"
                        );
                        return Ok((g, at));
                    }
                    Err(e) => {
                        ensure!(
                            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
                            "unexpected error during the outage: {e}"
                        );
                        let _ = failed_tx.send(());
                    }
                }
                ensure!(Instant::now() < end, "no grant within 60 s");
            }
        })
    };
    // Once the contender has failed against the leaderless cluster, bring the quorum back.
    timeout(Duration::from_secs(10), failed.recv()).await?;
    *restarting.lock().unwrap() = Some(Instant::now());
    cluster.restart_members(&down).await?;
    let (g2, granted_at) = timeout(Duration::from_secs(60), contender).await???;
    let t2 = g2.token().unwrap().get();
    ensure!(t2 > t1, "token {t2} after {t1}");
    ensure!(lost_at < granted_at, "the old holder did not learn first");
    eprintln!(
        "etcd cluster: quorum lost; the holder's guard turned lost {:?} before the next grant",
        granted_at - lost_at
    );
    ensure!(!g.release().await?, "the old holder's key must be gone");
    ensure!(g2.release().await?);
    Ok(())
}

/// Contenders that release and queue again at once (reusing their pooled lease, so their key
/// names repeat) should never overlap, never deadlock, and see tokens increase in grant order.
#[tokio::test]
async fn busy_contention_with_reused_leases_never_overlaps_or_stalls() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("busy");
    let inside = Arc::new(AtomicBool::new(false));
    let last_token = Arc::new(std::sync::Mutex::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (b, name) = (b.clone(), name.clone());
        let (inside, last_token) = (Arc::clone(&inside), Arc::clone(&last_token));
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let g = b
                    .acquire(
                        &name,
                        &opts(5000).with_wait(Wait::For(Duration::from_secs(20))),
                    )
                    .await?;
                ensure!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let t = g.token().unwrap().get();
                {
                    let mut last = last_token.lock().unwrap();
                    ensure!(t > *last, "token {t} granted after {}", *last);
                    *last = t;
                }
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                ensure!(g.release().await?);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await???;
    }
    Ok(())
}

/// With etcd authentication on, `etcd://user:password@…` should lock, and a wrong password
/// should be a clear error that does not show the password.
#[tokio::test]
async fn credentials_in_the_url_authenticate() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(EtcdOptions::default()).await?;
    for args in [
        &["user", "add", "root:s3cret", "--interactive=false"][..],
        &["auth", "enable"][..],
    ] {
        let out = etcdctl(server.url()).args(args).output().await?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hostport = server.url().trim_start_matches("etcd://").to_string();
    let b = EtcdBackend::connect(&format!("etcd://root:s3cret@{hostport}")).await?;
    let name = unique("auth");
    let g = b.acquire(&name, &opts(3000)).await?;
    ensure!(g.release().await?);
    let err = EtcdBackend::connect(&format!("etcd://root:wrong-pw@{hostport}"))
        .await
        .unwrap_err();
    ensure!(!format!("{err} {err:?}").contains("wrong-pw"), "{err:?}");
    ensure!(err.kind() == ErrorKind::Backend, "{err}");
    Ok(())
}

//! The Redis and Redlock backends (`lock-redis`, issue #5) against real servers.
//!
//! Servers come from `dlock_fixtures` (`DLOCK_TEST_REDIS_URL` points the tests that
//! do not kill or restart a server at an existing one). Cross-process tests run the `dlock`
//! binary and synchronise on its JSON events; the server's state is read with `redis-cli`.
//! Every test uses its own lock names, so the tests run in parallel.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Renew, Wait};
use dlock_fixtures::{self as fixtures, RedisOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{Instant, timeout};

fn ttl(d: Duration) -> LockOptions {
    LockOptions::new().with_ttl(d)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    dlock::connect(url)
        .await
        .with_context(|| format!("connecting to {}", dlock::redact(url)))
}

/// `redis-cli -u URL ARGS…` (the URL without dlock's query options); trimmed stdout.
async fn redis_cli(url: &str, args: &[&str]) -> Result<String> {
    let url = url.split('?').next().unwrap_or(url);
    let out = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running redis-cli")?;
    ensure!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Polls a server reply until it equals `want` (bounded: 5 s).
async fn until_reply(url: &str, args: &[&str], want: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = redis_cli(url, args).await?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("redis-cli {args:?} answered {got:?}, not {want:?}, for 5 s");
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// How many clients are subscribed to the channel of `key` (the waiters).
async fn waiters_on(url: &str, key: &str, want: usize) -> Result<()> {
    until_reply(url, &["PUBSUB", "NUMSUB", key], &format!("{key}\n{want}")).await
}

/// A `dlock hold` process and its JSON events.
struct Holder {
    child: Child,
    events: Lines<BufReader<ChildStdout>>,
}

impl Holder {
    fn spawn(args: &[&str]) -> Result<Holder> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
            .arg("hold")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning dlock hold")?;
        let events = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Holder { child, events })
    }

    fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    async fn next(&mut self, within: Duration) -> Result<Value> {
        let line = timeout(within, self.events.next_line())
            .await
            .with_context(|| format!("no event from dlock hold within {within:?}"))??
            .context("dlock hold closed its stdout")?;
        serde_json::from_str(&line).with_context(|| format!("bad event {line:?}"))
    }

    /// The next event called `event`, skipping others (e.g. `state` changes).
    async fn expect(&mut self, event: &str, within: Duration) -> Result<Value> {
        let until = Instant::now() + within;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let v = self.next(left).await?;
            if v["event"] == event {
                return Ok(v);
            }
        }
    }

    /// Closes stdin (dlock hold then releases) and returns the exit code.
    async fn finish(mut self) -> Result<(Option<Value>, i32)> {
        drop(self.child.stdin.take());
        let released = self.expect("released", Duration::from_secs(10)).await.ok();
        let status = timeout(Duration::from_secs(10), self.child.wait()).await??;
        Ok((released, status.code().unwrap_or(-1)))
    }
}

fn token(v: &Value) -> Result<u64> {
    v["token"]
        .as_u64()
        .with_context(|| format!("no token in {v}"))
}

/// Should keep a lock exclusive across processes: a second `dlock hold` is told "busy" (75),
/// and the next holder gets a higher fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_across_processes() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("excl");
    let mut a = Holder::spawn(&["--ttl", "5s", url, name.as_str()])?;
    let t1 = token(&a.expect("acquired", Duration::from_secs(10)).await?)?;

    let busy = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["hold", url, name.as_str()])
        .stdin(Stdio::null())
        .output()
        .await?;
    assert_eq!(busy.status.code(), Some(75), "{busy:?}");
    let backend = connect(url).await?;
    let err = backend
        .acquire(&name, &LockOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");

    let (released, code) = a.finish().await?;
    assert_eq!(released.map(|v| v["ours"].clone()), Some(Value::Bool(true)));
    assert_eq!(code, 0);
    let g = backend.acquire(&name, &LockOptions::new()).await?;
    let t2 = g.token().context("redis grants carry a token")?.get();
    assert!(t2 > t1, "token {t2} after {t1}");
    assert!(g.release().await?);
    Ok(())
}

/// A waiter (up to 20 s) that releases at once; its task returns when it was granted.
fn spawn_timed_waiter(
    waiter: Arc<dyn Backend>,
    name: &LockName,
) -> tokio::task::JoinHandle<Result<Instant>> {
    let name = name.clone();
    tokio::spawn(async move {
        let opts = ttl(Duration::from_secs(30)).with_wait(Wait::For(Duration::from_secs(20)));
        let g = waiter.acquire(&name, &opts).await?;
        let at = Instant::now();
        g.release().await?;
        anyhow::Ok(at)
    })
}

/// Should wake a waiter by the release's publish, long before the lease or the fallback
/// re-check would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_release() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("wake");
    let key = format!("dlock:{name}");
    let holder = connect(url).await?;
    let waiter = connect(url).await?;
    let g = holder.acquire(&name, &ttl(Duration::from_secs(30))).await?;
    let wait = spawn_timed_waiter(waiter, &name);
    waiters_on(url, &key, 1).await?;
    let released_at = Instant::now();
    assert!(g.release().await?);
    let acquired_at = timeout(Duration::from_secs(10), wait).await???;
    let handoff = acquired_at - released_at;
    // The fallback re-check is at least 800 ms away and the lease 30 s: only the
    // notification can be this fast.
    assert!(handoff < ms(400), "handoff took {handoff:?}");
    // The waiter's subscription goes away with it.
    waiters_on(url, &key, 0).await?;
    Ok(())
}

/// Should resubscribe a waiter whose pub/sub connection was killed, and still wake it by the
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_survive_a_killed_pubsub_connection() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("resub");
    let key = format!("dlock:{name}");
    let holder = connect(url).await?;
    let waiter = connect(url).await?;
    let g = holder.acquire(&name, &ttl(Duration::from_secs(30))).await?;
    let wait = spawn_timed_waiter(waiter, &name);
    waiters_on(url, &key, 1).await?;
    let killed = redis_cli(url, &["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
    assert_ne!(killed, "0", "no pub/sub connection was killed");
    // Subscribed again on a new connection.
    waiters_on(url, &key, 1).await?;
    let released_at = Instant::now();
    assert!(g.release().await?);
    let acquired_at = timeout(Duration::from_secs(10), wait).await???;
    let handoff = acquired_at - released_at;
    assert!(handoff < ms(400), "handoff took {handoff:?}");
    Ok(())
}

/// Should refuse a stale release ("not ours") after the lease expired and someone else took
/// the lock, and leave the new holder's key alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_release_after_expiry_is_refused() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("stale");
    let key = format!("dlock:{name}");
    let a = connect(url).await?;
    let b = connect(url).await?;
    let g1 = a
        .acquire(&name, &ttl(ms(200)).with_renew(Renew::Off))
        .await?;
    assert_eq!(g1.not_held().await, LockState::Lost);
    let g2 = b
        .acquire(
            &name,
            &ttl(Duration::from_secs(10)).with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await?;
    assert!(g2.token() > g1.token());
    let err = g1.extend(Duration::from_secs(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Lost, "{err}");
    assert!(!g1.release().await?, "a stale release must say 'not ours'");
    assert_eq!(redis_cli(url, &["EXISTS", &key]).await?, "1");
    let pttl: i64 = redis_cli(url, &["PTTL", &key]).await?.parse()?;
    assert!(
        pttl > 5_000,
        "the new holder's lease was touched: pttl {pttl}"
    );
    let err = a.acquire(&name, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    assert_eq!(g2.state(), LockState::Held);
    assert!(g2.release().await?);
    Ok(())
}

/// Should let another client in when a holder is SIGSTOPped past its ttl; the resumed
/// holder's guard is `Lost` and its release is refused (exit 76).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holder_loses_the_lock_and_learns_it() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("sigstop");
    let mut holder = Holder::spawn(&["--ttl", "1s", url, name.as_str()])?;
    let t1 = token(&holder.expect("acquired", Duration::from_secs(10)).await?)?;
    holder.signal(libc::SIGSTOP);
    let backend = connect(url).await?;
    let opts = ttl(Duration::from_secs(10)).with_wait(Wait::For(Duration::from_secs(5)));
    let g = backend.acquire(&name, &opts).await?;
    let t2 = g.token().context("token")?.get();
    assert!(t2 > t1, "token {t2} after {t1}");
    holder.signal(libc::SIGCONT);
    let state = holder.expect("state", Duration::from_secs(5)).await?;
    let state = if state["state"] == "unverifiable" {
        holder.expect("state", Duration::from_secs(5)).await?
    } else {
        state
    };
    assert_eq!(state["state"], "lost", "{state}");
    let (released, code) = holder.finish().await?;
    assert_eq!(
        released.map(|v| v["ours"].clone()),
        Some(Value::Bool(false))
    );
    assert_eq!(code, 76);
    assert_eq!(g.state(), LockState::Held);
    assert!(g.release().await?);
    Ok(())
}

/// Should hand the lock to a waiting process within 2.6 s of SIGKILLing a `--ttl 2s` holder,
/// with a higher fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_holder_frees_the_lock_within_its_ttl() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("sigkill");
    let mut a = Holder::spawn(&["--ttl", "2s", url, name.as_str()])?;
    let t1 = token(&a.expect("acquired", Duration::from_secs(10)).await?)?;
    let mut b = Holder::spawn(&["--ttl", "2s", "--wait", "20s", url, name.as_str()])?;
    // `waiting` comes first: the try found the lock held.
    let waiting = b.next(Duration::from_secs(10)).await?;
    assert_eq!(waiting["event"], "waiting", "{waiting}");
    waiters_on(url, &format!("dlock:{name}"), 1).await?;
    a.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let acquired = b.expect("acquired", Duration::from_secs(10)).await?;
    let failover = killed_at.elapsed();
    let t2 = token(&acquired)?;
    println!("redis failover after SIGKILL of a --ttl 2s holder: {failover:?}");
    assert!(failover < ms(2600), "failover took {failover:?}");
    assert!(t2 > t1, "token {t2} after {t1}");
    let (_, code) = b.finish().await?;
    assert_eq!(code, 0);
    let _ = a.child.wait().await;
    Ok(())
}

/// Should forget the lock when Redis restarts without persistence (what really happens),
/// and the guard should notice on its next renewal, well before its deadline; the next
/// grant's token is still higher (the counter is re-seeded from the server clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_persistence_loses_the_lock_and_the_guard_notices() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_redis(RedisOptions::default()).await?;
    let url = server.url();
    let name = common::unique("restart");
    let key = format!("dlock:{name}");
    let backend = connect(url).await?;
    let g = backend.acquire(&name, &ttl(Duration::from_secs(3))).await?;
    let t1 = g.token().context("token")?;
    server.kill().await?;
    server.start().await?;
    let restarted_at = Instant::now();
    assert_eq!(
        redis_cli(url, &["EXISTS", &key]).await?,
        "0",
        "the lock is gone"
    );
    let mut watch = g.watch();
    let state = timeout(Duration::from_secs(5), watch.lost_or_released()).await?;
    let noticed = restarted_at.elapsed();
    println!("redis restart without persistence: guard lost {noticed:?} after the restart");
    assert_eq!(state, LockState::Lost);
    // Renewals run every ttl/3 = 1 s; the deadline alone would take up to 3 s.
    assert!(noticed < ms(2000), "noticed only after {noticed:?}");
    assert!(!g.release().await?);
    let g2 = backend.acquire(&name, &LockOptions::new()).await?;
    assert!(g2.token() > Some(t1), "{:?} after {t1}", g2.token());
    assert!(g2.release().await?);
    Ok(())
}

/// Should keep the lock and the counter across a restart of a persistent server; the guard
/// reconnects on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_persistence_keeps_the_lock() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_redis(RedisOptions {
        persistent: true,
        ..Default::default()
    })
    .await?;
    let url = server.url();
    let name = common::unique("persist");
    let backend = connect(url).await?;
    let g = backend.acquire(&name, &ttl(Duration::from_secs(5))).await?;
    let t1 = g.token().context("token")?;
    server.restart().await?;
    g.extend(Duration::from_secs(5)).await?;
    assert_eq!(g.state(), LockState::Held);
    let other = connect(url).await?;
    let err = other.acquire(&name, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    assert!(g.release().await?);
    let g2 = other.acquire(&name, &LockOptions::new()).await?;
    assert!(g2.token() > Some(t1));
    assert!(g2.release().await?);
    Ok(())
}

/// Should turn the guard `Unverifiable` when a renewal gets no answer from a paused server,
/// then `Lost` at its deadline, which comes before the server-side expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_makes_the_guard_unverifiable_then_lost() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_redis(RedisOptions::default()).await?;
    let url = format!("{}?timeout=100ms", server.url());
    let name = common::unique("srvpause");
    let backend = connect(&url).await?;
    let g = backend.acquire(&name, &ttl(ms(600))).await?;
    let acquired = g.acquired_at();
    server.pause().await?;
    let mut watch = g.watch();
    let first = timeout(Duration::from_secs(3), watch.not_held()).await?;
    let second = timeout(Duration::from_secs(3), watch.lost_or_released()).await?;
    let lost_after = acquired.elapsed();
    // Keep the fault on until the server-side lease has surely run out: renewals queued in
    // the paused server's socket would otherwise still extend it on resume.
    tokio::time::sleep_until(acquired + ms(800)).await;
    server.resume().await?;
    println!("paused server: guard lost {lost_after:?} after acquiring with ttl 600ms");
    assert_eq!(first, LockState::Unverifiable);
    assert_eq!(second, LockState::Lost);
    assert!(lost_after < ms(600), "learned only after {lost_after:?}");
    assert!(
        !g.release().await?,
        "the lease ran out while the server was paused"
    );
    Ok(())
}

/// Should keep the lock past several ttls by renewing, and extend by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_lock() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("renew");
    let a = connect(url).await?;
    let b = connect(url).await?;
    let g = a.acquire(&name, &ttl(ms(300))).await?;
    let err = b
        .acquire(&name, &ttl(ms(300)).with_wait(Wait::For(ms(1200))))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(g.state(), LockState::Held);
    g.extend(Duration::from_secs(5)).await?;
    let pttl: i64 = redis_cli(url, &["PTTL", &format!("dlock:{name}")])
        .await?
        .parse()?;
    assert!(pttl > 4_000 || pttl <= 300, "pttl {pttl}");
    assert!(g.release().await?);
    Ok(())
}

/// Should keep the lock taken for `at_least` after an early release, then hand it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_outlives_an_early_release() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    let name = common::unique("atleast");
    let a = connect(url).await?;
    let b = connect(url).await?;
    let g = a
        .acquire(&name, &ttl(Duration::from_secs(10)).with_at_least(ms(800)))
        .await?;
    let acquired = g.acquired_at();
    assert!(g.release().await?);
    let err = b.acquire(&name, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended);
    let g2 = b
        .acquire(
            &name,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await?;
    let after = acquired.elapsed();
    assert!(after >= ms(780), "handed on after {after:?}");
    assert!(after < ms(2000), "handed on only after {after:?}");
    assert!(g2.release().await?);
    Ok(())
}

/// Should never leave a lock behind when an `acquire` is dropped mid-flight, and should
/// release a dropped guard promptly in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquire_and_dropped_guard_leave_nothing_behind() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::managed_redis(RedisOptions::default()).await?;
    let url = server.url();
    let name = common::unique("cancel");
    let key = format!("dlock:{name}");
    let a = connect(url).await?;
    let b = connect(url).await?;
    let long = ttl(Duration::from_secs(30));
    // The server is frozen, so the request sits in its socket; the caller gives up. Once the
    // server runs again it grants the lock to nobody, and the abandoned attempt must give it
    // back.
    server.pause().await?;
    let gave_up = timeout(ms(200), a.acquire(&name, &long)).await;
    assert!(gave_up.is_err(), "acquired from a paused server?");
    server.resume().await?;
    // A leaked grant would keep the lock for 30 s.
    let g = b
        .acquire(
            &name,
            &long.clone().with_wait(Wait::For(Duration::from_secs(3))),
        )
        .await?;
    // A waiter dropped while waiting unsubscribes.
    let waiting = timeout(
        ms(300),
        a.acquire(&name, &long.clone().with_wait(Wait::Forever)),
    )
    .await;
    assert!(waiting.is_err(), "the lock was free");
    waiters_on(url, &key, 0).await?;
    let dropped_at = Instant::now();
    drop(g);
    let g = a
        .acquire(&name, &long.with_wait(Wait::For(Duration::from_secs(5))))
        .await?;
    // Quicker than the fallback re-check (at least 800 ms): the background release published.
    assert!(dropped_at.elapsed() < ms(500), "{:?}", dropped_at.elapsed());
    assert!(g.release().await?);
    Ok(())
}

/// Should map names to `prefix ++ name` byte for byte, whatever they contain, with the
/// fencing counter in the hash named by the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_binary_safe_and_the_prefix_is_configurable() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = format!("{}?prefix=app%3Ajobs%3A", server.url());
    let backend = connect(&url).await?;
    let base = common::unique("names");
    let long = "x".repeat(10_000);
    for suffix in [
        " with space",
        "/ünïcödé/ключ/名前",
        ":a:b{c}*?[x]",
        "\nline\r\nbreak\t",
        "\"'`$(rm)",
        long.as_str(),
    ] {
        let name = LockName::new(format!("{base}{suffix}"))?;
        let key = format!("app:jobs:{name}");
        let g = backend.acquire(&name, &LockOptions::new()).await?;
        assert_eq!(redis_cli(&url, &["EXISTS", &key]).await?, "1", "{name:?}");
        let counter = redis_cli(&url, &["HGET", "app:jobs:", name.as_str()]).await?;
        assert_eq!(Some(counter), g.token().map(|t| t.to_string()), "{name:?}");
        assert!(g.release().await?);
        assert_eq!(redis_cli(&url, &["EXISTS", &key]).await?, "0", "{name:?}");
    }
    Ok(())
}

/// Should reject bad URLs, options and modes with typed errors, and an unreachable server
/// with a connection error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url();
    for (bad, kind) in [
        (format!("{url}?bogus=1"), ErrorKind::InvalidUrl),
        (format!("{url}?timeout=soon"), ErrorKind::InvalidUrl),
        ("redis://h:1,h:2".to_string(), ErrorKind::InvalidUrl),
        ("redlock://h:1,h:1".to_string(), ErrorKind::InvalidUrl),
        ("redlock://".to_string(), ErrorKind::InvalidUrl),
        // TLS is supported (redis_tls.rs), except through Sentinel.
        (
            "redis+sentinel://127.0.0.1:1/m?tls=on".to_string(),
            ErrorKind::Unsupported,
        ),
        (
            "redis://127.0.0.1:1?ca=/ca.pem".to_string(),
            ErrorKind::InvalidUrl,
        ),
        ("rediss://127.0.0.1:1".to_string(), ErrorKind::Connection),
        ("redis://127.0.0.1:1".to_string(), ErrorKind::Connection),
    ] {
        let err = dlock::connect(&bad).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{bad}: {err}");
        assert!(!err.message().is_empty());
    }
    let backend = connect(url).await?;
    let name = common::unique("bad");
    for (opts, kind) in [
        (ttl(ms(5)), ErrorKind::InvalidOptions),
        (
            LockOptions::new().with_permits(0),
            ErrorKind::InvalidOptions,
        ),
    ] {
        let err = backend.acquire(&name, &opts).await.unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
    }
    let caps = backend.capabilities();
    assert!(caps.fencing && caps.notify && caps.renew && caps.shared && caps.semaphore);
    let o = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(["hold", &format!("{url}?prefix=%zz"), "x"])
        .stdin(Stdio::null())
        .output()
        .await?;
    assert_eq!(o.status.code(), Some(64), "{o:?}");
    Ok(())
}

/// Should never let two holders in at once under contention, with tokens increasing in the
/// order of the grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_keeps_exclusion_and_token_order() -> Result<()> {
    common::init_tracing("warn");
    let server = fixtures::redis().await?;
    let url = server.url().to_string();
    let name = common::unique("contend");
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let backend = connect(&url).await?;
        let (name, inside, tokens) = (name.clone(), inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let opts = ttl(Duration::from_secs(5)).with_wait(Wait::For(Duration::from_secs(20)));
            for _ in 0..10 {
                let g = backend.acquire(&name, &opts).await?;
                ensure!(
                    inside.fetch_add(1, Ordering::SeqCst) == 0,
                    "two holders at once"
                );
                tokens
                    .lock()
                    .unwrap()
                    .push(g.token().context("token")?.get());
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                ensure!(g.release().await?, "release said not ours");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(30), t).await???;
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 40);
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    Ok(())
}

/// Should work over 3 Redlock instances with one down, and fail with a clear error with two
/// down; Redlock grants carry no fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_survives_one_instance_down_but_not_two() -> Result<()> {
    common::init_tracing("warn");
    let cluster = fixtures::redis_instances(3, RedisOptions::default()).await?;
    let url = cluster.url();
    let name = common::unique("redlock");
    let a = connect(url).await?;
    let b = connect(url).await?;
    let caps = a.capabilities();
    assert!(!caps.fencing && !caps.persistent_tokens, "{caps}");
    assert_eq!(a.name(), "redlock");
    let g = a.acquire(&name, &ttl(Duration::from_secs(5))).await?;
    assert_eq!(g.token(), None);
    for m in cluster.members() {
        assert_eq!(
            redis_cli(m.url(), &["EXISTS", &format!("dlock:{name}")]).await?,
            "1"
        );
    }
    assert_eq!(
        b.acquire(&name, &LockOptions::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Contended
    );
    assert!(g.release().await?);

    cluster.kill_member(0).await?;
    let g = a.acquire(&name, &ttl(Duration::from_secs(5))).await?;
    assert_eq!(g.state(), LockState::Held);
    let err = b.acquire(&name, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    g.extend(Duration::from_secs(5)).await?;
    assert!(g.release().await?);

    cluster.kill_member(1).await?;
    let err = a
        .acquire(&name, &ttl(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("Redlock needs 2"), "{err}");
    let err = dlock::connect(url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.message().contains("only 1 of 3"), "{err}");
    Ok(())
}

/// Should keep Redlock exclusive under contention and hand over by notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_contention_keeps_exclusion() -> Result<()> {
    common::init_tracing("warn");
    let cluster = fixtures::redlock(3).await?;
    let url = cluster.url().to_string();
    let name = common::unique("rl-contend");
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let backend = connect(&url).await?;
        let (name, inside) = (name.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            let opts = ttl(Duration::from_secs(5)).with_wait(Wait::For(Duration::from_secs(20)));
            for _ in 0..8 {
                let g = backend.acquire(&name, &opts).await?;
                ensure!(
                    inside.fetch_add(1, Ordering::SeqCst) == 0,
                    "two holders at once"
                );
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                ensure!(g.release().await?, "release said not ours");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        timeout(Duration::from_secs(40), t).await???;
    }
    Ok(())
}

/// `fencing=off`: the acquire script skips the counter, the guard has no token and the
/// backend says it has none; the default URL keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_off_grants_without_a_token() -> Result<()> {
    let server = fixtures::redis().await?;
    let plain = connect(server.url()).await?;
    let off = connect(&format!("{}?fencing=off", server.url())).await?;
    ensure!(plain.capabilities().fencing && !off.capabilities().fencing);
    let name = LockName::new("fencing-off")?;
    let g = plain.acquire(&name, &ttl(ms(2000))).await?;
    ensure!(g.token().is_some(), "the default grant has a token");
    ensure!(g.release().await?, "released");
    let g = off.acquire(&name, &ttl(ms(2000))).await?;
    ensure!(
        g.token().is_none(),
        "fencing=off granted a token: {:?}",
        g.token()
    );
    // Still a lock: the other client cannot take it meanwhile.
    let busy = plain.acquire(&name, &ttl(ms(2000))).await;
    ensure!(
        busy.as_ref().err().map(|e| e.kind()) == Some(ErrorKind::Contended),
        "{busy:?}"
    );
    ensure!(g.release().await?, "released");
    Ok(())
}

//! The etcd backend against real etcd servers from the fixtures: the key layout, tokens and
//! options, contention and waiting, and credentials in the URL. The guard under faults is in
//! `etcd_faults.rs`, other processes in `etcd_processes.rs`, 3-node clusters in
//! `etcd_cluster.rs`.
//!
//! The servers are a single node (`DLOCK_TEST_ETCD_URL` or a managed one), managed nodes with
//! etcd's default and with a short election timeout (50 ms heartbeat, 500 ms election: the
//! server then grants 1 s leases, which makes the kill and pause tests faster), and 3-node
//! clusters. The helpers are in `etcd_common/`; every test uses its own lock names, so they
//! run in parallel.

mod common;
mod etcd_common;

use common::unique;
use etcd_common::{contenders, etcdctl, fast, opts, queue_len_is};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock::etcd::EtcdBackend;
use dlock::etcd::etcd_client::GetOptions;
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Wait};
use dlock_fixtures::{self as fixtures, EtcdOptions};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

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
/// they were granted with); extending within it should work.
#[tokio::test]
async fn extend_within_the_lease_ttl_only() -> Result<()> {
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
    g.extend(Duration::from_secs(2)).await?;
    ensure!(g.valid_until().unwrap() > Instant::now() + Duration::from_millis(1500));
    ensure!(g.release().await?);
    Ok(())
}

/// A reader writes the key of etcd's `recipes.RWMutex` reader, `NAME/read/<UnixNano>`, under
/// its lease, gets no token, and its release deletes the key; a permit is the slot key
/// `NAME\0sem/0`, fenced by its create revision.
#[tokio::test]
async fn readers_and_permits_write_their_documented_keys() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,lock_etcd=info");
    let server = fixtures::etcd().await?;
    let b = EtcdBackend::connect(server.url()).await?;
    let name = unique("layout");
    let prefix = b.key_prefix(&name);
    let keys = |from: Vec<u8>| {
        let b = &b;
        async move {
            let mut kv = b.client().kv_client();
            let resp = kv.get(from, Some(GetOptions::new().with_prefix())).await?;
            anyhow::Ok(
                resp.kvs()
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.create_revision(), kv.lease()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let r = b
        .acquire(
            &name,
            &LockOptions::new().with_mode(dlock::LockMode::Shared),
        )
        .await?;
    ensure!(r.token().is_none(), "a reader got token {:?}", r.token());
    let found = keys(prefix.clone()).await?;
    ensure!(found.len() == 1, "{found:?}");
    let key = String::from_utf8(found[0].0.clone())?;
    let nanos = key
        .strip_prefix(&format!("{}read/", String::from_utf8_lossy(&prefix)))
        .with_context(|| format!("{key} is not a reader key"))?;
    ensure!(
        nanos.len() == 19 && nanos.bytes().all(|c| c.is_ascii_digit()),
        "{key}: UnixNano in decimal"
    );
    ensure!(found[0].2 != 0, "the reader key has a lease");
    ensure!(r.release().await?);
    ensure!(keys(prefix.clone()).await?.is_empty(), "released");

    let p = b
        .acquire(&name, &LockOptions::new().with_permits(2))
        .await?;
    ensure!(p.slot() == Some(0));
    // PREFIX NAME, then NUL "sem/" and the slot.
    let mut slot0 = prefix[..prefix.len() - 1].to_vec();
    slot0.extend_from_slice(b"\0sem/0");
    let found = keys(slot0.clone()).await?;
    ensure!(found.len() == 1 && found[0].0 == slot0, "{found:?}");
    ensure!(
        p.token().map(|t| t.get()) == Some(found[0].1.unsigned_abs()),
        "the token is the slot key's create revision"
    );
    ensure!(p.release().await?);
    ensure!(keys(slot0).await?.is_empty(), "released");
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
    // A refused password is an authentication error (the CLI exits 77), not a backend one.
    ensure!(err.kind() == ErrorKind::Auth, "{err}");
    Ok(())
}

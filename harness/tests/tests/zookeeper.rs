//! The ZooKeeper backend (`zk://`) against real ZooKeeper servers from the fixtures: the
//! contract on a single server, interoperability with Apache Curator's lock recipe, cancel
//! safety, `at_least`, hold limits and tokens across container re-creation. Network faults are
//! in `zookeeper_faults.rs`, other processes, ensembles and restarts in
//! `zookeeper_processes.rs`.
//!
//! A shared standalone server serves the tests that do not hurt it
//! (`DLOCK_TEST_ZOOKEEPER_URL` points them at an existing one); managed servers and a 3-member
//! ensemble serve the ones that need known session-timeout bounds or kill members. "Another
//! client" is the fixtures' raw-protocol `ZkSession`; holders in other processes are
//! `dlock hold`. The helpers are in `zookeeper_common/`.

mod common;
mod zookeeper_common;

use zookeeper_common::{
    children, children_count_is, connect, curator_sorted, foreign_session, is_curator_lock_node,
    name, own_server, wait_for,
};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dlock::{ErrorKind, LockName, LockOptions, LockState, Renew, Wait};

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
        ("zk://127.0.0.1:2181?writers=rw", "write `mutex`"),
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
    // A shared permit is not a thing: a typed error, nothing taken.
    let err = b
        .acquire(
            &name("x"),
            &LockOptions::new()
                .with_mode(dlock::LockMode::Shared)
                .with_permits(2),
        )
        .await
        .unwrap_err();
    ensure!(err.kind() == ErrorKind::InvalidOptions, "{err}");
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

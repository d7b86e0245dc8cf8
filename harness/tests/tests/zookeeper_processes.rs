//! The ZooKeeper backend (`zk://`) across processes: `dlock hold` processes that exclude each
//! other, are killed or paused; a 3-member ensemble with members down; server restarts.
//!
//! A shared standalone server serves the tests that do not hurt it
//! (`DLOCK_TEST_ZOOKEEPER_URL` points them at an existing one); managed servers and a 3-member
//! ensemble serve the ones that need known session-timeout bounds or kill members. "Another
//! client" is the fixtures' raw-protocol `ZkSession`; holders in other processes are
//! `dlock hold`. The helpers are in `zookeeper_common/`.

mod common;
mod zookeeper_common;

use zookeeper_common::{
    Holder, children, children_count_is, connect, foreign_session, name, own_server, wait_for,
};

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use dlock::{ErrorKind, LockOptions, LockState};
use dlock_fixtures::{self as fixtures, ZooKeeperOptions};
use tokio::process::Command;

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

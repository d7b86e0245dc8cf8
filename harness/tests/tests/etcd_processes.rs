//! The etcd backend across processes against real etcd servers from the fixtures: `dlock hold`
//! processes, `etcdctl lock` both ways, and holder processes that are killed or paused.
//!
//! The servers are a single node (`DLOCK_TEST_ETCD_URL` or a managed one), managed nodes with
//! etcd's default and with a short election timeout (50 ms heartbeat, 500 ms election: the
//! server then grants 1 s leases, which makes the kill and pause tests faster), and 3-node
//! clusters. The helpers are in `etcd_common/`; every test uses its own lock names, so they
//! run in parallel.

mod common;
mod etcd_common;

use common::{unique, wall_ms};
use etcd_common::{Holder, contenders, etcdctl, opts, queue_len_is, t_ms, token_of};

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dlock::etcd::EtcdBackend;
use dlock::{Backend, ErrorKind, Wait};
use dlock_fixtures as fixtures;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

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

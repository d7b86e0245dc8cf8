//! The etcd backend against 3-node etcd clusters from the fixtures: a member down, the leader
//! killed, quorum lost.
//!
//! The servers are a single node (`DLOCK_TEST_ETCD_URL` or a managed one), managed nodes with
//! etcd's default and with a short election timeout (50 ms heartbeat, 500 ms election: the
//! server then grants 1 s leases, which makes the kill and pause tests faster), and 3-node
//! clusters. The helpers are in `etcd_common/`; every test uses its own lock names, so they
//! run in parallel.

mod common;
mod etcd_common;

use common::unique;
use etcd_common::opts;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};
use dlock::etcd::EtcdBackend;
use dlock::{Backend, ErrorKind, LockState, Wait};
use dlock_fixtures::{self as fixtures, EtcdOptions};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

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

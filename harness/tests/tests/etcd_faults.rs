//! The etcd backend's guard state against real etcd servers from the fixtures: keepalives
//! that fail or slow down, the deadline, a vanished key, `at_least`, server restarts.
//!
//! The servers are a single node (`DLOCK_TEST_ETCD_URL` or a managed one), managed nodes with
//! etcd's default and with a short election timeout (50 ms heartbeat, 500 ms election: the
//! server then grants 1 s leases, which makes the kill and pause tests faster), and 3-node
//! clusters. The helpers are in `etcd_common/`; every test uses its own lock names, so they
//! run in parallel.

mod common;
mod etcd_common;

use common::unique;
use etcd_common::{contenders, fast, opts, queue_len_is};

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use dlock::etcd::EtcdBackend;
use dlock::{Backend, ErrorKind, LockOptions, LockState, Wait};
use dlock_fixtures as fixtures;
use dlock_fixtures::faults::{Fault, FaultProxy};
use tokio::time::{Instant, timeout, timeout_at};

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

/// A holder whose link is blackholed (the proxy holds every byte and keeps every socket open)
/// should not open a connection per retry while its renewals stall: from the cut until its
/// guard is `Lost`, a 2 s lock opens at most a few (see lock-etcd's README, *Keepalives after
/// a network blip*).
#[tokio::test]
async fn a_blackholed_holder_opens_few_new_connections() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info,lock_etcd=info");
    let server = fixtures::managed_etcd(fast()).await?;
    let upstream = server.addr().context("a managed etcd has an address")?;
    let proxy = FaultProxy::start(upstream).await?;
    let holder = EtcdBackend::connect(&format!("etcd://{}", proxy.addr())).await?;
    let name = unique("blackholed-connections");
    let g = holder
        .acquire(&name, &LockOptions::new().with_ttl(Duration::from_secs(2)))
        .await?;
    let mut watch = g.watch();
    let before = proxy.accepted();
    proxy.set(Fault::Blackhole);
    let cut = Instant::now();
    let first = timeout(Duration::from_secs(5), watch.changed()).await?;
    let at_first = (cut.elapsed(), proxy.accepted() - before);
    let lost = timeout(Duration::from_secs(5), watch.lost_or_released()).await?;
    let at_lost = (cut.elapsed(), proxy.accepted() - before);
    proxy.set(Fault::Pass);
    eprintln!(
        "etcd blackholed under a 2 s lock: new connections {} by {first} at {:?}, {} by {lost} \
         at {:?}",
        at_first.1, at_first.0, at_lost.1, at_lost.0
    );
    ensure!(lost == LockState::Lost, "got {lost}");
    ensure!(
        at_lost.1 <= MAX_STALLED_CONNECTIONS,
        "{} new connections while the renewals stalled (at most {MAX_STALLED_CONNECTIONS})",
        at_lost.1
    );
    Ok(())
}

/// The bound of the test above, with room: 4 measured in every run, 10–13 before the spacing
/// (lock-etcd's README).
const MAX_STALLED_CONNECTIONS: usize = 6;

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

//! The properties. Each is a plain async fn; `all()` lists them with their gates.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Result, anyhow, bail, ensure};
use lock_core::{
    Capabilities, Election, ErrorKind, LockMode, LockName, LockOptions, LockState, Renew, Wait,
};

use crate::faults::{Fault, FaultProxy};
use crate::{Behaviour, Ctx, SkipTest};

macro_rules! behaviour {
    ($f:ident, $doc:expr, $skip:expr) => {
        Behaviour {
            name: concat!("behavior::", stringify!($f)),
            doc: $doc,
            skip: $skip,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}
pub(crate) use behaviour;

pub(crate) fn always(_: &Capabilities) -> Option<&'static str> {
    None
}
fn needs_fencing(c: &Capabilities) -> Option<&'static str> {
    (!c.fencing).then_some("no fencing tokens (capability `fencing`)")
}
fn needs_lease(c: &Capabilities) -> Option<&'static str> {
    (!c.lease).then_some("no lease that expires on its own (capability `lease`)")
}
fn needs_renew(c: &Capabilities) -> Option<&'static str> {
    (!(c.lease && c.renew)).then_some("no renewable lease (capabilities `lease` + `renew`)")
}
pub(crate) fn needs_shared(c: &Capabilities) -> Option<&'static str> {
    (!c.shared).then_some("no shared mode (capability `shared`)")
}
fn needs_notify(c: &Capabilities) -> Option<&'static str> {
    (!c.notify).then_some("waiters are not notified (capability `notify`)")
}

pub(super) fn all() -> Vec<Behaviour> {
    vec![
        behaviour!(
            test_exclusion,
            "a held lock should refuse a second client",
            always
        ),
        behaviour!(
            test_not_reentrant,
            "a held lock should refuse its own client too (two guards of one process)",
            always
        ),
        behaviour!(
            test_try_wait_timeout,
            "try should fail at once, a bounded wait should time out after the wait",
            always
        ),
        behaviour!(
            test_release_then_reacquire,
            "a released lock should be free for the next client",
            always
        ),
        behaviour!(
            test_stale_release_is_refused,
            "a release after the lease expired should report not ours and leave the new holder alone",
            needs_lease
        ),
        behaviour!(
            test_fencing_tokens_increase,
            "fencing tokens should strictly increase across grants and clients",
            needs_fencing
        ),
        behaviour!(
            test_lease_expires_without_renewal,
            "a lease that is not renewed should expire, and the holder should know first",
            needs_lease
        ),
        behaviour!(
            test_renewal_keeps_and_is_bounded,
            "renewal should keep the lock past its ttl and stop at max_hold",
            needs_renew
        ),
        behaviour!(
            test_drop_releases_promptly,
            "a dropped guard should free the lock promptly",
            always
        ),
        behaviour!(
            test_cancelled_acquire_leaves_nothing,
            "a cancelled waiting acquire should never leave the lock held",
            always
        ),
        behaviour!(
            test_waiter_wakes_on_release,
            "a waiter should be granted within 300 ms of a release (notification, not polling)",
            needs_notify
        ),
        behaviour!(
            test_names_at_the_edges,
            "unusual names should work or be InvalidName, never panic",
            always
        ),
        behaviour!(
            test_shared_mode,
            "shared holders should coexist and exclude exclusive ones",
            needs_shared
        ),
        behaviour!(
            test_at_least,
            "an early release should keep the lock taken until at_least",
            always
        ),
        behaviour!(
            test_connection_loss_leaves_held,
            "a holder cut off from the server should leave Held before its deadline",
            always
        ),
        behaviour!(
            test_contention_has_no_overlap,
            "many clients taking turns should never overlap",
            always
        ),
        behaviour!(
            test_election_hands_over,
            "leader election should keep one leader and hand over when the leader's lock is lost",
            always
        ),
    ]
}

pub(crate) fn kind_of(r: &lock_core::Result<lock_core::Guard>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

/// A held lock refuses a second client.
pub async fn test_exclusion(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("excl");
    let other = ctx.client().await?;
    let g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let r = other.acquire(&n, &LockOptions::new()).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Contended),
        "second client: {r:?}"
    );
    ensure!(g.release().await?, "release must report ours");
    Ok(())
}

/// The holder's own client is refused too, trying and waiting: two guards of one process
/// exclude each other whatever the server does for one session (MariaDB's `GET_LOCK` and
/// PostgreSQL's advisory locks are re-entrant per session), and the refused attempts leave
/// nothing behind.
pub async fn test_not_reentrant(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("reentrant");
    let g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let r = ctx.backend.acquire(&n, &LockOptions::new()).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Contended),
        "the holder's own client, trying: {r:?}"
    );
    let wait = LockOptions::new().with_wait(Wait::For(Duration::from_millis(300)));
    let r = ctx.backend.acquire(&n, &wait).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Timeout),
        "the holder's own client, waiting 300 ms: {r:?}"
    );
    ensure!(g.release().await?, "release must report ours");
    let other = ctx.client().await?;
    let g = other.acquire(&n, &LockOptions::new()).await?;
    ensure!(
        g.release().await?,
        "the next client's release must report ours"
    );
    Ok(())
}

/// Try fails at once; a bounded wait ends in Timeout after the wait, not long after.
pub async fn test_try_wait_timeout(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("wait");
    let other = ctx.client().await?;
    let _g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let t = Instant::now();
    let r = other.acquire(&n, &LockOptions::new()).await;
    ensure!(kind_of(&r) == Some(ErrorKind::Contended), "try: {r:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(2),
        "try took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let wait = Duration::from_millis(500);
    let r = other
        .acquire(&n, &LockOptions::new().with_wait(Wait::For(wait)))
        .await;
    let took = t.elapsed();
    ensure!(
        kind_of(&r) == Some(ErrorKind::Timeout),
        "bounded wait: {r:?}"
    );
    ensure!(
        took >= wait - Duration::from_millis(20) && took < wait + Duration::from_secs(3),
        "bounded wait of {wait:?} took {took:?}"
    );
    Ok(())
}

/// Release, then the next client acquires.
pub async fn test_release_then_reacquire(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("again");
    let other = ctx.client().await?;
    for _ in 0..3 {
        let g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
        ensure!(g.release().await?);
        let g = other.acquire(&n, &LockOptions::new()).await?;
        ensure!(g.release().await?);
    }
    Ok(())
}

/// A stale release is refused and harmless.
pub async fn test_stale_release_is_refused(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("stale");
    let other = ctx.client().await?;
    let third = ctx.client().await?;
    let opts = LockOptions::new()
        .with_ttl(ctx.short_ttl())
        .with_renew(Renew::Off);
    let old = ctx.backend.acquire(&n, &opts).await?;
    let new = other
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(ctx.short_ttl() * 10)),
        )
        .await?;
    ensure!(
        old.state() == LockState::Lost,
        "old holder must know: {:?}",
        old.state()
    );
    ensure!(
        !old.release().await?,
        "a stale release must report not ours"
    );
    let r = third.acquire(&n, &LockOptions::new()).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Contended),
        "the new holder must still hold it: {r:?}"
    );
    ensure!(new.release().await?);
    Ok(())
}

/// Tokens strictly increase across grants and clients.
pub async fn test_fencing_tokens_increase(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("fence");
    let other = ctx.client().await?;
    let mut last = None;
    for i in 0..6 {
        let b = if i % 2 == 0 { &ctx.backend } else { &other };
        let g = b
            .acquire(
                &n,
                &LockOptions::new().with_wait(Wait::For(Duration::from_secs(10))),
            )
            .await?;
        let t = g
            .token()
            .ok_or_else(|| anyhow!("a fencing backend must give a token"))?;
        ensure!(Some(t) > last, "token {t} after {last:?}");
        last = Some(t);
        ensure!(g.release().await?);
    }
    Ok(())
}

/// Without renewal the lease expires; the holder learns before the next grant.
pub async fn test_lease_expires_without_renewal(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("expire");
    let other = ctx.client().await?;
    let ttl = ctx.short_ttl();
    let g = ctx
        .backend
        .acquire(&n, &LockOptions::new().with_ttl(ttl).with_renew(Renew::Off))
        .await?;
    let mut watch = g.watch();
    let waiter = tokio::spawn(async move {
        let r = other
            .acquire(&n, &LockOptions::new().with_wait(Wait::For(ttl * 20)))
            .await;
        (Instant::now(), r)
    });
    let state = tokio::time::timeout(ttl * 10, watch.lost_or_released())
        .await
        .map_err(|_| anyhow!("the holder never learned its lease expired"))?;
    let learned = watch.state_since();
    ensure!(state == LockState::Lost, "{state:?}");
    let (granted, r) = waiter.await?;
    r?;
    ensure!(
        learned <= granted,
        "the holder learned {:?} after the next grant",
        learned - granted
    );
    Ok(())
}

/// Renewal keeps the lock past several ttls; `max_hold` bounds it.
pub async fn test_renewal_keeps_and_is_bounded(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("renew");
    let other = ctx.client().await?;
    let ttl = ctx.short_ttl();
    let max_hold = ttl * 4;
    let t = Instant::now();
    let g = ctx
        .backend
        .acquire(
            &n,
            &LockOptions::new().with_ttl(ttl).with_renew(Renew::Auto {
                max_hold: Some(max_hold),
            }),
        )
        .await?;
    tokio::time::sleep(ttl * 2).await;
    ensure!(
        g.state() == LockState::Held,
        "renewal must keep it: {:?}",
        g.state()
    );
    let r = other.acquire(&n, &LockOptions::new()).await;
    ensure!(kind_of(&r) == Some(ErrorKind::Contended), "{r:?}");
    let state = g.watch().lost_or_released().await;
    ensure!(state == LockState::Lost, "{state:?}");
    ensure!(
        t.elapsed() <= max_hold + ttl,
        "renewal went on for {:?} (max_hold {max_hold:?})",
        t.elapsed()
    );
    other
        .acquire(&n, &LockOptions::new().with_wait(Wait::For(ttl * 10)))
        .await?;
    Ok(())
}

/// A dropped guard frees the lock promptly.
pub async fn test_drop_releases_promptly(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("drop");
    let other = ctx.client().await?;
    let g = ctx
        .backend
        .acquire(&n, &LockOptions::new().with_ttl(Duration::from_secs(60)))
        .await?;
    let t = Instant::now();
    drop(g);
    other
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(20))),
        )
        .await?;
    ensure!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} (the ttl was 60 s)",
        t.elapsed()
    );
    Ok(())
}

/// A waiting acquire dropped mid-wait never leaves the lock held.
pub async fn test_cancelled_acquire_leaves_nothing(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("cancel");
    let b = ctx.client().await?;
    let c = ctx.client().await?;
    let g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let forever = LockOptions::new().with_wait(Wait::Forever);
    let r = tokio::time::timeout(Duration::from_millis(300), b.acquire(&n, &forever)).await;
    ensure!(r.is_err(), "the wait cannot succeed while the lock is held");
    ensure!(g.release().await?);
    let g = c
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(10))),
        )
        .await
        .map_err(|e| anyhow!("the abandoned waiter kept the lock: {e}"))?;
    ensure!(g.release().await?);
    Ok(())
}

/// A waiter is granted promptly after the release.
pub async fn test_waiter_wakes_on_release(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("wake");
    let other = ctx.client().await?;
    let g = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let waiter = {
        let n = n.clone();
        tokio::spawn(async move {
            let r = other
                .acquire(
                    &n,
                    &LockOptions::new().with_wait(Wait::For(Duration::from_secs(30))),
                )
                .await;
            (Instant::now(), r)
        })
    };
    // Give the waiter time to reach its wait (a notification-less backend that polls would
    // then show its polling interval in the gap below); a grant before the release fails.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(!waiter.is_finished(), "granted while held");
    let released = Instant::now();
    ensure!(g.release().await?);
    let (granted, r) = waiter.await?;
    r?;
    let gap = granted - released;
    ensure!(
        gap < Duration::from_millis(300),
        "the waiter was granted {gap:?} after the release"
    );
    Ok(())
}

/// Unusual names work or are a typed error; never a panic or another kind of error.
pub async fn test_names_at_the_edges(ctx: &Ctx) -> Result<()> {
    for bad in ["", "a\0b"] {
        ensure!(
            LockName::new(bad).is_err(),
            "{bad:?} must be refused by LockName"
        );
    }
    let long = format!("{}{}", ctx.name("").as_str(), "x".repeat(10 * 1024));
    for suffix in [
        "/",
        "..",
        "a/b",
        "../x",
        "it's \"quoted\"",
        "ключ-🔒",
        "a;b",
        " ",
    ] {
        check_name(ctx, ctx.name(suffix)).await?;
    }
    check_name(ctx, LockName::new(long)?).await
}

async fn check_name(ctx: &Ctx, n: LockName) -> Result<()> {
    match ctx.backend.acquire(&n, &LockOptions::new()).await {
        Ok(g) => {
            ensure!(g.release().await?, "{n:?}: release");
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::InvalidName => Ok(()),
        Err(e) => bail!("name {:?}: {e}", truncate(n.as_str())),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Shared holders coexist; exclusive waits for all of them.
pub async fn test_shared_mode(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("shared");
    let other = ctx.client().await?;
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    let a = ctx.backend.acquire(&n, &shared).await?;
    let b = other.acquire(&n, &shared).await?;
    let r = ctx.client().await?.acquire(&n, &LockOptions::new()).await;
    ensure!(kind_of(&r) == Some(ErrorKind::Contended), "{r:?}");
    ensure!(a.release().await? && b.release().await?);
    let x = other.acquire(&n, &LockOptions::new()).await?;
    let r = ctx.backend.acquire(&n, &shared).await;
    ensure!(kind_of(&r) == Some(ErrorKind::Contended), "{r:?}");
    ensure!(x.release().await?);
    Ok(())
}

/// An early release keeps the lock taken until `at_least`.
pub async fn test_at_least(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("atleast");
    let other = ctx.client().await?;
    let at_least = Duration::from_millis(1500).max(ctx.short_ttl());
    let opts = LockOptions::new()
        .with_ttl((at_least * 2).max(Duration::from_secs(5)))
        .with_at_least(at_least)
        .with_renew(Renew::Off);
    let t = Instant::now();
    let g = ctx.backend.acquire(&n, &opts).await?;
    ensure!(g.release().await?);
    let r = other.acquire(&n, &LockOptions::new()).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Contended),
        "taken again before at_least: {r:?}"
    );
    other
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(20))),
        )
        .await?;
    let took = t.elapsed();
    ensure!(
        took >= at_least - Duration::from_millis(100),
        "free after {took:?}, at_least {at_least:?}"
    );
    Ok(())
}

/// A holder whose connection is blackholed leaves `Held` before its deadline would let
/// anyone else in. Needs a single-host loopback URL (the fault proxy only targets loopback).
pub async fn test_connection_loss_leaves_held(ctx: &Ctx) -> Result<()> {
    let (addr, proxied_url) = match proxied(&ctx.url) {
        Ok(x) => x,
        Err(reason) => return Err(SkipTest(reason).into()),
    };
    let proxy = FaultProxy::start(addr).await?;
    let url = proxied_url.replace("{proxy}", &proxy.addr().to_string());
    let holder = ctx.client_at(&url).await?;
    let n = ctx.name("cut");
    let ttl = ctx.short_ttl().max(Duration::from_secs(3));
    let g = holder
        .acquire(&n, &LockOptions::new().with_ttl(ttl))
        .await?;
    proxy.set(Fault::Blackhole);
    let cut = Instant::now();
    // The guard may only stay Held while its last confirmation lasts: past the deadline it
    // had at the cut (plus scheduling slack), nothing can vouch for it any more. Backends
    // without a client-side deadline get a generous bound.
    let bound = match g.valid_until() {
        Some(deadline) => deadline.saturating_duration_since(cut) + Duration::from_secs(1),
        None => ttl + Duration::from_secs(15),
    };
    let state = tokio::time::timeout(bound, g.not_held())
        .await
        .map_err(|_| anyhow!("still Held {bound:?} after the cut (past its deadline)"))?;
    ensure!(
        matches!(state, LockState::Unverifiable | LockState::Lost),
        "{state:?}"
    );
    tracing::info!(after = ?cut.elapsed(), %state, "left Held after the cut");
    proxy.set(Fault::Reset);
    drop(g);
    Ok(())
}

/// Splits a single-host loopback URL into the server address and the URL with `{proxy}` in
/// its place.
pub(super) fn proxied(url: &str) -> std::result::Result<(std::net::SocketAddr, String), String> {
    let start = url.find("://").ok_or("no scheme")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_start = authority.rfind('@').map(|i| i + 1).unwrap_or(0);
    let hostport = &authority[host_start..];
    if hostport.contains(',') {
        return Err("the URL names several servers; the proxy test needs one".into());
    }
    let addr: std::net::SocketAddr = hostport
        .replace("localhost", "127.0.0.1")
        .parse()
        .map_err(|_| format!("cannot read host:port from {hostport:?}"))?;
    if !addr.ip().is_loopback() {
        return Err("the server is not on loopback; fault injection only targets loopback".into());
    }
    let at = start + host_start;
    Ok((
        addr,
        format!("{}{{proxy}}{}", &url[..at], &url[at + hostport.len()..]),
    ))
}

/// Many clients taking turns never overlap; with fencing, tokens follow the order of entry.
pub async fn test_contention_has_no_overlap(ctx: &Ctx) -> Result<()> {
    const CLIENTS: usize = 4;
    const SECTIONS: usize = 5;
    let n = ctx.name("contend");
    let inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let b = ctx.client().await?;
        let (n, inside, entries) = (n.clone(), inside.clone(), entries.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..SECTIONS {
                let g = b
                    .acquire(
                        &n,
                        &LockOptions::new().with_wait(Wait::For(Duration::from_secs(60))),
                    )
                    .await?;
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    bail!("two holders inside the critical section at once");
                }
                entries.lock().unwrap().push(g.token());
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                ensure!(g.release().await?, "release");
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let entries = entries.lock().unwrap();
    ensure!(entries.len() == CLIENTS * SECTIONS);
    if ctx.caps.fencing {
        ensure!(
            entries.windows(2).all(|w| w[0] < w[1]),
            "tokens out of order: {entries:?}"
        );
    }
    Ok(())
}

/// One leader at a time; the next is elected once the leader's lock is lost.
pub async fn test_election_hands_over(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("leader");
    let ttl = ctx.short_ttl().max(Duration::from_secs(2));
    // Renewal off: the first leader's lock is lost after one ttl, as if it had stalled.
    let first = Election::new(
        ctx.backend.clone(),
        n.clone(),
        LockOptions::new().with_ttl(ttl).with_renew(Renew::Off),
    );
    let second = Election::new(
        ctx.client().await?,
        n.clone(),
        LockOptions::new().with_ttl(ttl * 5),
    );
    let mut leader = first.campaign().await?;
    ensure!(leader.is_leader());
    ensure!(
        second.try_campaign().await?.is_none(),
        "two leaders at once"
    );
    let next = tokio::spawn(async move { second.campaign().await.map(|l| (Instant::now(), l)) });
    let state = tokio::time::timeout(ttl * 10, leader.lost())
        .await
        .map_err(|_| anyhow!("the leader never learned its lock was lost"))?;
    let lost_at = leader.guard().watch().state_since();
    ensure!(
        matches!(state, LockState::Lost | LockState::Unverifiable),
        "{state:?}"
    );
    drop(leader); // stepping down frees session locks that do not expire by themselves
    let (elected_at, l2) = tokio::time::timeout(ttl * 10, next)
        .await
        .map_err(|_| anyhow!("no new leader"))???;
    ensure!(
        lost_at <= elected_at,
        "the old leader learned after the new one was elected"
    );
    ensure!(l2.is_leader());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::proxied;

    #[test]
    fn proxied_urls_keep_credentials_and_path() {
        let (addr, url) = proxied("postgres://u:p@127.0.0.1:5432/db?x=1").unwrap();
        assert_eq!(addr.port(), 5432);
        assert_eq!(url, "postgres://u:p@{proxy}/db?x=1");
        assert!(proxied("etcd://127.0.0.1:1,127.0.0.1:2").is_err());
        assert!(proxied("redis://10.1.2.3:6379").is_err());
    }
}

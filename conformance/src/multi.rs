//! The properties of locks with several holders: shared (reader–writer) locks and
//! semaphores. Listed by [`crate::all`] after the exclusive lock's, under the same
//! `behavior::` names.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use lock_core::{Capabilities, ErrorKind, LockMode, LockOptions, Renew, Wait};
use tokio::time::Instant;

use crate::behavior::{always, behaviour, kind_of, needs_shared};
use crate::{Behaviour, Ctx};

fn needs_semaphore(c: &Capabilities) -> Option<&'static str> {
    (!c.semaphore).then_some("no semaphores (capability `semaphore`)")
}

pub(super) fn all() -> Vec<Behaviour> {
    vec![
        behaviour!(
            test_unclaimed_modes_are_unsupported,
            "a shared lock or a permit from a backend without them should be Unsupported",
            always
        ),
        behaviour!(
            test_waiting_writer_is_not_starved,
            "while a writer waits, new readers should wait behind it; it is granted when the readers go",
            needs_shared
        ),
        behaviour!(
            test_shared_tokens,
            "shared grants should carry no token; writers' tokens should rise past readers",
            needs_shared
        ),
        behaviour!(
            test_semaphore_limit,
            "a semaphore of 3 should never have 4 holders among 32 contending tasks, each slot held once, slot tokens rising",
            needs_semaphore
        ),
        behaviour!(
            test_lost_permit_comes_back,
            "a permit whose holder vanished should come back (ttl or session end)",
            needs_semaphore
        ),
    ]
}

/// What a backend does not claim, it refuses with `Unsupported` (never a lock in its place).
pub async fn test_unclaimed_modes_are_unsupported(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("unclaimed");
    if !ctx.caps.shared {
        let r = ctx
            .backend
            .acquire(&n, &LockOptions::new().with_mode(LockMode::Shared))
            .await;
        ensure!(kind_of(&r) == Some(ErrorKind::Unsupported), "shared: {r:?}");
    }
    if !ctx.caps.semaphore {
        let r = ctx
            .backend
            .acquire(&n, &LockOptions::new().with_permits(2))
            .await;
        ensure!(
            kind_of(&r) == Some(ErrorKind::Unsupported),
            "permits: {r:?}"
        );
    }
    // Bad limits are refused before anything else, on every backend.
    let r = ctx
        .backend
        .acquire(&n, &LockOptions::new().with_permits(0))
        .await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::InvalidOptions),
        "0 permits: {r:?}"
    );
    Ok(())
}

/// Writer preference: a reader holds, a writer starts waiting; from then on new readers are
/// refused (they would queue behind the writer), and when the reader goes the writer is
/// granted. A reader-preferring lock fails this: the new readers would keep getting in.
pub async fn test_waiting_writer_is_not_starved(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("starve");
    let shared = LockOptions::new().with_mode(LockMode::Shared);
    let reader = ctx.backend.acquire(&n, &shared).await?;
    let writer_client = ctx.client().await?;
    let wn = n.clone();
    let writer = tokio::spawn(async move {
        writer_client
            .acquire(
                &wn,
                &LockOptions::new().with_wait(Wait::For(Duration::from_secs(30))),
            )
            .await
            .map(|g| (g, writer_client))
    });
    // New readers get in until the writer is queued, then never again while it waits.
    let other = ctx.client().await?;
    let started = Instant::now();
    loop {
        match other.acquire(&n, &shared).await {
            Ok(g) => {
                ensure!(g.release().await?, "a reader's release failed");
            }
            Err(e) if e.kind() == ErrorKind::Contended => break,
            Err(e) => return Err(e.into()),
        }
        ensure!(
            !writer.is_finished(),
            "the writer finished while a reader held: {:?}",
            writer.await
        );
        if started.elapsed() > Duration::from_secs(10) {
            bail!("readers kept getting in for 10 s while a writer waited: the writer starves");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(reader.release().await?, "the first reader's release failed");
    let (w, _client) = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .map_err(|_| anyhow::anyhow!("the writer was not granted after the readers went"))???;
    let r = other.acquire(&n, &shared).await;
    ensure!(
        kind_of(&r) == Some(ErrorKind::Contended),
        "a reader beside the writer: {r:?}"
    );
    ensure!(w.release().await?);
    let r = other.acquire(&n, &shared).await?;
    ensure!(r.release().await?);
    Ok(())
}

/// Tokens fence writers only: shared grants have none, and an exclusive grant after readers
/// has a higher token than the exclusive grant before them.
pub async fn test_shared_tokens(ctx: &Ctx) -> Result<()> {
    if !ctx.caps.fencing {
        return Err(crate::SkipTest("no fencing tokens (capability `fencing`)".into()).into());
    }
    let n = ctx.name("shtok");
    let w1 = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let t1 = w1
        .token()
        .ok_or_else(|| anyhow::anyhow!("a writer without a token"))?;
    ensure!(w1.release().await?);
    let r = ctx
        .backend
        .acquire(&n, &LockOptions::new().with_mode(LockMode::Shared))
        .await?;
    ensure!(r.token().is_none(), "a reader got token {:?}", r.token());
    ensure!(r.release().await?);
    let w2 = ctx.backend.acquire(&n, &LockOptions::new()).await?;
    let t2 = w2
        .token()
        .ok_or_else(|| anyhow::anyhow!("a writer without a token"))?;
    ensure!(t2 > t1, "writer tokens {t1:?} then {t2:?}");
    ensure!(w2.release().await?);
    Ok(())
}

/// What the permit holders share: who is inside (by slot), the most at once, and each slot's
/// last token (the fenced resource: it keeps the highest token per slot).
#[derive(Default)]
struct Inside {
    slots: HashSet<u32>,
    most: usize,
    tokens: HashMap<u32, u64>,
    grants: usize,
}

/// 32 tasks on 4 clients contend for a semaphore of 3, each taking a permit 4 times: never
/// more than 3 inside, never one slot twice at once, each slot's tokens strictly rising (where
/// the backend has tokens), and 3 inside at some point (it is a semaphore, not a mutex: until
/// 3 have been inside together, every holder stays until they are, at most 10 s).
pub async fn test_semaphore_limit(ctx: &Ctx) -> Result<()> {
    const LIMIT: u32 = 3;
    let n = ctx.name("sem");
    let inside = Arc::new(Mutex::new(Inside::default()));
    let full = Arc::new(tokio::sync::Notify::new());
    let mut clients = vec![ctx.backend.clone()];
    for _ in 0..3 {
        clients.push(ctx.client().await?);
    }
    let opts = LockOptions::new()
        .with_permits(LIMIT)
        .with_ttl(Duration::from_secs(30))
        .with_wait(Wait::For(Duration::from_secs(60)));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (client, n, opts, inside, full) = (
            clients[i % clients.len()].clone(),
            n.clone(),
            opts.clone(),
            inside.clone(),
            full.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let g = client.acquire(&n, &opts).await?;
                // Registered before the state is read, so the last of the 3 is not missed.
                let filled = full.notified();
                tokio::pin!(filled);
                filled.as_mut().enable();
                let slot = g
                    .slot()
                    .ok_or_else(|| anyhow::anyhow!("a permit without a slot"))?;
                ensure!(slot < LIMIT, "slot {slot} of a semaphore of {LIMIT}");
                let reached = {
                    let mut s = inside.lock().unwrap();
                    ensure!(s.slots.insert(slot), "slot {slot} held twice at once");
                    s.most = s.most.max(s.slots.len());
                    if s.slots.len() == LIMIT as usize {
                        full.notify_waiters();
                    }
                    s.grants += 1;
                    if let Some(t) = g.token() {
                        let last = s.tokens.insert(slot, t.get());
                        ensure!(
                            last.is_none_or(|l| l < t.get()),
                            "slot {slot}: token {} after {last:?}",
                            t.get()
                        );
                    }
                    s.most == LIMIT as usize
                };
                if !reached {
                    let _ = tokio::time::timeout(Duration::from_secs(10), filled).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.lock().unwrap().slots.remove(&slot);
                ensure!(g.release().await?, "a permit's release failed");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let s = inside.lock().unwrap();
    ensure!(s.grants == 128, "{} grants of 128", s.grants);
    ensure!(
        s.most as u32 == LIMIT,
        "at most {} inside at once (limit {LIMIT})",
        s.most
    );
    Ok(())
}

/// A holder that vanishes without releasing (its guard leaked, its client dropped) loses its
/// permit: the permit comes back when the lease runs out or the session ends, and another
/// client gets it.
pub async fn test_lost_permit_comes_back(ctx: &Ctx) -> Result<()> {
    let n = ctx.name("semlost");
    let ttl = ctx.short_ttl();
    let opts = LockOptions::new()
        .with_permits(1)
        .with_ttl(ttl)
        .with_renew(Renew::Off);
    let vanishing = ctx.client().await?;
    let g = vanishing.acquire(&n, &opts).await?;
    let r = ctx.backend.acquire(&n, &opts).await;
    ensure!(kind_of(&r) == Some(ErrorKind::Contended), "{r:?}");
    g.leak();
    drop(vanishing);
    let started = Instant::now();
    let g = ctx
        .backend
        .acquire(
            &n,
            &opts
                .clone()
                .with_wait(Wait::For(ttl * 3 + Duration::from_secs(10))),
        )
        .await?;
    ensure!(g.slot() == Some(0), "slot {:?}", g.slot());
    // A lease runs out after its ttl; a session ends with its client at once.
    let bound = ttl * 2 + Duration::from_secs(3);
    ensure!(
        started.elapsed() < bound,
        "took {:?}: more than {bound:?} for a permit whose ttl was {ttl:?}",
        started.elapsed()
    );
    ensure!(g.release().await?);
    Ok(())
}

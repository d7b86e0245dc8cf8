//! The four measurements of a peer beside dlock, each alternating the two sides round by
//! round so load from elsewhere hits both alike. Every time is read inside the harnesses
//! (`T0`/`T1` of the replies, `CLOCK_MONOTONIC` µs), so the pipes are not in the numbers.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::proc::{Group, Launch, Reply};
use super::{PeersPlan, Side};

/// Per-round values of both sides (`dlock[r]`, `peer[r]`), each a list of samples.
#[derive(Debug, Default, Clone)]
pub struct Rounds {
    /// dlock's samples, round by round.
    pub dlock: Vec<Vec<f64>>,
    /// The peer's samples, round by round.
    pub peer: Vec<Vec<f64>>,
}

/// How long harnesses get to exit after `quit` before they are killed.
pub const QUIT_WITHIN: Duration = Duration::from_secs(3);

fn call_timeout(ttl: Duration) -> Duration {
    Duration::from_secs(10) + ttl * 3
}

/// The library time of one uncontended acquire + release: the two calls' own durations.
async fn acquire_release(g: &mut Group, name: &str, ttl: Duration) -> Result<f64> {
    let within = call_timeout(ttl);
    let a = g
        .call(0, &format!("acquire {name} {}", ttl.as_millis()), within)
        .await?;
    let Reply::Acquired { t0: a0, t1: a1, .. } = a else {
        bail!("acquire {name}: {a:?}");
    };
    let r = g.call(0, &format!("release {name}"), within).await?;
    let Reply::Released { t0: r0, t1: r1, .. } = r else {
        bail!("release {name}: {r:?}");
    };
    Ok(((a1 - a0) + (r1 - r0)) as f64)
}

/// Uncontended acquire + release (µs), `plan.samples` per side in `plan.rounds` rounds,
/// alternating one sample at a time after a warm-up of `plan.warmup` each.
pub async fn uncontended(
    dlock: &mut Group,
    peer: &mut Group,
    plan: &PeersPlan,
    ttl: Duration,
) -> Result<Rounds> {
    for _ in 0..plan.warmup {
        acquire_release(dlock, "peers-ar-dlock", ttl).await?;
        acquire_release(peer, "peers-ar-peer", ttl).await?;
    }
    let per_round = (plan.samples / plan.rounds).max(1);
    let mut out = Rounds::default();
    for _ in 0..plan.rounds {
        let (mut d, mut p) = (Vec::new(), Vec::new());
        for _ in 0..per_round {
            d.push(acquire_release(dlock, "peers-ar-dlock", ttl).await?);
            p.push(acquire_release(peer, "peers-ar-peer", ttl).await?);
        }
        out.dlock.push(d);
        out.peer.push(p);
    }
    Ok(out)
}

/// One side's handoff chain: `1 + waiters` processes on one name; the holder is told to
/// release, the time from its harness reading the release command to the next grant is one
/// sample (the release call itself included: a waiter can be told before the holder's call
/// returns), and the old holder queues again. On a semaphore, `companions` more processes
/// take the other permits first and keep them, so the chain contends for the last one.
pub struct Handoff {
    group: Group,
    holder: usize,
    name: String,
    ttl: Duration,
}

impl Handoff {
    /// Starts the processes and queues them all.
    pub async fn start(
        launch: &Launch,
        url: &str,
        waiters: usize,
        companions: usize,
        name: &str,
        ttl: Duration,
    ) -> Result<Handoff> {
        let mut group = Group::start(launch, url, waiters + 1 + companions).await?;
        let cmd = format!("acquire {name} {}", ttl.as_millis());
        hold_companions(&mut group, waiters + 1, &cmd, ttl).await?;
        for i in 0..=waiters {
            group.procs[i].send(&cmd).await?;
        }
        let (holder, first) = group.next(call_timeout(ttl)).await?;
        if !matches!(first, Reply::Acquired { .. }) {
            bail!("handoff set-up: {first:?}");
        }
        Ok(Handoff {
            group,
            holder,
            name: name.to_string(),
            ttl,
        })
    }

    /// One handoff (µs from the holder's release command to the next grant).
    pub async fn once(&mut self) -> Result<f64> {
        let within = call_timeout(self.ttl);
        let h = self.holder;
        self.group.procs[h]
            .send(&format!("release {}", self.name))
            .await?;
        let (mut released, mut granted) = (None, None);
        while released.is_none() || granted.is_none() {
            match self.group.next(within).await? {
                (i, Reply::Released { t0, .. }) if i == h => released = Some(t0),
                (i, Reply::Acquired { t1, .. }) if i != h => granted = Some((i, t1)),
                (i, other) => bail!("handoff: harness {i} answered {other:?}"),
            }
        }
        let (next, g) = granted.expect("loop ends with a grant");
        self.holder = next;
        self.group.procs[h]
            .send(&format!("acquire {} {}", self.name, self.ttl.as_millis()))
            .await?;
        Ok(g as f64 - released.expect("loop ends with a release") as f64)
    }

    /// Stops the processes.
    pub async fn stop(self) {
        self.group.quit_all(QUIT_WITHIN).await;
    }
}

/// Has every process of `group` from index `first` on take a grant with `acquire` and keep
/// it (a semaphore's other permits), one after the other.
async fn hold_companions(
    group: &mut Group,
    first: usize,
    acquire: &str,
    ttl: Duration,
) -> Result<()> {
    for i in first..group.procs.len() {
        let r = group.call(i, acquire, call_timeout(ttl)).await?;
        if !matches!(r, Reply::Acquired { .. }) {
            bail!("companion holder {i}: {r:?}");
        }
    }
    Ok(())
}

/// Handoff latency with `plan.waiters` waiters (µs), alternating one handoff per side;
/// `companions` holders keep the other permits of a semaphore meanwhile.
pub async fn handoff(
    dlock: (&Launch, &str),
    peer: (&Launch, &str),
    plan: &PeersPlan,
    companions: usize,
    ttl: Duration,
) -> Result<Rounds> {
    // Names of their own per run (a killed waiter's lease from an earlier run may linger)
    // and per side: where dlock shares a peer's key layout (etcd's `concurrency.Mutex`,
    // which the v3lock service runs), one name would be one lock for both.
    let name = format!("peers-handoff-{}", dlock_peer_proto::mono_us());
    let mut d = Handoff::start(
        dlock.0,
        dlock.1,
        plan.waiters,
        companions,
        &format!("{name}-dlock"),
        ttl,
    )
    .await
    .context("dlock's handoff chain")?;
    let mut p = match Handoff::start(
        peer.0,
        peer.1,
        plan.waiters,
        companions,
        &format!("{name}-peer"),
        ttl,
    )
    .await
    .context("the peer's handoff chain")
    {
        Ok(p) => p,
        Err(e) => {
            d.stop().await;
            return Err(e);
        }
    };
    let per_round = (plan.handoffs / plan.rounds).max(1);
    let mut out = Rounds::default();
    let result: Result<()> = async {
        for _ in 0..plan.rounds {
            let (mut dr, mut pr) = (Vec::new(), Vec::new());
            for _ in 0..per_round {
                dr.push(d.once().await.context("a dlock handoff")?);
                pr.push(p.once().await.context("a peer handoff")?);
            }
            out.dlock.push(dr);
            out.peer.push(pr);
        }
        Ok(())
    }
    .await;
    d.stop().await;
    p.stop().await;
    result.map(|_| out)
}

/// `throughput TASKS same|distinct MS TTL` on each side in turn (ops/s), `plan.rounds` times.
/// `Ok(None)` when the peer's harness says `unsupported`.
pub async fn throughput(
    dlock: &mut Group,
    peer: &mut Group,
    plan: &PeersPlan,
    same: bool,
    ttl: Duration,
) -> Result<Option<Rounds>> {
    let ms = plan.throughput.as_millis() as u64;
    let cmd = format!(
        "throughput {} {} {ms} {}",
        plan.tasks,
        if same { "same" } else { "distinct" },
        ttl.as_millis()
    );
    let within = plan.throughput + super::super::peers::THROUGHPUT_SLACK + call_timeout(ttl);
    let mut out = Rounds::default();
    for _ in 0..plan.rounds {
        for (side, g) in [(Side::Dlock, &mut *dlock), (Side::Peer, &mut *peer)] {
            let v = match g.call(0, &cmd, within).await? {
                Reply::Throughput { ops, .. } => ops as f64 * 1000.0 / ms as f64,
                Reply::Unsupported(_) if side == Side::Peer => return Ok(None),
                other => bail!("{cmd}: {other:?}"),
            };
            match side {
                Side::Dlock => out.dlock.push(vec![v]),
                Side::Peer => out.peer.push(vec![v]),
            }
        }
    }
    Ok(Some(out))
}

/// SIGKILL failover (ms): a fresh holder process acquires, a waiter process finds the lock
/// busy and asks again, the holder is killed at once (well inside any ttl); the sample is the
/// time from the kill to the waiter's grant. `plan.failovers` per side, alternating. On a
/// semaphore, `companions` more processes hold the other permits throughout.
pub async fn failover(
    dlock: (&Launch, &str),
    peer: (&Launch, &str),
    plan: &PeersPlan,
    companions: usize,
    ttl: Duration,
) -> Result<(Rounds, f64)> {
    let mut out = Rounds::default();
    let mut latest_kill_ms = 0.0_f64;
    for rep in 0..plan.failovers {
        let name = format!("peers-failover-{rep}-{}", dlock_peer_proto::mono_us());
        let (d, kd) = failover_once(dlock, &format!("{name}-dlock"), companions, ttl)
            .await
            .context("dlock's failover")?;
        out.dlock.push(vec![d]);
        let (p, kp) = failover_once(peer, &format!("{name}-peer"), companions, ttl)
            .await
            .context("the peer's failover")?;
        out.peer.push(vec![p]);
        latest_kill_ms = latest_kill_ms.max(kd).max(kp);
    }
    Ok((out, latest_kill_ms))
}

/// One failover (ms) and how long after the holder's grant the kill came (ms).
async fn failover_once(
    (launch, url): (&Launch, &str),
    name: &str,
    companions: usize,
    ttl: Duration,
) -> Result<(f64, f64)> {
    let within = call_timeout(ttl);
    let mut g = Group::start(launch, url, 2 + companions).await?;
    let ms = ttl.as_millis();
    let result: Result<(f64, f64)> = async {
        hold_companions(&mut g, 2, &format!("acquire {name} {ms}"), ttl).await?;
        let a = g.call(0, &format!("acquire {name} {ms}"), within).await?;
        let Reply::Acquired { t1: granted, .. } = a else {
            bail!("failover holder: {a:?}");
        };
        let b = g.call(1, &format!("try {name} {ms}"), within).await?;
        if !matches!(b, Reply::Busy { .. }) {
            bail!("failover waiter's try while held: {b:?}");
        }
        g.procs[1].send(&format!("acquire {name} {ms}")).await?;
        let killed = dlock_peer_proto::mono_us();
        g.kill(0).await;
        match g.next(within).await? {
            (1, Reply::Acquired { t1, .. }) => Ok((
                (t1 as f64 - killed as f64) / 1000.0,
                (killed as f64 - granted as f64) / 1000.0,
            )),
            (i, other) => bail!("failover: harness {i} answered {other:?}"),
        }
    }
    .await;
    g.quit_all(QUIT_WITHIN).await;
    result
}

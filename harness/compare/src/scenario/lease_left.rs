//! What was left of the faulty holder's lease when the fault hit, so that a lease backend's
//! failover can be read against it: failover − lease left = what the server added after the
//! lease ran out (etcd's expiry sweep, Redis's expiry, the waiter's notification).
//!
//! - **etcd**: its API reports a lease's remaining TTL only in whole seconds, so it is set
//!   instead of read: the harness sends one keepalive for the holder's lease (any client may
//!   keep any lease alive) just before the fault. The server then expires it the granted TTL
//!   after handling that keepalive, i.e. between the keepalive's send and its answer (a
//!   loopback round trip, well under a millisecond) plus the TTL; the later bound is used, so
//!   the figure read against it is the smaller, the conservative one. The holder's own
//!   keepalive could land in the few hundred µs between that answer and the fault and move the
//!   expiry by as much; that is the error bar.
//! - **Redis, ShedLock on Redis**: `PTTL` of the lock key, in ms.
//! - Others: `None` (PostgreSQL has no lease; ZooKeeper's session expiry is not readable by a
//!   client; Redlock's lease lives on three instances; ShedLock on PostgreSQL is not read).

use anyhow::{Context, Result, bail};

use super::holder::mono_us;
use super::target::Target;

/// The lease of the current holder of `name`: `(ms left, the instant it was true at)`.
pub(crate) async fn lease_left(
    backend: &str,
    target: &Target,
    name: &str,
) -> Result<Option<(f64, i64)>> {
    // Bounded: a reader that hangs must not hold up the scenario.
    let read = async {
        match backend {
            #[cfg(feature = "etcd")]
            "etcd" => etcd(target, name).await.map(Some),
            #[cfg(feature = "redis")]
            "redis" => pttl(target, &format!("dlock:{name}")).await.map(Some),
            #[cfg(feature = "redis")]
            "shedlock-redis" => pttl(target, &format!("job-lock:default:{name}"))
                .await
                .map(Some),
            _ => Ok(None),
        }
    };
    tokio::time::timeout(READ_WITHIN, read)
        .await
        .unwrap_or_else(|_| bail!("no answer within {READ_WITHIN:?}"))
}

/// How long reading (or setting) the lease may take.
const READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// One keepalive for the lease of the oldest contender key of `name` (its holder).
#[cfg(feature = "etcd")]
async fn etcd(target: &Target, name: &str) -> Result<(f64, i64)> {
    use etcd_client::{Client, GetOptions, SortOrder, SortTarget};
    if target.url.split_once("://").is_some_and(|(_, rest)| {
        rest.split(['?', '#'])
            .next()
            .is_some_and(|r| r.contains('/'))
    }) {
        bail!("the target's URL has a key prefix; the lease reader does not parse it");
    }
    let endpoints: Vec<String> = target
        .members
        .iter()
        .map(|m| format!("http://{m}"))
        .collect();
    let mut client = Client::connect(endpoints, None)
        .await
        .context("etcd: cannot connect to read the holder's lease")?;
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let resp = client.get(format!("{name}/"), Some(opts)).await?;
    let Some(kv) = resp.kvs().first() else {
        bail!("etcd: no contender key under {name}/");
    };
    let lease = kv.lease();
    let granted = client.lease_time_to_live(lease, None).await?.granted_ttl();
    if granted <= 0 {
        bail!("etcd: the holder's lease {lease:x} is gone");
    }
    // Returns once the server has answered the first keepalive (an error if the lease was
    // already gone); the lease then runs for `granted` seconds from that answer at most.
    let (_keeper, _stream) = client.lease_keep_alive(lease).await?;
    let at = mono_us();
    Ok((granted as f64 * 1000.0, at))
}

/// `PTTL key` on the target's one Redis.
#[cfg(feature = "redis")]
async fn pttl(target: &Target, key: &str) -> Result<(f64, i64)> {
    let addr = target.addr.context("no single Redis address")?;
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let ms: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await?;
    let at = mono_us();
    if ms < 0 {
        bail!("PTTL {key} = {ms}: no key with an expiry");
    }
    Ok((ms as f64, at))
}

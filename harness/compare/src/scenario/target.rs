//! The servers a backend runs on for the comparison, and how its URL is rerouted through
//! fault proxies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};

use super::BACKENDS;
use dlock_fixtures as fixtures;
use dlock_fixtures::faults::{Fault, FaultProxy};

/// A backend's URL and the servers that keep it alive.
pub struct Target {
    /// The URL every holder is given (unless a nemesis reroutes the subject's): with fencing
    /// tokens turned on where the backend has them only as an option.
    pub(crate) url: String,
    /// The URL the benchmarks use: the backend's defaults (no fencing option), so that the
    /// ratio to the raw floor measures the lock itself.
    pub(crate) bench_url: String,
    /// The one server's address, for backends a single proxy can sit in front of.
    pub(crate) addr: Option<SocketAddr>,
    /// Every server address in the URL (one proxy each in `latency`); empty when unknown
    /// (external servers).
    pub(crate) members: Vec<SocketAddr>,
    pub(crate) ttl_ms: Option<u64>,
    pub(crate) frees_by: &'static str,
    /// The one server, for backends that have one (restarted by `server_restart`).
    pub(crate) server: Option<fixtures::Server>,
    /// The servers of a multi-server backend (Redlock's instances, an etcd cluster, a
    /// ZooKeeper ensemble); `quorum_loss` kills and restarts their members. Dropping it stops
    /// them.
    pub(crate) cluster: Option<fixtures::Cluster>,
    /// A primary with replicas (`primary_failover`): the PostgreSQL pair or the Redis
    /// Sentinel set the URL names.
    pub(crate) failover: Option<super::nemesis::failover::Replicated>,
}

impl Target {
    fn single(
        url: String,
        server: fixtures::Server,
        ttl_ms: Option<u64>,
        frees_by: &'static str,
    ) -> Target {
        Target {
            bench_url: url.clone(),
            url,
            addr: server.addr(),
            members: server.addr().into_iter().collect(),
            ttl_ms,
            frees_by,
            server: Some(server),
            cluster: None,
            failover: None,
        }
    }

    /// A primary with replicas, every address in `members`.
    pub(crate) fn replicated(
        url: String,
        members: Vec<SocketAddr>,
        ttl_ms: Option<u64>,
        frees_by: &'static str,
        servers: super::nemesis::failover::Replicated,
    ) -> Target {
        Target {
            bench_url: url.clone(),
            url,
            addr: None,
            members,
            ttl_ms,
            frees_by,
            server: None,
            cluster: None,
            failover: Some(servers),
        }
    }

    fn multi(
        url: String,
        cluster: fixtures::Cluster,
        ttl_ms: Option<u64>,
        frees_by: &'static str,
    ) -> Target {
        Target {
            bench_url: url.clone(),
            url,
            addr: None,
            members: cluster
                .ports()
                .into_iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
            ttl_ms,
            frees_by,
            server: None,
            cluster: Some(cluster),
            failover: None,
        }
    }
}

impl Target {
    /// The same target with `option` (`fencing=…`) added to the holders' URL; the
    /// benchmarks keep the plain one.
    pub(crate) fn fenced(mut self, option: &str) -> Target {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        self.url = format!("{}{sep}{option}", self.url);
        self
    }
}

/// Starts the servers of `backend`. Where fencing tokens are an option (PostgreSQL's and
/// ShedLock's side tables, ShedLock on Redis's counter), the holders get it: the comparison
/// shows what the tokens stop.
pub(crate) async fn start_target(backend: &str, ttl: Duration) -> Result<Target> {
    let ttl_ms = Some(ttl.as_millis() as u64);
    Ok(match backend {
        "postgres" => {
            let pg = fixtures::postgres().await?;
            Target::single(
                pg.url().to_string(),
                pg,
                None,
                "session lock: freed when the holder's connection closes",
            )
            .fenced("fencing=table")
        }
        "mariadb" => {
            let db = fixtures::mariadb().await?;
            Target::single(
                db.url().to_string(),
                db,
                None,
                "session lock (GET_LOCK): freed when the holder's connection closes, or when \
                 its session has been quiet for wait_timeout (10 s by default)",
            )
            .fenced("fencing=table")
        }
        "shedlock-postgres" => {
            let pg = fixtures::postgres().await?;
            Target::single(
                format!("shedlock+{}", pg.url()),
                pg,
                ttl_ms,
                "lock_until in the table (at_most), renewed by the holder",
            )
            .fenced("fencing=table")
        }
        "redis" | "shedlock-redis" => {
            let r = fixtures::redis().await?;
            let (url, frees_by) = if backend == "redis" {
                (
                    r.url().to_string(),
                    "key expiry (PX ttl), renewed by the holder",
                )
            } else {
                (
                    format!("shedlock+{}", r.url()),
                    "key expiry (at_most), renewed by the holder",
                )
            };
            let t = Target::single(url, r, ttl_ms, frees_by);
            if backend == "shedlock-redis" {
                t.fenced("fencing=on")
            } else {
                t
            }
        }
        "redlock" => {
            let c = fixtures::redlock(3).await?;
            Target::multi(
                c.url().to_string(),
                c,
                ttl_ms,
                "key expiry on a majority of 3 instances, renewed by the holder",
            )
        }
        "etcd" => {
            let e = fixtures::etcd().await?;
            Target::single(
                e.url().to_string(),
                e,
                ttl_ms,
                "lease expiry, kept alive by the holder",
            )
        }
        "zookeeper" => {
            let z = fixtures::zookeeper().await?;
            let url = zk_url(z.url(), ttl);
            Target::single(
                url,
                z,
                ttl_ms,
                "session expiry (ephemeral node), kept alive by the client's pings",
            )
        }
        other => bail!("unknown backend {other:?} (known: {})", BACKENDS.join(", ")),
    })
}

/// A ZooKeeper URL asking for `ttl` as the session timeout.
fn zk_url(url: &str, ttl: Duration) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}session_timeout={}ms", ttl.as_millis())
}

/// The 3-member cluster `quorum_loss` needs for etcd and ZooKeeper (always managed: the
/// scenario kills and restarts members). Other backends use their usual target.
pub(crate) async fn start_cluster_target(backend: &str, ttl: Duration) -> Result<Target> {
    let ttl_ms = Some(ttl.as_millis() as u64);
    Ok(match backend {
        "etcd" => {
            let c = fixtures::etcd_cluster(3, fixtures::EtcdOptions::default()).await?;
            Target::multi(
                c.url().to_string(),
                c,
                ttl_ms,
                "lease expiry, kept alive by the holder",
            )
        }
        "zookeeper" => {
            let c = fixtures::zookeeper_ensemble(3, fixtures::ZooKeeperOptions::default()).await?;
            Target::multi(
                zk_url(c.url(), ttl),
                c,
                ttl_ms,
                "session expiry (ephemeral node), kept alive by the client's pings",
            )
        }
        other => bail!("{other} has no cluster target"),
    })
}

/// Capabilities of a backend connected to `url` (options such as `fencing=` included), or
/// the scheme's registered ones when it cannot connect.
pub(crate) async fn live_capabilities(url: &str) -> String {
    match dlock::connect(url).await {
        Ok(b) => {
            let caps = b.capabilities().to_string();
            b.close().await;
            caps
        }
        Err(_) => capabilities(url),
    }
}

/// Capabilities of the scheme of `url` as `dlock backends` prints them.
pub(crate) fn capabilities(url: &str) -> String {
    let scheme = url.split("://").next().unwrap_or("");
    for (s, status) in dlock::registry().schemes() {
        if s == scheme {
            if let dlock::SchemeStatus::Available(caps) = status {
                return caps.to_string();
            }
        }
    }
    String::new()
}

impl Target {
    /// Whether a server or cluster the harness started (and so can kill) is behind it.
    pub(crate) fn is_managed(&self) -> bool {
        self.server.as_ref().is_some_and(|s| s.is_managed())
            || self.cluster.as_ref().is_some_and(|c| c.is_managed())
            || self.failover.is_some()
    }

    /// A fault proxy in front of every server (Redlock: each instance), each set to `fault`
    /// before anything connects, and the URL rerouted through them.
    pub(crate) async fn proxied(&self, fault: Fault) -> Result<(Vec<FaultProxy>, String)> {
        if self.members.is_empty() {
            bail!("no server address to put a proxy in front of");
        }
        let mut proxies = Vec::new();
        let mut pairs = Vec::new();
        for m in &self.members {
            let p = FaultProxy::start(*m).await?;
            p.set(fault);
            pairs.push((*m, p.addr()));
            proxies.push(p);
        }
        let rerouted = reroute(&self.url, &pairs)?;
        Ok((proxies, rerouted))
    }
}

/// Replaces every server address of `url` by its proxy's (`host:port` followed by a
/// non-digit or the end, so `…:5432` never matches inside `…:54321`).
pub(crate) fn reroute(url: &str, pairs: &[(SocketAddr, SocketAddr)]) -> Result<String> {
    let mut out = url.to_string();
    for (from, to) in pairs {
        let needle = from.to_string();
        let mut next = String::with_capacity(out.len());
        let mut rest = out.as_str();
        let mut found = false;
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            next.push_str(&rest[..i]);
            if after.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                next.push_str(&needle);
            } else {
                next.push_str(&to.to_string());
                found = true;
            }
            rest = after;
        }
        next.push_str(rest);
        if !found {
            bail!("{from} does not appear in {}", dlock::redact(url));
        }
        out = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reroute_replaces_whole_addresses_only() {
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let pa: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let pb: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let url = "redlock://127.0.0.1:54321,127.0.0.1:5432,127.0.0.1:6000/x";
        assert_eq!(
            reroute(url, &[(a, pa), (b, pb)]).unwrap(),
            "redlock://127.0.0.1:54321,127.0.0.1:40001,127.0.0.1:40002/x"
        );
        let missing: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert!(reroute(url, &[(missing, pa)]).is_err());
    }
}

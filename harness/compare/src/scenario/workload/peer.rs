//! A peer library's exclusive lock, held by its harness processes (`peers/README.md`) where
//! dlock's is held by `dlock hold`: the same trial (the subject holds, a contender queues),
//! the same nemeses, the same checker, so the failure table gets a row per peer library
//! beside dlock's row per backend.
//!
//! Both harnesses are started and ready before the subject acquires: a JVM takes longer to
//! start than a 2 s lease lasts, and a lease that ran out while the contender's harness
//! started would hand it the lock before any fault.

use std::time::Duration;

use anyhow::Result;

use super::exclusive::{hold_then_queue, specs};
use super::{Approach, BoxFuture, Ctx, Role, Trial, Workload};
use crate::peers::catalog::{Harnesses, PEERS, PeerSpec, peer_url};
use crate::peers::proc::{Group, Launch, READY_TIMEOUT};
use crate::scenario::Library;
use crate::scenario::holder::{HoldSpec, Holder, PeerHold};
use crate::scenario::target::Target;
use dlock_fixtures::netns::Netns;

/// The scenarios peer holders go through: the faults on the holder, and the server's
/// restart. (A clean handoff, a slow link, a quorum's loss, a primary's failover and skewed
/// clocks stay dlock's: the first measures no failure, the others need what only `dlock
/// hold` reports — its state while the link is slow, its guard, its clock.)
pub const PEER_SCENARIOS: [&str; 5] = [
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "connection_reset",
    "server_restart",
];

/// The peer libraries held through [`PEER_SCENARIOS`], per backend, in report order: the
/// seed's libraries, one harness each. The first of a backend is the one `--quick` keeps.
/// Java ShedLock's providers sit under dlock's ShedLock backends (the same table and keys).
pub const PEER_HOLDERS: [(&str, &str); 7] = [
    ("postgres", "jdbc-advisory"),
    ("redis", "redisson"),
    ("redis", "redsync"),
    ("etcd", "etcd-mutex"),
    ("zookeeper", "curator-mutex"),
    ("shedlock-postgres", "shedlock-jdbc"),
    ("shedlock-redis", "shedlock-redis"),
];

/// How long the probe that reads a peer's version may take to quit.
const PROBE_QUIT: Duration = Duration::from_secs(5);

/// Which peer holders a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerHolders {
    /// None (`--no-peer-holders`, or no scenarios run).
    Off,
    /// The first of each backend ([`PEER_HOLDERS`]; `--quick`).
    FirstPerBackend,
    /// Every one.
    All,
}

impl PeerHolders {
    /// The peers held on `backend`, in report order.
    pub fn of(self, backend: &str) -> Vec<&'static PeerSpec> {
        let all = PEER_HOLDERS
            .iter()
            .filter(|(b, _)| *b == backend)
            .filter_map(|(b, p)| {
                PEERS
                    .iter()
                    .find(|s| s.backend == *b && s.peer == *p && s.dlock_option.is_empty())
            });
        match self {
            PeerHolders::Off => Vec::new(),
            PeerHolders::FirstPerBackend => all.take(1).collect(),
            PeerHolders::All => all.collect(),
        }
    }
}

/// The report's name of a peer library (its version when its harness said it).
pub fn library(spec: &PeerSpec, version: Option<&str>) -> Library {
    Library {
        name: spec.peer.to_string(),
        version: version.filter(|v| !v.is_empty()).map(str::to_string),
        harness: spec.harness.as_str().to_string(),
    }
}

/// A peer library's lock, held by its harness processes.
pub struct PeerLock {
    spec: &'static PeerSpec,
    name: String,
    launch: Launch,
    version: String,
}

impl PeerLock {
    /// Starts `spec`'s harness once on `target` and reads its version from its `ready` line;
    /// why the peer cannot run here otherwise (its harness not installed, or unavailable).
    pub async fn start(
        spec: &'static PeerSpec,
        harnesses: &Harnesses,
        target: &Target,
        ttl: Duration,
    ) -> Result<PeerLock, String> {
        let launch = harnesses.launch(spec, ttl.as_millis() as u64)?;
        let url = peer_url(spec.backend, &target.url).ok_or_else(|| {
            format!(
                "no {} URL form for {}",
                spec.peer,
                dlock::redact(&target.url)
            )
        })?;
        let probe = Group::start(&launch, &url, 1)
            .await
            .map_err(|e| format!("its harness did not start: {e:#}"))?;
        let version = probe.version();
        probe.quit_all(PROBE_QUIT).await;
        Ok(PeerLock {
            spec,
            name: format!("peer:{}", spec.peer),
            launch,
            version,
        })
    }
}

impl Workload for PeerLock {
    fn name(&self) -> &str {
        &self.name
    }

    fn library(&self) -> Option<Library> {
        Some(library(self.spec, Some(&self.version)))
    }

    fn label(&self, backend: &str) -> String {
        let library = crate::scenario::cell::library_label(self.spec.peer, Some(&self.version));
        format!("{backend} · {library}")
    }

    fn spec(&self, url: &str, name: &str, ttl: Duration, role: Role) -> HoldSpec {
        let peer = PeerHold {
            launch: self.launch.clone(),
            backend: self.spec.backend.to_string(),
        };
        super::hold_spec(url, name, ttl, role, Default::default(), Some(peer))
    }

    fn begin<'a: 'b, 'b>(
        &'b self,
        ctx: &'a Ctx<'a>,
        how: &'b Approach,
        netns: Option<&'b Netns>,
    ) -> BoxFuture<'b, Result<Trial<'a>>> {
        Box::pin(begin(ctx, how, netns))
    }
}

/// Both harnesses started and ready, then the subject acquires and the contender queues.
async fn begin<'a>(ctx: &'a Ctx<'a>, how: &Approach, netns: Option<&Netns>) -> Result<Trial<'a>> {
    let (spec_a, spec_b) = specs(ctx, how);
    let bin = &ctx.opts.dlock_bin;
    let mut a = Holder::spawn_in(bin, &spec_a, netns)?;
    let mut b = match Holder::spawn(bin, &spec_b) {
        Ok(b) => b,
        Err(e) => {
            a.finish().await;
            return Err(e);
        }
    };
    let ready = match a.ready(READY_TIMEOUT).await {
        Ok(_) => b.ready(READY_TIMEOUT).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = ready {
        a.finish().await;
        b.finish().await;
        return Err(e);
    }
    hold_then_queue(ctx, a, Some(b), &spec_b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_peer_holder_is_a_peer_of_its_backend() {
        for (backend, peer) in PEER_HOLDERS {
            let of = PeerHolders::All.of(backend);
            assert!(of.iter().any(|s| s.peer == peer), "{backend} · {peer}");
        }
        let redis: Vec<&str> = PeerHolders::All
            .of("redis")
            .iter()
            .map(|s| s.peer)
            .collect();
        assert_eq!(redis, ["redisson", "redsync"]);
        let quick: Vec<&str> = PeerHolders::FirstPerBackend
            .of("redis")
            .iter()
            .map(|s| s.peer)
            .collect();
        assert_eq!(quick, ["redisson"]);
        assert!(PeerHolders::Off.of("redis").is_empty());
        assert!(PeerHolders::All.of("redlock").is_empty());
        for s in PEER_SCENARIOS {
            assert!(crate::scenario::SCENARIOS.contains(&s), "{s}");
        }
    }

    /// The subject's dlock URL through a nemesis's fault proxy, or rewritten to reach the
    /// server from a network namespace, gives the peer the same host and port in its form.
    #[test]
    fn a_rerouted_dlock_url_reaches_the_peer_through_the_same_address() {
        use crate::scenario::target::reroute;
        use std::net::SocketAddr;
        let server: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let proxy: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let inside: SocketAddr = "10.213.0.1:6379".parse().unwrap();
        let cases = [
            (
                "postgres",
                "postgres://dlock@127.0.0.1:6379/dlock?fencing=table",
                "postgres://dlock@HOST/dlock",
            ),
            (
                "redis",
                "redis://127.0.0.1:6379/?fencing=on",
                "redis://HOST",
            ),
            ("etcd", "etcd://127.0.0.1:6379", "http://HOST"),
            (
                "zookeeper",
                "zk://127.0.0.1:6379/?session_timeout=2s",
                "HOST",
            ),
        ];
        for (backend, url, want) in cases {
            for to in [proxy, inside] {
                let dlock_url = reroute(url, &[(server, to)]).unwrap();
                assert_eq!(
                    peer_url(backend, &dlock_url),
                    Some(want.replace("HOST", &to.to_string())),
                    "{backend}: {dlock_url}"
                );
            }
        }
    }

    #[test]
    fn a_library_without_a_version_says_none() {
        let spec = PeerHolders::All.of("zookeeper")[0];
        let l = library(spec, Some(""));
        assert_eq!((l.name.as_str(), l.version), ("curator-mutex", None));
        assert_eq!(library(spec, Some("5.7.1")).label(), "curator-mutex 5.7.1");
        // The harness's version string without the library's name in front.
        let redis = PeerHolders::All.of("redis");
        assert_eq!(
            library(redis[0], Some("redisson-4.7.0")).label(),
            "redisson 4.7.0"
        );
        let shedlock = PeerHolders::All.of("shedlock-redis")[0];
        assert_eq!(
            library(shedlock, Some("shedlock-7.10.1+lettuce-7.5.2")).label(),
            "shedlock-redis 7.10.1+lettuce-7.5.2"
        );
        assert_eq!(
            library(redis[1], Some("redsync-4.18.1+go-redis-9.23.0")).label(),
            "redsync 4.18.1+go-redis-9.23.0"
        );
        // A version that does not start with the name is kept whole.
        let etcd = PeerHolders::All.of("etcd")[0];
        assert_eq!(
            library(etcd, Some("etcd-client-go-3.7.3")).label(),
            "etcd-mutex etcd-client-go-3.7.3"
        );
    }
}

//! `primary_failover`: the server the lock lives on is SIGKILLed and another takes over, the
//! way a lock is most often lost in production. PostgreSQL: a primary with an asynchronous
//! streaming replica; the harness runs `pg_ctl promote` on the replica at once, as an
//! operator or Patroni would. MariaDB: a primary with an asynchronous GTID replica; the
//! harness promotes it at once (relay log applied, `RESET SLAVE ALL`, `read_only = OFF`), as
//! MaxScale or an operator would. Redis: a primary, a replica and 3 Sentinels
//! (`down-after-milliseconds` 1000), which elect and promote. etcd and ZooKeeper: the leader
//! of a 3-member cluster. Every holder's URL names all hosts (PostgreSQL
//! `h1,h2?target_session_attrs=read-write`, `redis+sentinel://`, the members' list), so the
//! client can follow (MariaDB: `h1,h2?target_session_attrs=read-write`). Failover = the kill → another holder's grant; a lock the holder keeps
//! (replicated state that survived, a renewal that reached the new primary) is "kept".
//! After each repetition the old primary rejoins as a replica (PostgreSQL: a fresh
//! `pg_basebackup`; MariaDB: a fresh install replicating the new primary; Redis: restarted and pointed at the new master with `REPLICAOF`, then
//! listed by every Sentinel as a replica; etcd/ZooKeeper: the member restarted).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Nemesis, record_moved};
use crate::scenario::checker::Retention;
use crate::scenario::holder::{Holder, mono_us, ms_between};
use crate::scenario::target::{Target, start_cluster_target};
use crate::scenario::workload::trial::{Reported, await_grant_as, cause, has_ended};
use crate::scenario::workload::{BoxFuture, Grant, Trial};
use dlock_fixtures as fixtures;
use dlock_fixtures::{MariaDbPair, PgReplicaPair, RedisSentinel, SentinelOptions};

/// The replicated servers of a failover cell.
pub enum Replicated {
    /// A PostgreSQL primary and its streaming replica.
    Postgres(PgReplicaPair),
    /// A MariaDB primary and its replica.
    MariaDb(MariaDbPair),
    /// A Redis primary, its replica and Sentinels.
    Redis(RedisSentinel),
}

/// The primary killed, another server in its place.
#[derive(Debug, Clone, Default)]
pub struct PrimaryFailover {
    /// The etcd / ZooKeeper member killed in this repetition.
    killed: Option<usize>,
}

impl Nemesis for PrimaryFailover {
    fn name(&self) -> &'static str {
        "primary_failover"
    }

    fn cost(&self, _ttl: Duration) -> Duration {
        // Kill, election or promotion (Sentinel: ~2.3 s), the grant, and the old primary
        // rejoining (Redis: ~1 s until every Sentinel lists it as a replica again).
        Duration::from_secs(8)
    }

    fn describe(&self) -> String {
        "the primary SIGKILLed and a replica promoted (PostgreSQL: pg_ctl promote by the harness at once; MariaDB: the replica promoted by the harness at once; Redis: 3 Sentinels, down-after-milliseconds 1000, elect and promote; etcd/ZooKeeper: the leader of 3 members killed, the others elect); every URL names all hosts; failover = kill → another holder's grant".into()
    }

    fn not_applicable(&self, backend: &str) -> Option<String> {
        match backend {
            "redlock" => Some(
                "no primary: Redlock's instances are independent, each one's loss is quorum_loss's \
                 subject"
                    .into(),
            ),
            "shedlock-redis" => Some(
                "shedlock+redis:// names one server and has no Sentinel form; after a failover it \
                 keeps talking to the dead primary"
                    .into(),
            ),
            _ => None,
        }
    }

    fn own_servers(&self, _backend: &str) -> bool {
        true
    }

    fn servers<'a>(&'a self, backend: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Target>> {
        Box::pin(start_failover_target(backend, ttl))
    }

    fn not_measurable(&self, target: &Target) -> Option<String> {
        let managed =
            target.failover.is_some() || target.cluster.as_ref().is_some_and(|c| c.is_managed());
        (!managed).then(|| "not measured: needs a primary and replicas the harness started".into())
    }

    fn cell_notes(&self, target: &Target) -> Vec<String> {
        let mut notes = vec![
            self.describe(),
            format!("URL: {}", dlock::redact(&target.url)),
        ];
        match &target.failover {
            Some(Replicated::Postgres(p)) => notes.push(format!(
                "setup: primary + streaming replica (initdb, pg_basebackup, streaming) in {:.1} s",
                p.setup_time().as_secs_f64()
            )),
            Some(Replicated::MariaDb(p)) => notes.push(format!(
                "setup: primary + GTID replica (mariadb-install-db twice, CHANGE MASTER) in \
                 {:.1} s; GET_LOCK locks are not replicated, the fencing counters are",
                p.setup_time().as_secs_f64()
            )),
            Some(Replicated::Redis(r)) => notes.push(format!(
                "setup: primary + replica + {} Sentinels in {:.1} s (the Sentinels find each \
                 other through hello messages every 2 s)",
                r.sentinels().len(),
                r.setup_time().as_secs_f64()
            )),
            None => {}
        }
        notes
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let target = t.ctx.target;
            match (&target.failover, &target.cluster) {
                (Some(Replicated::Postgres(pair)), _) => {
                    if t.ctx.backend == "shedlock-postgres" {
                        // Asynchronous replication: did the row (and its last renewal) reach
                        // the replica? The WAL positions, read just before the kill.
                        match pair.wal_positions().await {
                            Ok((w, r, up)) => t.history.note(format!(
                                "before the kill the replica had replayed {} WAL (primary at \
                                 {w}, replica at {r})",
                                if up {
                                    "all the primary's"
                                } else {
                                    "not all the primary's"
                                }
                            )),
                            Err(e) => t.history.note(format!("WAL positions unknown: {e:#}")),
                        }
                    }
                    let t0 = mono_us();
                    pair.primary().kill().await?;
                    let took = pair.promote().await?;
                    t.history.note(format!(
                        "pg_ctl promote until pg_is_in_recovery() = false: {:.0} ms",
                        took.as_secs_f64() * 1000.0
                    ));
                    Ok(t0)
                }
                (Some(Replicated::MariaDb(pair)), _) => {
                    // Asynchronous replication: did the fencing counter reach the replica?
                    match pair.gtid_positions().await {
                        Ok((w, r, up)) => t.history.note(format!(
                            "before the kill the replica had applied {} binary log (primary \
                             at {w}, replica at {r})",
                            if up {
                                "all the primary's"
                            } else {
                                "not all the primary's"
                            }
                        )),
                        Err(e) => t.history.note(format!("GTID positions unknown: {e:#}")),
                    }
                    let t0 = mono_us();
                    pair.primary().kill().await?;
                    let took = pair.promote().await?;
                    t.history.note(format!(
                        "promotion (relay log applied, RESET SLAVE ALL, read_only = OFF): \
                         {:.0} ms",
                        took.as_secs_f64() * 1000.0
                    ));
                    Ok(t0)
                }
                (Some(Replicated::Redis(set)), _) => {
                    let t0 = mono_us();
                    set.primary().kill().await?;
                    let took = set.wait_promoted(Duration::from_secs(30)).await?;
                    t.history.note(format!(
                        "Sentinel failover (down-after {} ms, election, promotion) until every \
                         Sentinel names the replica: {:.0} ms after the kill",
                        set.options().down_after.as_millis(),
                        took.as_secs_f64() * 1000.0
                    ));
                    Ok(t0)
                }
                (None, Some(cluster)) if cluster.is_managed() => {
                    let leader = cluster.leader().await?.context("no member says it leads")?;
                    let t0 = mono_us();
                    cluster.kill_member(leader).await?;
                    self.killed = Some(leader);
                    let started = Instant::now();
                    let elected = loop {
                        if let Some(l) = cluster.leader().await? {
                            if l != leader {
                                break Some(l);
                            }
                        }
                        if started.elapsed() > Duration::from_secs(30) {
                            break None;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    };
                    t.history.note(match elected {
                        Some(l) => format!(
                            "leader (member {leader}) killed; member {l} leads {:.0} ms later",
                            ms_between(t0, mono_us())
                        ),
                        None => format!("leader (member {leader}) killed; no new leader in 30 s"),
                    });
                    Ok(t0)
                }
                _ => bail!("no replicated servers for primary_failover"),
            }
        })
    }

    fn stop<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let target = t.ctx.target;
            match (&target.failover, &target.cluster) {
                (Some(Replicated::Postgres(pair)), _) => {
                    pair.reseed().await?;
                }
                (Some(Replicated::MariaDb(pair)), _) => {
                    pair.reseed().await?;
                }
                (Some(Replicated::Redis(set)), _) => {
                    set.rejoin().await?;
                }
                (None, Some(cluster)) => {
                    if let Some(i) = self.killed.take() {
                        cluster.restart_members(&[i]).await?;
                    }
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let t0 = self.start(t).await?;
            let mut third = None;
            let result = observe(t, t0, &mut third).await;
            if let Some(w) = third {
                w.finish().await;
            }
            // The old primary rejoins after the holders are observed, before the next
            // repetition.
            let healed = self.stop(t).await;
            result.and(healed)
        })
    }
}

/// The grant (the waiter's, or a fresh waiter's if it gave up with its connection), what the
/// holder reported, and the stale write.
async fn observe(t: &mut Trial<'_>, t0: i64, third: &mut Option<Holder>) -> Result<()> {
    let bound = t.ctx.grant_bound();
    let within = t.ctx.fault_bound();
    let mut grant: Option<Grant> = match t.await_grant(within).await {
        Ok(g) => g,
        Err(e) => {
            t.history.note(format!(
                "the waiter exited when its server went away ({}); a new waiter was started",
                cause(&e, &t.ctx.name)
            ));
            None
        }
    };
    if grant.is_none() && has_ended(&mut t.contender).await {
        let w = third.insert(t.spawn_contender()?);
        grant = await_grant_as(2, w, &mut t.history.resource, within).await?;
    }
    let mut states = Reported::default();
    let lost = t.drain_subject(t0, &mut states);
    match grant {
        Some((t_grant, _)) => {
            t.history.note(format!(
                "lock lost: another holder was granted it {:.0} ms after the kill",
                ms_between(t0, t_grant)
            ));
            record_moved(t, t0, t_grant, lost, bound).await;
        }
        None => {
            t.history.not_freed(lost);
            t.history.note(format!(
                "lock kept: nobody else was granted it within {} s of the kill{}",
                within.as_secs(),
                match Retention::of(lost) {
                    Retention::Stranded(_) => " although the holder reported it lost",
                    Retention::KeptByLiveHolder => " (the holder's state survived the failover)",
                }
            ));
        }
    }
    if !states.is_empty() {
        t.history
            .note(format!("holder reported: {}", states.join(", ")));
    }
    t.history.resource.exit(0, mono_us());
    Ok(())
}

/// The servers of a failover cell: a PostgreSQL pair, a Redis Sentinel set, or (etcd,
/// ZooKeeper) the 3-member cluster `quorum_loss` uses.
pub(crate) async fn start_failover_target(backend: &str, ttl: Duration) -> Result<Target> {
    let ttl_ms = Some(ttl.as_millis() as u64);
    let addrs = |servers: &[&fixtures::Server]| -> Vec<SocketAddr> {
        servers.iter().filter_map(|s| s.addr()).collect()
    };
    Ok(match backend {
        "postgres" | "shedlock-postgres" => {
            let pair = fixtures::postgres_replica_pair().await?;
            let (url, ttl_ms, frees_by) = if backend == "postgres" {
                (
                    pair.url(),
                    None,
                    "session lock on the primary (not replicated): freed when the holder's \
                     connection or the primary ends",
                )
            } else {
                (
                    format!("shedlock+{}", pair.url()),
                    ttl_ms,
                    "lock_until in the table, replicated asynchronously, renewed by the holder",
                )
            };
            let members = addrs(&[&pair.members()[0], &pair.members()[1]]);
            // Tokens as in the other cells: the fencing table is replicated like any table.
            Target::replicated(url, members, ttl_ms, frees_by, Replicated::Postgres(pair))
                .fenced("fencing=table")
        }
        "mariadb" => {
            let pair = fixtures::mariadb_replica_pair().await?;
            let members = addrs(&[&pair.members()[0], &pair.members()[1]]);
            let url = pair.url();
            Target::replicated(
                url,
                members,
                None,
                "session lock on the primary (GET_LOCK, not replicated): freed when the \
                 holder's connection or the primary ends",
                Replicated::MariaDb(pair),
            )
            .fenced("fencing=table")
        }
        "redis" => {
            let set = fixtures::redis_sentinel(SentinelOptions::default()).await?;
            let members = addrs(&[set.primary(), set.replica()]);
            Target::replicated(
                set.url(),
                members,
                ttl_ms,
                "key expiry (PX ttl), replicated asynchronously, renewed by the holder",
                Replicated::Redis(set),
            )
        }
        _ => start_cluster_target(backend, ttl).await?,
    })
}

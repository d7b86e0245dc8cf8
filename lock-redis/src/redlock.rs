//! `redlock://h1:p1,h2:p2,…`: the Redlock algorithm over N independent Redis servers. A lock
//! is held when a majority (N/2+1) granted it within its validity (ttl − elapsed − drift);
//! otherwise every instance is released. No fencing token: the instances keep no common
//! counter, so none is offered.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, select_all};
use lock_core::{
    Backend, BoxFuture, Capabilities, Error, ErrorKind, Grant, Guard, Lease, LeaseMonitor,
    LockName, LockOptions, Operation, PendingLease, Result, Supervisors, lease_deadline,
};
use tokio::time::Instant;

use crate::config::Config;
use crate::node::{Node, NodeError};
use crate::notify::Interest;
use crate::scripts::{self, Attempt};
use crate::wait::{check_options, jittered, key_of, next_check};
use lock_core::WaitPlan;

pub(crate) const NAME: &str = "redlock";

/// Redlock needs room for a round of requests to every instance inside the validity.
pub(crate) const MIN_TTL: Duration = Duration::from_millis(100);

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    fencing: false,
    shared: false,
    semaphore: false,
    lease: true,
    renew: true,
    at_least: false,
    notify: true,
    persistent_tokens: false,
    min_ttl: Some(MIN_TTL),
};

/// After a split vote (some instances granted, too few), contenders retry after a random
/// pause of up to this long, so they do not split again.
const SPLIT_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub(crate) struct RedlockBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<Node>,
    quorum: usize,
    prefix: Vec<u8>,
    timeout: Duration,
    /// Starts the guards' renewal supervisors only when due.
    supervisors: Supervisors,
}

/// How one round over every instance went.
#[derive(Default)]
struct Tally {
    yes: usize,
    no: usize,
    errors: Vec<NodeError>,
    /// The shortest remaining time among the instances that said busy.
    min_pttl: Option<i64>,
}

impl Tally {
    fn describe_errors(&self) -> String {
        let list: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        list.join("; ")
    }
}

impl Shared {
    /// How long one instance may take to answer: short against the ttl, so one slow or dead
    /// instance cannot eat the validity (the Redlock paper's advice).
    fn per_node_timeout(&self, ttl: Duration) -> Duration {
        self.timeout.min((ttl / 10).max(Duration::from_millis(5)))
    }

    async fn release_all(&self, key: &[u8], token: &str, ttl: Duration) -> Tally {
        let timeout = self.per_node_timeout(ttl).max(Duration::from_millis(50));
        let outcomes = join_all(
            self.nodes
                .iter()
                .map(|n| scripts::release(n, None, key, token, timeout)),
        )
        .await;
        tally(outcomes)
    }

    /// The outcome of an extend or release round: ours on a quorum, certainly not ours (too
    /// few could still say yes), or unknown.
    fn verdict(&self, t: Tally, op: Operation, name: &LockName) -> Result<bool> {
        if t.yes >= self.quorum {
            Ok(true)
        } else if t.yes + t.errors.len() < self.quorum {
            Ok(false)
        } else {
            Err(Error::new(
                ErrorKind::Connection,
                NAME,
                op,
                format!(
                    "{} of lock {:?}: confirmed by {} of {} instances, quorum {}; {}",
                    op.as_str(),
                    name.as_str(),
                    t.yes,
                    self.nodes.len(),
                    self.quorum,
                    t.describe_errors()
                ),
            ))
        }
    }
}

fn tally(outcomes: Vec<std::result::Result<bool, NodeError>>) -> Tally {
    let mut t = Tally::default();
    for o in outcomes {
        match o {
            Ok(true) => t.yes += 1,
            Ok(false) => t.no += 1,
            Err(e) => t.errors.push(e),
        }
    }
    t
}

impl RedlockBackend {
    /// Connects to every instance; a majority must answer.
    pub async fn connect(config: Config) -> Result<RedlockBackend> {
        let nodes: Vec<Node> = config.endpoints.into_iter().map(Node::new).collect();
        let quorum = nodes.len() / 2 + 1;
        let outcomes = join_all(nodes.iter().map(|n| n.link())).await;
        let failures: Vec<NodeError> = outcomes.into_iter().filter_map(|o| o.err()).collect();
        // Every instance refusing for the same reason (TLS, authentication) says so in the
        // kind; otherwise an unreachable quorum is a connection failure.
        let kind = match failures.first().map(NodeError::kind) {
            Some(k) if failures.iter().all(|e| e.kind() == k) => k,
            _ => ErrorKind::Connection,
        };
        let errors: Vec<String> = failures.iter().map(ToString::to_string).collect();
        if nodes.len() - errors.len() < quorum {
            return Err(Error::new(
                kind,
                NAME,
                Operation::Connect,
                format!(
                    "only {} of {} Redis instances are reachable; Redlock needs {quorum}: {}",
                    nodes.len() - errors.len(),
                    nodes.len(),
                    errors.join("; ")
                ),
            ));
        }
        for e in &errors {
            tracing::warn!(error = %e, "a Redlock instance is unreachable; continuing with a quorum");
        }
        Ok(RedlockBackend {
            shared: Arc::new(Shared {
                nodes,
                quorum,
                prefix: config.prefix,
                timeout: config.timeout,
                supervisors: Supervisors::new(),
            }),
        })
    }

    /// One round: ask every instance at once.
    async fn try_all(&self, key: &[u8], token: &str, ttl: Duration) -> Tally {
        let shared = &self.shared;
        let timeout = shared.per_node_timeout(ttl);
        let outcomes = join_all(shared.nodes.iter().map(|n| async move {
            let link = match tokio::time::timeout(timeout, n.link()).await {
                Ok(link) => link?,
                Err(_) => {
                    return Err(NodeError::Timeout {
                        addr: n.label.clone(),
                        after: timeout,
                    });
                }
            };
            scripts::acquire(n, &link, key, None, token, ttl, timeout).await
        }))
        .await;
        let mut t = Tally::default();
        for o in outcomes {
            match o {
                Ok(Attempt::Granted { .. }) => t.yes += 1,
                Ok(Attempt::Busy { pttl_ms }) => {
                    t.no += 1;
                    t.min_pttl = Some(t.min_pttl.map_or(pttl_ms, |m| m.min(pttl_ms)));
                }
                Err(e) => t.errors.push(e),
            }
        }
        t
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        // Redlock has no shared mode and no semaphore (see the README).
        check_options(NAME, &CAPABILITIES, opts, MIN_TTL)?;
        let shared = &self.shared;
        let n = shared.nodes.len();
        let plan = WaitPlan::new(opts);
        let ttl = opts.ttl();
        let key = key_of(&shared.prefix, name);
        let mut interests: Vec<Interest> = if plan.may_wait() {
            shared
                .nodes
                .iter()
                .map(|n| n.notifier.interest(&key))
                .collect()
        } else {
            Vec::new()
        };
        loop {
            let _ = join_all(interests.iter().map(Interest::subscribe)).await;
            interests.iter_mut().for_each(Interest::mark_seen);
            let token = lock_core::unique_hex();
            let lease = Arc::new(RedlockLease {
                shared: Arc::clone(shared),
                name: name.clone(),
                key: key.clone(),
                token: token.clone(),
                ttl,
            });
            // Dropped armed (the caller gave up mid-round), it releases the attempt's token
            // on every instance in the background.
            let pending = PendingLease::new(lease);
            let sent = Instant::now();
            let t = self.try_all(&key, &token, ttl).await;
            let valid_until = lease_deadline(sent, ttl);
            if t.yes >= shared.quorum && Instant::now() < valid_until {
                // No await from here to `Guard::new`.
                return Ok(Guard::new(
                    Grant {
                        name: name.clone(),
                        backend: NAME,
                        token: None,
                        lease: pending.into_lease(),
                        monitor: LeaseMonitor::new(name, NAME, Some(valid_until)),
                        requested_at: plan.requested_at,
                    },
                    opts,
                ));
            }
            // Not a quorum in time: give back what was granted, everywhere.
            if t.yes > 0 || !t.errors.is_empty() {
                shared.release_all(&key, &token, ttl).await;
            }
            pending.disarm();
            if t.yes + t.no < shared.quorum {
                return Err(Error::new(
                    ErrorKind::Connection,
                    NAME,
                    Operation::Acquire,
                    format!(
                        "lock {:?}: only {} of {n} Redis instances answered; Redlock needs {}: {}",
                        name.as_str(),
                        t.yes + t.no,
                        shared.quorum,
                        t.describe_errors()
                    ),
                ));
            }
            let now = Instant::now();
            if plan.expired(now) {
                let detail = format!(
                    " (granted by {} of {n} instances, quorum {})",
                    t.yes, shared.quorum
                );
                return Err(plan.busy_error(NAME, name, &detail));
            }
            let split = t.yes > 0;
            let wake = if split {
                now + jittered(SPLIT_BACKOFF / 2, 1.0)
            } else {
                next_check(now, t.min_pttl.unwrap_or(-1))
            };
            let wake = plan.cap(wake);
            if split || interests.is_empty() {
                tokio::time::sleep_until(wake).await;
            } else {
                let changed = select_all(interests.iter_mut().map(|i| Box::pin(i.changed())));
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        }
    }
}

impl Backend for RedlockBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(NAME, name, opts, self.acquire_inner(name, opts))
    }
}

/// A grant held on a quorum of instances.
struct RedlockLease {
    shared: Arc<Shared>,
    name: LockName,
    key: Vec<u8>,
    token: String,
    ttl: Duration,
}

impl RedlockLease {
    async fn touch(&self, ttl: Duration, notify: bool, op: Operation) -> Result<bool> {
        let shared = &self.shared;
        let timeout = shared
            .per_node_timeout(self.ttl)
            .max(Duration::from_millis(50));
        let outcomes = join_all(
            shared
                .nodes
                .iter()
                .map(|n| scripts::touch(n, &self.key, &self.token, ttl, notify, timeout)),
        )
        .await;
        shared.verdict(tally(outcomes), op, &self.name)
    }
}

impl Lease for RedlockLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.shared.supervisors)
    }

    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(ttl, false, Operation::Extend))
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let t = self
                .shared
                .release_all(&self.key, &self.token, self.ttl)
                .await;
            self.shared.verdict(t, Operation::Release, &self.name)
        })
    }

    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(keep, true, Operation::Release))
    }
}

//! `redis://`: one Redis server. `SET key token NX PX ttl` plus a fencing counter in one
//! script; token-checked Lua release and extend; waiters woken by pub/sub.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    Backend, BoxFuture, Capabilities, Error, ErrorKind, FencingToken, Grant, Guard, Lease,
    LeaseMonitor, LockMode, LockName, LockOptions, Operation, Result, Supervisors, lease_deadline,
};
use tokio::time::Instant;

use crate::config::Config;
use crate::node::{Link, Node};
use crate::scripts::{self, Attempt, FenceSlot};
use crate::wait::{check_options, key_of, next_check};
use lock_core::WaitPlan;

pub(crate) const NAME: &str = "redis";

/// The smallest ttl accepted: below it a renewal every ttl/3 and the drift allowance leave
/// no room for a round trip.
pub(crate) const MIN_TTL: Duration = Duration::from_millis(20);

pub(crate) const CAPABILITIES: Capabilities = Capabilities {
    fencing: true,
    shared: true,
    semaphore: true,
    lease: true,
    renew: true,
    at_least: false,
    notify: true,
    // Only as durable as the server's data: a restart without persistence loses the counter
    // (tokens then continue from the server clock, see the README).
    persistent_tokens: false,
    min_ttl: Some(MIN_TTL),
};

/// The single-instance backend.
#[derive(Debug)]
pub(crate) struct RedisBackend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node: Node,
    /// Lock keys are `prefix ++ name`; the prefix itself names the hash of fencing counters
    /// (no lock key can equal it, since names are never empty).
    pub(crate) prefix: Vec<u8>,
    pub(crate) timeout: Duration,
    /// Whether grants carry a fencing token (`fencing=off`: the acquire script skips the
    /// counter).
    pub(crate) fencing: bool,
    /// Starts the guards' renewal supervisors only when due.
    pub(crate) supervisors: Supervisors,
}

impl RedisBackend {
    /// Connects (one command connection, opened now so a bad address fails early).
    pub async fn connect(config: Config) -> Result<RedisBackend> {
        let endpoint = config.endpoints.into_iter().next().ok_or_else(|| {
            Error::invalid_url(NAME, "no Redis host given (expected redis://host:port)")
        })?;
        let node = Node::new(endpoint);
        node.link().await.map_err(|e| {
            let what = format!("cannot connect to Redis at {}", node.label);
            e.into_error(NAME, Operation::Connect, what)
        })?;
        Ok(RedisBackend {
            shared: Arc::new(Shared {
                node,
                prefix: config.prefix,
                timeout: config.timeout,
                fencing: config.fencing,
                supervisors: Supervisors::new(),
            }),
        })
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        check_options(NAME, &CAPABILITIES, opts, MIN_TTL)?;
        let shared = &self.shared;
        if let Some(limit) = opts.permits() {
            return crate::multi::acquire_permit(shared, name, opts, limit).await;
        }
        if opts.mode() == LockMode::Shared {
            return crate::multi::acquire_shared(shared, name, opts).await;
        }
        let node = &shared.node;
        let plan = WaitPlan::new(opts);
        let ttl = opts.ttl();
        let key = key_of(&shared.prefix, name);
        let failed = |e: crate::node::NodeError| {
            e.into_error(
                NAME,
                Operation::Acquire,
                format!("acquiring lock {:?}", name.as_str()),
            )
        };
        // Registered before the first try, so a release between the try and the wait is seen.
        let mut interest = plan.may_wait().then(|| node.notifier.interest(&key));
        // While this writer waits, new readers wait behind it (writer preference).
        let mut wish = WriterWish {
            shared: Arc::clone(shared),
            key: key.clone(),
            id: lock_core::unique_hex(),
            marked: false,
        };
        loop {
            if let Some(interest) = interest.as_mut() {
                if let Err(e) = interest.subscribe().await {
                    tracing::debug!(redis = %node.label, error = %e, "no pub/sub; waiting on the fallback timer");
                }
                interest.mark_seen();
            }
            let link = node.link().await.map_err(failed)?;
            let token = lock_core::unique_hex();
            // From here until the reply is read, dropping this future must not leave the lock
            // behind: `pending` releases it (token-checked) unless disarmed.
            let pending = Pending {
                shared: Arc::clone(shared),
                link: link.clone(),
                key: key.clone(),
                token: token.clone(),
                armed: true,
            };
            let fence = shared.fencing.then(|| FenceSlot::of(&shared.prefix, name));
            let sent = Instant::now();
            let reply = scripts::acquire(
                node,
                &link,
                &key,
                fence,
                &token,
                ttl,
                shared.timeout.min(ttl),
            )
            .await
            .map_err(failed)?;
            match reply {
                Attempt::Granted { fence } => {
                    let valid_until = lease_deadline(sent, ttl);
                    if Instant::now() >= valid_until {
                        // `pending` gives the useless grant back.
                        return Err(Error::new(
                            ErrorKind::Connection,
                            NAME,
                            Operation::Acquire,
                            format!(
                                "lock {:?}: the grant arrived after its {ttl:?} lease had run out",
                                name.as_str()
                            ),
                        ));
                    }
                    // A writer that waited withdraws its wish now, so readers are not held
                    // back by it once it releases (dropped here, `pending` gives the grant
                    // back and the wish goes from the background).
                    wish.withdraw().await;
                    pending.disarm();
                    // No await from here to `Guard::new`.
                    let lease = Arc::new(RedisLease {
                        shared: Arc::clone(shared),
                        name: name.clone(),
                        key,
                        token,
                    });
                    return Ok(Guard::new(
                        Grant {
                            name: name.clone(),
                            backend: NAME,
                            token: fence.map(FencingToken::new),
                            lease,
                            monitor: LeaseMonitor::new(name, NAME, Some(valid_until)),
                            requested_at: plan.requested_at,
                        },
                        opts,
                    ));
                }
                Attempt::Busy { pttl_ms } => {
                    pending.disarm();
                    let now = Instant::now();
                    if plan.expired(now) {
                        wish.withdraw().await;
                        let detail = if pttl_ms >= 0 {
                            format!(" (its lease has {pttl_ms} ms left)")
                        } else {
                            " (its key has no expiry)".to_string()
                        };
                        return Err(plan.busy_error(NAME, name, &detail));
                    }
                    wish.renew().await;
                    let wake = plan.cap(next_check(now, pttl_ms));
                    match interest.as_mut() {
                        Some(interest) => tokio::select! {
                            _ = interest.changed() => {}
                            _ = tokio::time::sleep_until(wake) => {}
                        },
                        None => tokio::time::sleep_until(wake).await,
                    }
                }
            }
        }
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: self.shared.fencing,
            ..CAPABILITIES
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(NAME, name, opts, self.acquire_inner(name, opts))
    }
}

/// An acquisition whose reply has not been read. Dropped armed (the caller gave up, or the
/// reply was useless), it releases the lock in the background on the same connection, where
/// the release is queued behind the acquisition; the release is token-checked, so it never
/// touches anyone else's lock.
/// (Not `lock_core::PendingLease`: that one releases through `RedisLease::release`, on
/// whatever connection is current, which could overtake the acquisition still in flight.)
struct Pending {
    shared: Arc<Shared>,
    link: Link,
    key: Vec<u8>,
    token: String,
    armed: bool,
}

impl Pending {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let link = self.link.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        rt.spawn(async move {
            let node = &shared.node;
            let r = scripts::release(node, Some(&link), &key, &token, shared.timeout).await;
            tracing::debug!(redis = %node.label, outcome = ?r.map_err(|e| e.to_string()), "released an abandoned acquisition");
        });
    }
}

/// A waiting writer's wish (see `multi.rs`): marked while it waits, withdrawn when it gives
/// up, and in the background when the acquisition ends otherwise (granted, or dropped).
struct WriterWish {
    shared: Arc<Shared>,
    key: Vec<u8>,
    id: String,
    marked: bool,
}

impl WriterWish {
    async fn renew(&mut self) {
        let ms = crate::multi::WRITER_WISH.as_millis() as u64;
        let s = &self.shared;
        match crate::multi_scripts::writer_waits(&s.node, &self.key, &self.id, ms, s.timeout).await
        {
            Ok(()) => self.marked = true,
            Err(e) => tracing::debug!(error = %e, "could not mark a waiting writer"),
        }
    }

    async fn withdraw(&mut self) {
        if self.marked {
            let s = &self.shared;
            let _ = crate::multi_scripts::writer_waits(&s.node, &self.key, &self.id, 0, s.timeout)
                .await;
            self.marked = false;
        }
    }
}

impl Drop for WriterWish {
    fn drop(&mut self) {
        if !self.marked {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let (key, id) = (std::mem::take(&mut self.key), std::mem::take(&mut self.id));
        rt.spawn(async move {
            let _ = crate::multi_scripts::writer_waits(&shared.node, &key, &id, 0, shared.timeout)
                .await;
        });
    }
}

/// One grant on one server.
struct RedisLease {
    shared: Arc<Shared>,
    name: LockName,
    key: Vec<u8>,
    token: String,
}

impl RedisLease {
    fn error(&self, op: Operation, e: crate::node::NodeError) -> Error {
        let what = format!("{} of lock {:?}", op.as_str(), self.name.as_str());
        e.into_error(NAME, op, what)
    }

    async fn touch(&self, ttl: Duration, notify: bool) -> Result<bool> {
        let timeout = self.shared.timeout.min(ttl);
        scripts::touch(
            &self.shared.node,
            &self.key,
            &self.token,
            ttl,
            notify,
            timeout,
        )
        .await
        .map_err(|e| self.error(Operation::Extend, e))
    }
}

impl Lease for RedisLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.shared.supervisors)
    }

    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(ttl, false))
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let shared = &self.shared;
            scripts::release(&shared.node, None, &self.key, &self.token, shared.timeout)
                .await
                .map_err(|e| self.error(Operation::Release, e))
        })
    }

    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        // Shortens the lease to what `at_least` leaves and tells the waiters, who then wait
        // for the new expiry.
        Box::pin(async move {
            self.touch(keep, true)
                .await
                .map_err(|e| e.in_operation(Operation::Release))
        })
    }
}

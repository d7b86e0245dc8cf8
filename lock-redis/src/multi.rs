//! Shared (reader) grants and semaphore permits on one Redis server (layouts and scripts in
//! `multi_scripts.rs`). Each is a lease like the exclusive lock's: renewed every ttl/3,
//! released or expired by the server's clock, waiters woken by pub/sub on the lock's (or the
//! semaphore's) channel, with the same fallback re-check.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    Error, ErrorKind, FencingToken, Grant, Guard, Lease, LeaseMonitor, LockName, LockOptions,
    Operation, Result, Supervisors, WaitPlan, lease_deadline,
};
use tokio::time::Instant;

use crate::backend::{NAME, Shared};
use crate::multi_scripts::{self as ms, Got, sub_key};
use crate::node::{Link, NodeError};
use crate::wait::{key_of, next_check};

/// How long a waiting writer's wish lasts unless renewed (every pass of its wait, at least
/// every 1.2 s): readers are refused meanwhile, and at most this long after a writer vanished.
pub(crate) const WRITER_WISH: Duration = Duration::from_secs(3);

/// What is being asked for.
enum Ask {
    Reader { key: Vec<u8> },
    Permit { sem: Vec<u8>, limit: u32 },
}

/// The semaphore key of `name`: the lock key ++ `\0s`.
pub(crate) fn semaphore_key(prefix: &[u8], name: &LockName) -> Vec<u8> {
    sub_key(&key_of(prefix, name), b"s")
}

/// A shared grant of `name`.
pub(crate) async fn acquire_shared(
    shared: &Arc<Shared>,
    name: &LockName,
    opts: &LockOptions,
) -> Result<Guard> {
    let key = key_of(&shared.prefix, name);
    acquire(shared, name, opts, Ask::Reader { key }).await
}

/// A permit of the semaphore `name` with the caller's `limit`.
pub(crate) async fn acquire_permit(
    shared: &Arc<Shared>,
    name: &LockName,
    opts: &LockOptions,
    limit: u32,
) -> Result<Guard> {
    let sem = semaphore_key(&shared.prefix, name);
    acquire(shared, name, opts, Ask::Permit { sem, limit }).await
}

async fn acquire(
    shared: &Arc<Shared>,
    name: &LockName,
    opts: &LockOptions,
    ask: Ask,
) -> Result<Guard> {
    let node = &shared.node;
    let plan = WaitPlan::new(opts);
    let ttl = opts.ttl();
    let failed = |e: NodeError| {
        e.into_error(
            NAME,
            Operation::Acquire,
            format!("acquiring {:?}", name.as_str()),
        )
    };
    let channel = match &ask {
        Ask::Reader { key } => key.clone(),
        Ask::Permit { sem, .. } => sem.clone(),
    };
    let mut interest = plan.may_wait().then(|| node.notifier.interest(&channel));
    let field = {
        let mut f = name.as_bytes().to_vec();
        f.push(0);
        f
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
        let pending = Undo {
            shared: Arc::clone(shared),
            link: link.clone(),
            channel: channel.clone(),
            reader: matches!(ask, Ask::Reader { .. }),
            token: token.clone(),
            armed: true,
        };
        let sent = Instant::now();
        let timeout = shared.timeout.min(ttl);
        let got = match &ask {
            Ask::Reader { key } => ms::read_acquire(node, &link, key, &token, ttl, timeout).await,
            Ask::Permit { sem, limit } => {
                let fence = shared
                    .fencing
                    .then_some((shared.prefix.as_slice(), field.as_slice()));
                ms::permit_acquire(node, &link, sem, fence, &token, ttl, *limit, timeout).await
            }
        }
        .map_err(failed)?;
        match got {
            Got::Granted { slot, fence } => {
                let valid_until = lease_deadline(sent, ttl);
                if Instant::now() >= valid_until {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        NAME,
                        Operation::Acquire,
                        format!(
                            "{:?}: the grant arrived after its {ttl:?} lease had run out",
                            name.as_str()
                        ),
                    ));
                }
                pending.disarm();
                let (held, fence) = match ask {
                    Ask::Reader { key } => (Held::Reader { key }, None),
                    Ask::Permit { sem, .. } => (
                        Held::Permit { sem, slot },
                        (shared.fencing && fence > 0).then(|| FencingToken::new(fence)),
                    ),
                };
                let lease: Arc<dyn Lease> = Arc::new(MultiLease {
                    shared: Arc::clone(shared),
                    name: name.clone(),
                    held,
                    token,
                });
                return Ok(Guard::new(
                    Grant {
                        name: name.clone(),
                        backend: NAME,
                        token: fence,
                        lease,
                        monitor: LeaseMonitor::new(name, NAME, Some(valid_until)),
                        requested_at: plan.requested_at,
                    },
                    opts,
                ));
            }
            Got::Busy {
                pttl_ms,
                writer_waits,
            } => {
                pending.disarm();
                let now = Instant::now();
                if plan.expired(now) {
                    let detail = match (&ask, writer_waits) {
                        (Ask::Reader { .. }, true) => " (a writer is waiting for it)".to_string(),
                        (Ask::Reader { .. }, false) => " (a writer holds it)".to_string(),
                        (Ask::Permit { limit, .. }, _) => {
                            format!(" (all {limit} permits of the semaphore are held)")
                        }
                    };
                    return Err(plan.busy_error(NAME, name, &detail));
                }
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

/// An attempt whose reply has not been read: dropped armed, it gives the grant back on the
/// same connection (token-checked, so it never touches another holder's).
struct Undo {
    shared: Arc<Shared>,
    link: Link,
    /// The lock key (reader) or the semaphore key (permit).
    channel: Vec<u8>,
    reader: bool,
    token: String,
    armed: bool,
}

impl Undo {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, link) = (Arc::clone(&self.shared), self.link.clone());
        let (key, token, reader) = (
            std::mem::take(&mut self.channel),
            std::mem::take(&mut self.token),
            self.reader,
        );
        rt.spawn(async move {
            let (node, t) = (&shared.node, shared.timeout);
            let r = if reader {
                ms::read_touch(node, Some(&link), &key, &token, t, true, t).await
            } else {
                ms::permit_touch(node, Some(&link), &key, &token, None, t, true, t).await
            };
            tracing::debug!(redis = %node.label, outcome = ?r.map_err(|e| e.to_string()), "gave back an abandoned grant");
        });
    }
}

/// What a [`MultiLease`] holds.
enum Held {
    /// A reader of the lock key `key`.
    Reader { key: Vec<u8> },
    /// Slot `slot` of the semaphore key `sem`.
    Permit { sem: Vec<u8>, slot: u32 },
}

/// A reader's grant or a permit: renewed, released or shortened by its token-checked script.
struct MultiLease {
    shared: Arc<Shared>,
    name: LockName,
    held: Held,
    token: String,
}

impl MultiLease {
    async fn touch(&self, ttl: Duration, release: bool, op: Operation) -> Result<bool> {
        let (node, t) = (&self.shared.node, self.shared.timeout.min(ttl));
        let token = &self.token;
        let done = match &self.held {
            Held::Reader { key } => ms::read_touch(node, None, key, token, ttl, release, t).await,
            Held::Permit { sem, slot } => {
                ms::permit_touch(node, None, sem, token, Some(*slot), ttl, release, t).await
            }
        };
        done.map_err(|e| {
            let what = match &self.held {
                Held::Reader { .. } => format!("shared lock {:?}", self.name.as_str()),
                Held::Permit { slot, .. } => {
                    format!("permit {slot} of semaphore {:?}", self.name.as_str())
                }
            };
            e.into_error(NAME, op, format!("{} of {what}", op.as_str()))
        })
    }
}

impl Lease for MultiLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.shared.supervisors)
    }

    fn extend(&self, ttl: Duration) -> lock_core::BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(ttl, false, Operation::Extend))
    }

    fn release(&self) -> lock_core::BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(self.shared.timeout, true, Operation::Release))
    }

    /// `at_least`: the grant stays for `keep` more, then expires.
    fn release_after(&self, keep: Duration) -> lock_core::BoxFuture<'_, Result<bool>> {
        Box::pin(self.touch(keep, false, Operation::Release))
    }

    fn slot(&self) -> Option<u32> {
        match self.held {
            Held::Permit { slot, .. } => Some(slot),
            Held::Reader { .. } => None,
        }
    }
}

//! Acquiring: take a lease, queue a key under it, and either own the lock at once, give up
//! (no wait), or wait for our turn. Readers queue the same way, with a recipe reader's key
//! and waiting only for exclusive contenders (see [`crate::layout`]); permits are in
//! [`crate::semaphore`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use lock_core::{
    Error, ErrorKind, FencingToken, Grant, Guard, LeaseMonitor, LockMode, LockName, LockOptions,
    Operation, Result, WaitPlan,
};
use tokio::time::Instant;

use crate::NAME;
use crate::backend::{EtcdBackend, Inner};
use crate::error::{call, retry};
use crate::layout::{Role, blocks, contender_key, reader_key, show, writer_key};
use crate::lease::{
    EtcdLease, LeaseHandle, keep_alive, lock_pool, renewal_limit, revoke_in_background,
};
use crate::wait::{Place, Turn, wait_turn};

/// How often an acquisition starts over because its key vanished while it waited (its lease
/// expired, or someone deleted it) before it gives up.
const MAX_REQUEUES: usize = 3;

pub(crate) async fn acquire(
    backend: &EtcdBackend,
    name: &LockName,
    opts: &LockOptions,
) -> Result<Guard> {
    acquire_inner(backend, name, opts).await
}

async fn acquire_inner(
    backend: &EtcdBackend,
    name: &LockName,
    opts: &LockOptions,
) -> Result<Guard> {
    opts.check_for(NAME, &EtcdBackend::CAPABILITIES)?;
    if let Some(limit) = opts.permits() {
        return crate::semaphore::acquire(backend, name, opts, limit).await;
    }
    let role = match opts.mode() {
        LockMode::Exclusive => Role::Exclusive,
        LockMode::Shared => Role::Reader,
    };
    let secs = backend.lease_secs(opts.ttl())?;
    let inner = &backend.inner;
    let plan = WaitPlan::new(opts);
    let (requested_at, deadline) = (plan.requested_at, plan.deadline);
    let try_only = deadline == Some(requested_at);
    let prefix = backend.key_prefix(name);
    // Connection failures (a member down, an election) are retried (see retry_until).
    let rt = inner.config.request_timeout;
    let retry_until = || crate::wait::retry_until(deadline, rt);
    for _ in 0..=MAX_REQUEUES {
        let mut lease = retry(retry_until(), || take_lease(inner, secs, opts.ttl())).await?;
        // From here until the guard exists, a drop (cancellation, error) revokes the lease,
        // which deletes whatever key we queued under it.
        let mut pending = Pending {
            inner,
            lease: Some(lease.id),
        };
        let named_by_lease = role == Role::Exclusive && !inner.config.rwmutex_writers;
        let key = match role {
            Role::Exclusive if named_by_lease => contender_key(&prefix, lease.id),
            Role::Exclusive => writer_key(&prefix),
            Role::Reader => reader_key(&prefix),
        };
        let contended = || {
            Error::new(
                ErrorKind::Contended,
                NAME,
                Operation::Acquire,
                format!("lock {:?} is held by someone else", name.as_str()),
            )
        };
        let mut queued = None;
        if try_only && role == Role::Exclusive {
            // Put our key only if the lock has no contender at all: a busy lock then costs
            // no write and no withdrawal.
            match retry(retry_until(), || {
                take_if_free(inner, &prefix, &key, lease.id)
            })
            .await?
            {
                Free::Taken(revision) => {
                    queued = Some(Queued {
                        revision,
                        owner: true,
                    })
                }
                Free::Held => {
                    pending.lease = None;
                    lock_pool(inner).put(lease);
                    return Err(contended());
                }
                // Only keys of nested locks (`NAME/…/…`) in the way: queue the usual way.
                Free::Unsure => {}
            }
        }
        let queued = match queued {
            Some(q) => q,
            // Idempotent: a retry after a lost answer finds our key and adopts its revision.
            None => match retry(retry_until(), || {
                enqueue(inner, &prefix, &key, lease.id, role)
            })
            .await?
            {
                Some(q) => q,
                // Another process's reader key of the same nanosecond: a new key.
                None => continue,
            },
        };
        if !queued.owner {
            if try_only {
                withdraw(&mut pending, &key, queued.revision, lease).await;
                return Err(contended());
            }
            let place = Place {
                prefix: &prefix,
                key: &key,
                revision: queued.revision,
                role,
            };
            match wait_turn(inner, place, &mut lease, opts.ttl(), deadline).await? {
                Turn::Ours => {}
                Turn::Vanished => {
                    tracing::warn!(lock = %name, key = %show(&key), "our queue key vanished while waiting (lease expired?); queueing again");
                    continue;
                }
                Turn::TimedOut => {
                    withdraw(&mut pending, &key, queued.revision, lease).await;
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        NAME,
                        Operation::Acquire,
                        format!(
                            "lock {:?} was still held when the wait of {:?} ran out",
                            name.as_str(),
                            deadline.map(|d| d - requested_at).unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        // Granted. Nothing below awaits: the grant and the guard are one step.
        pending.lease = None;
        let monitor = LeaseMonitor::new(name, NAME, Some(lease.deadline(opts.ttl())));
        let held = Arc::new(EtcdLease {
            inner: Arc::clone(inner),
            key,
            revision: queued.revision,
            lease: Mutex::new(lease),
            named_by_lease,
            slot: None,
        });
        // Readers hold together: a token would fence the others out (lock-core's rule).
        let token =
            (role == Role::Exclusive).then(|| FencingToken::new(queued.revision.unsigned_abs()));
        return Ok(Guard::new(
            Grant {
                name: name.clone(),
                backend: NAME,
                token,
                lease: held,
                monitor,
                requested_at,
            },
            opts,
        ));
    }
    Err(Error::new(
        ErrorKind::Backend,
        NAME,
        Operation::Acquire,
        format!(
            "lock {:?}: our queue key vanished {} times while waiting (is this process being \
             paused past its ttl, or is something deleting keys under {:?}?)",
            name.as_str(),
            MAX_REQUEUES + 1,
            show(&prefix)
        ),
    ))
}

/// Revokes the lease of an acquisition that did not complete, unless disarmed.
pub(crate) struct Pending<'a> {
    pub inner: &'a Arc<Inner>,
    pub lease: Option<i64>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.lease.take() {
            revoke_in_background(self.inner, id);
        }
    }
}

/// Takes our key out of the queue (contended, timed out). On success the lease is pooled;
/// otherwise the pending guard revokes it.
pub(crate) async fn withdraw(
    pending: &mut Pending<'_>,
    key: &[u8],
    revision: i64,
    lease: LeaseHandle,
) {
    let inner = pending.inner;
    let txn = Txn::new()
        .when([Compare::create_revision(
            key.to_vec(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::delete(key.to_vec(), None)]);
    let mut kv = inner.client.kv_client();
    if let Ok(resp) = call(
        Operation::Acquire,
        "withdrawing from the queue",
        inner.config.request_timeout,
        kv.txn(txn),
    )
    .await
    {
        if resp.succeeded() {
            pending.lease = None;
            lock_pool(inner).put(lease);
        }
    }
}

/// A pooled lease that is fresh enough, or a new one.
pub(crate) async fn take_lease(
    inner: &Arc<Inner>,
    secs: i64,
    ttl: Duration,
) -> Result<LeaseHandle> {
    loop {
        let pooled = lock_pool(inner).take(secs);
        let Some(mut lease) = pooled else { break };
        let age = lease.acked_sent.elapsed();
        if age <= ttl / 3 {
            return Ok(lease);
        }
        if age < ttl / 2 {
            let sent = Instant::now();
            let limit = renewal_limit(ttl, inner.config.request_timeout);
            if let Ok(true) = keep_alive(inner, lease.id, limit, Operation::Acquire).await {
                lease.acked_sent = sent;
                return Ok(lease);
            }
        }
        // Too old to trust: it expires on its own (it has no key).
    }
    let sent = Instant::now();
    let mut leases = inner.client.lease_client();
    let granted = call(
        Operation::Acquire,
        "granting a lease",
        inner.config.request_timeout,
        leases.grant(secs, None),
    )
    .await?;
    if granted.ttl() > secs {
        // The server's minimum went up since we connected (it was reconfigured).
        revoke_in_background(inner, granted.id());
        return Err(Error::new(
            ErrorKind::InvalidOptions,
            NAME,
            Operation::Validate,
            format!(
                "ttl {ttl:?} is below this etcd server's minimum lease TTL of {} s",
                granted.ttl()
            ),
        ));
    }
    Ok(LeaseHandle {
        id: granted.id(),
        secs: granted.ttl(),
        acked_sent: sent,
    })
}

struct Queued {
    /// Our key's create revision: the fencing token if we get the lock.
    revision: i64,
    /// Whether our key is the oldest contender.
    owner: bool,
}

enum Free {
    /// The lock had no key at all; ours is in, with this create revision.
    Taken(i64),
    /// A contender of this lock holds it.
    Held,
    /// Only keys of nested locks were found; nothing was written.
    Unsure,
}

/// Puts our key if no key exists under the lock's prefix, else reads the oldest one.
async fn take_if_free(inner: &Inner, prefix: &[u8], key: &[u8], lease: i64) -> Result<Free> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    let txn = Txn::new()
        .when([Compare::create_revision(prefix.to_vec(), CompareOp::Equal, 0).with_prefix()])
        .and_then([TxnOp::put(
            key.to_vec(),
            "",
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(prefix.to_vec(), Some(oldest))]);
    let mut kv = inner.client.kv_client();
    let resp = call(
        Operation::Acquire,
        &format!(
            "taking the lock (keys under {:?})",
            String::from_utf8_lossy(prefix)
        ),
        inner.config.request_timeout,
        kv.txn(txn),
    )
    .await?;
    if resp.succeeded() {
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if revision <= 0 {
            return Err(protocol_error("the txn returned no revision for our key"));
        }
        return Ok(Free::Taken(revision));
    }
    match first_kv(resp.op_responses().first()) {
        // A retried request whose first try had gone through (and found the lock free).
        Some(kv) if kv.key() == key => Ok(Free::Taken(kv.create_revision())),
        Some(kv) if blocks(prefix, kv.key(), Role::Exclusive) => Ok(Free::Held),
        _ => Ok(Free::Unsure),
    }
}

/// Puts our key (if absent) and reads the oldest key, in one txn (etcd's `Mutex.tryAcquire`);
/// `None` when the key exists under another lease (a reader key of the same nanosecond).
async fn enqueue(
    inner: &Inner,
    prefix: &[u8],
    key: &[u8],
    lease: i64,
    role: Role,
) -> Result<Option<Queued>> {
    let oldest = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1)
        .with_keys_only();
    let txn = Txn::new()
        .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(key.to_vec(), "", Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(prefix.to_vec(), Some(oldest.clone())),
        ])
        .or_else([
            TxnOp::get(key.to_vec(), None),
            TxnOp::get(prefix.to_vec(), Some(oldest)),
        ]);
    let mut kv = inner.client.kv_client();
    let resp = call(
        Operation::Acquire,
        &format!(
            "queueing the lock key (keys under {:?})",
            String::from_utf8_lossy(prefix)
        ),
        inner.config.request_timeout,
        kv.txn(txn),
    )
    .await?;
    let ops = resp.op_responses();
    let revision = if resp.succeeded() {
        resp.header().map(|h| h.revision()).unwrap_or_default()
    } else {
        // Already there: a retried request that had gone through, or someone else's.
        match first_kv(ops.first()) {
            Some(kv) if kv.lease() != lease => return Ok(None),
            kv => kv.map(|kv| kv.create_revision()).unwrap_or_default(),
        }
    };
    if revision <= 0 {
        return Err(protocol_error(
            "the queueing txn returned no revision for our key",
        ));
    }
    let owner = match first_kv(ops.get(1)) {
        Some(kv) if kv.create_revision() == revision => true,
        Some(kv) if blocks(prefix, kv.key(), role) => false,
        // A nested lock (`NAME/sub`) shares the prefix, and readers let readers by: look at
        // the keys that block us only.
        _ => contender_scan(inner, prefix, Some(revision), role)
            .await?
            .is_none(),
    };
    Ok(Some(Queued { revision, owner }))
}

pub(crate) fn first_kv(op: Option<&TxnOpResponse>) -> Option<&KeyValue> {
    match op {
        Some(TxnOpResponse::Get(get)) => get.kvs().first(),
        _ => None,
    }
}

/// The key of the lock at `prefix` that blocks `role` (ignoring nested locks, and readers for
/// a reader) with the lowest create revision, or with `below` set, the highest create
/// revision below it.
pub(crate) async fn contender_scan(
    inner: &Inner,
    prefix: &[u8],
    below: Option<i64>,
    role: Role,
) -> Result<Option<KeyValue>> {
    let mut opts = GetOptions::new().with_prefix().with_keys_only();
    opts = match below {
        None => opts.with_sort(SortTarget::Create, SortOrder::Ascend),
        Some(rev) => opts
            .with_max_create_revision(rev - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend),
    };
    let mut kv = inner.client.kv_client();
    let mut resp = call(
        Operation::Acquire,
        "listing contenders",
        inner.config.request_timeout,
        kv.get(prefix.to_vec(), Some(opts)),
    )
    .await?;
    Ok(resp
        .take_kvs()
        .into_iter()
        .find(|kv| blocks(prefix, kv.key(), role)))
}

pub(crate) fn protocol_error(message: &str) -> Error {
    Error::new(ErrorKind::Backend, NAME, Operation::Acquire, message)
}

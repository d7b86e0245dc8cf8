//! Permits: a semaphore of `limit` permits is `limit` slot keys (see [`crate::layout`]); a
//! permit is the lowest free slot, created only when absent, under the holder's lease, so a
//! holder that dies frees its slot when its lease expires. Its create revision is the permit's
//! fencing token: etcd's revision only grows, so the tokens of one slot strictly increase.
//!
//! A waiter holds no lease and no key: it lists the slots, and when all it may use are taken,
//! watches the semaphore's key range from that listing's revision for a deletion, then looks
//! again. There is no queue: a freed slot goes to whichever waiter claims it first.

use std::sync::{Arc, Mutex};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use lock_core::{
    Error, ErrorKind, FencingToken, Grant, Guard, LeaseMonitor, LockName, LockOptions, Operation,
    Result, Wait, WaitPlan, sleep_until_opt,
};
use tokio::time::Instant;

use crate::NAME;
use crate::acquire::{Pending, first_kv, take_lease};
use crate::backend::{EtcdBackend, Inner};
use crate::error::{call, from_etcd, retry};
use crate::layout::{semaphore_prefix, slot_key, slot_of};
use crate::lease::{EtcdLease, lock_pool};
use crate::wait::FAILING_FOR;

pub(crate) async fn acquire(
    backend: &EtcdBackend,
    name: &LockName,
    opts: &LockOptions,
    limit: u32,
) -> Result<Guard> {
    let secs = backend.lease_secs(opts.ttl())?;
    let inner = &backend.inner;
    let plan = WaitPlan::new(opts);
    let (requested_at, deadline) = (plan.requested_at, plan.deadline);
    let rt = inner.config.request_timeout;
    let retry_until = || crate::wait::retry_until(deadline, rt);
    let prefix = semaphore_prefix(&inner.config.prefix, name.as_str());
    loop {
        let (held, listed_at) = retry(retry_until(), || held_slots(inner, &prefix)).await?;
        if let Some(slot) = (0..limit).find(|s| !held.contains(s)) {
            let lease = retry(retry_until(), || take_lease(inner, secs, opts.ttl())).await?;
            // Until the guard exists, a drop (cancellation, error) revokes the lease and with
            // it the slot key, if the claim went through.
            let mut pending = Pending {
                inner,
                lease: Some(lease.id),
            };
            let key = slot_key(&prefix, slot);
            match retry(retry_until(), || claim(inner, &key, lease.id)).await? {
                Some(revision) => {
                    pending.lease = None;
                    let monitor = LeaseMonitor::new(name, NAME, Some(lease.deadline(opts.ttl())));
                    let held = Arc::new(EtcdLease {
                        inner: Arc::clone(inner),
                        key,
                        revision,
                        lease: Mutex::new(lease),
                        named_by_lease: false,
                        slot: Some(slot),
                    });
                    return Ok(Guard::new(
                        Grant {
                            name: name.clone(),
                            backend: NAME,
                            token: Some(FencingToken::new(revision.unsigned_abs())),
                            lease: held,
                            monitor,
                            requested_at,
                        },
                        opts,
                    ));
                }
                // Taken since the listing: the lease goes back, and we look again.
                None => {
                    pending.lease = None;
                    lock_pool(inner).put(lease);
                    continue;
                }
            }
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(no_permit(name, limit, opts, requested_at, deadline));
        }
        if !wait_for_release(inner, &prefix, listed_at, deadline).await? {
            return Err(no_permit(name, limit, opts, requested_at, deadline));
        }
    }
}

fn no_permit(
    name: &LockName,
    limit: u32,
    opts: &LockOptions,
    requested_at: Instant,
    deadline: Option<Instant>,
) -> Error {
    if opts.wait() == Wait::No {
        return Error::new(
            ErrorKind::Contended,
            NAME,
            Operation::Acquire,
            format!(
                "semaphore {:?}: all {limit} permits are held",
                name.as_str()
            ),
        );
    }
    Error::new(
        ErrorKind::Timeout,
        NAME,
        Operation::Acquire,
        format!(
            "semaphore {:?}: all {limit} permits were still held when the wait of {:?} ran out",
            name.as_str(),
            deadline.map(|d| d - requested_at).unwrap_or_default()
        ),
    )
}

/// The slots held now, and the revision they were read at.
async fn held_slots(inner: &Inner, prefix: &[u8]) -> Result<(Vec<u32>, i64)> {
    let mut kv = inner.client.kv_client();
    let resp = call(
        Operation::Acquire,
        "listing the semaphore's permits",
        inner.config.request_timeout,
        kv.get(
            prefix.to_vec(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
    let held = resp
        .kvs()
        .iter()
        .filter_map(|kv| slot_of(prefix, kv.key()))
        .collect();
    Ok((held, revision))
}

/// Creates `key` under `lease` if it is absent: its create revision, or `None` when someone
/// else holds the slot. Idempotent: a retry after a lost answer finds the key on our lease.
async fn claim(inner: &Inner, key: &[u8], lease: i64) -> Result<Option<i64>> {
    let txn = Txn::new()
        .when([Compare::create_revision(key.to_vec(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.to_vec(),
            "",
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(
            key.to_vec(),
            Some(GetOptions::new().with_keys_only()),
        )]);
    let mut kv = inner.client.kv_client();
    let resp = call(
        Operation::Acquire,
        "claiming a permit slot",
        inner.config.request_timeout,
        kv.txn(txn),
    )
    .await?;
    if resp.succeeded() {
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if revision <= 0 {
            return Err(crate::acquire::protocol_error(
                "the txn returned no revision for our permit",
            ));
        }
        return Ok(Some(revision));
    }
    Ok(match first_kv(resp.op_responses().first()) {
        Some(kv) if kv.lease() == lease => Some(kv.create_revision()),
        _ => None,
    })
}

/// Waits until a slot key of the semaphore at `prefix` is deleted after revision `after`:
/// `true` then (or when the watch broke: look again), `false` when `deadline` passed first.
async fn wait_for_release(
    inner: &Inner,
    prefix: &[u8],
    after: i64,
    deadline: Option<Instant>,
) -> Result<bool> {
    let what = "watching the semaphore's permits";
    let limit = inner.config.request_timeout;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(after + 1)
        .with_filters([WatchFilterType::NoPut]);
    let watch = inner.client.watch_client();
    let watching = retry(
        deadline.unwrap_or_else(|| Instant::now() + FAILING_FOR * limit),
        || async {
            call(
                Operation::Acquire,
                what,
                limit,
                watch.clone().watch(prefix.to_vec(), Some(opts.clone())),
            )
            .await
        },
    );
    let mut stream = tokio::select! {
        s = watching => s?,
        _ = sleep_until_opt(deadline) => return Ok(false),
    };
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    let deleted = resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete);
                    if deleted || resp.canceled() || resp.compact_revision() > 0 {
                        return Ok(true);
                    }
                }
                // The stream broke (a member went away): look again, after a pause so that a
                // server refusing watches is not hammered.
                broken => {
                    let resume = Instant::now() + crate::link::Backoff::retries().pause();
                    if let Err(e) = broken {
                        tracing::debug!(error = %from_etcd(Operation::Acquire, what, e), "the permit watch broke");
                    }
                    tokio::time::sleep_until(deadline.map_or(resume, |d| d.min(resume))).await;
                    return Ok(deadline.is_none_or(|d| Instant::now() < d));
                }
            },
            _ = sleep_until_opt(deadline) => return Ok(false),
        }
    }
}

//! Leases: granting, keeping alive, reusing, and the [`Lease`] a guard holds.
//!
//! A lease that carried a lock which was released cleanly (its key deleted) goes back to a
//! small per-backend pool, so the next acquisition with the same TTL skips the grant: an
//! uncontended acquire + release is then one txn each way, like the raw floor. A pooled
//! lease is never kept alive; it is reused only while its last acknowledged keepalive is
//! recent (at most a third of the ttl old, or refreshed with one keepalive while younger than
//! half the ttl), and is otherwise left to expire.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use lock_core::{
    BoxFuture, Error, ErrorKind, Lease, Operation, Result, Supervisors, lease_deadline,
};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::NAME;
use crate::backend::Inner;
use crate::error::{call, from_etcd, retry, timed_out};
use crate::link::{Backoff, lock_reconnects, reconnect};

/// At most this many idle leases are pooled; more are left to expire.
const POOL_MAX: usize = 16;

/// A lease this backend granted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseHandle {
    pub id: i64,
    /// The TTL the server granted, in whole seconds.
    pub secs: i64,
    /// When the grant or the last acknowledged keepalive was *sent*: the server's expiry is
    /// at least `secs` after this.
    pub acked_sent: Instant,
}

impl LeaseHandle {
    /// The client-side deadline for a lock of `ttl` (at most `secs`) on this lease.
    pub fn deadline(&self, ttl: Duration) -> Instant {
        lease_deadline(self.acked_sent, ttl)
    }
}

/// Idle leases (no key attached), most recently used last.
#[derive(Debug, Default)]
pub(crate) struct LeasePool {
    idle: Vec<LeaseHandle>,
}

impl LeasePool {
    pub fn put(&mut self, lease: LeaseHandle) {
        if self.idle.len() >= POOL_MAX {
            self.idle.remove(0);
        }
        self.idle.push(lease);
    }

    /// Every idle lease, leaving the pool empty.
    pub fn drain(&mut self) -> Vec<LeaseHandle> {
        std::mem::take(&mut self.idle)
    }

    /// The most recently used idle lease of `secs`; drops those that have certainly expired.
    pub fn take(&mut self, secs: i64) -> Option<LeaseHandle> {
        let now = Instant::now();
        self.idle
            .retain(|l| now < l.acked_sent + Duration::from_secs(l.secs.unsigned_abs()));
        let i = self.idle.iter().rposition(|l| l.secs == secs)?;
        Some(self.idle.remove(i))
    }
}

pub(crate) fn lock_pool(inner: &Inner) -> MutexGuard<'_, LeasePool> {
    inner.pool.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long one keepalive (or the key check after it) may take before the renewal counts as
/// missed: a third of the ttl, at least 100 ms, at most the request timeout.
pub(crate) fn renewal_limit(ttl: Duration, request_timeout: Duration) -> Duration {
    (ttl / 3)
        .max(Duration::from_millis(100))
        .min(request_timeout)
}

/// One keepalive of lease `id`, on a fresh connection if need be: `Ok(true)` when the server
/// renewed the lease, `Ok(false)` when the lease no longer exists, an error when no attempt was
/// answered within `limit`.
///
/// The first attempt goes down the current connection. When it has no answer after
/// [`stall_after`] (four times the last keepalive round trip, between 50 ms and half of
/// `limit`), the connection is replaced ([`reconnect`]) and another attempt sent, earlier ones
/// staying in flight; while the attempts stay unanswered, each further replacement waits
/// twice as long as the one before ([`Reconnects`](crate::link::Reconnects), at most
/// `limit`, counted across calls until a keepalive is answered). When every attempt has
/// *failed*, the next follows after 25 ms, 50 ms, … (jittered, at most a quarter of `limit`).
/// This goes on until one is answered or `limit` has passed. Callers measure the lease
/// deadline from before this call, so an answer to a later attempt never moves the deadline
/// further than an answer to the first one would have.
pub(crate) async fn keep_alive(
    inner: &Inner,
    id: i64,
    limit: Duration,
    op: Operation,
) -> Result<bool> {
    let until = Instant::now() + limit;
    let mut backoff = Backoff::new(Duration::from_millis(25), limit / 4);
    let mut attempts = JoinSet::new();
    spawn_keep_alive(&mut attempts, inner, id);
    let stall = stall_after(inner, limit);
    let silent_try = || lock_reconnects(inner).next_for_stall(Instant::now(), stall, limit);
    let mut next_try = silent_try();
    let mut last_error = None;
    loop {
        tokio::select! {
            done = attempts.join_next(), if !attempts.is_empty() => {
                match done {
                    Some(Ok((Ok(()), rtt))) => {
                        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
                        inner.last_rtt_micros.store(micros, Ordering::Relaxed);
                        lock_reconnects(inner).answered();
                        return Ok(true);
                    }
                    // etcd-client's wording for a keepalive answered with TTL 0.
                    Some(Ok((Err(etcd_client::Error::LeaseKeepAliveError(m)), _)))
                        if m.contains("not found") =>
                    {
                        lock_reconnects(inner).answered();
                        return Ok(false);
                    }
                    Some(Ok((Err(e), _))) => {
                        let e = from_etcd(op, "lease keepalive", e);
                        if e.kind() != ErrorKind::Connection {
                            return Err(e);
                        }
                        tracing::debug!(lease = id, error = %e, "keepalive failed");
                        last_error = Some(e);
                    }
                    // A task cannot panic here; a cancelled one is simply gone.
                    Some(Err(_)) | None => {}
                }
                if attempts.is_empty() {
                    // Nothing left in flight: the next attempt need not wait for a stall.
                    next_try = next_try.min(Instant::now() + backoff.pause());
                }
            }
            _ = tokio::time::sleep_until(next_try), if next_try < until => {
                reconnect(inner, until).await;
                spawn_keep_alive(&mut attempts, inner, id);
                // Another replacement only if this attempt stays silent (or fails, above).
                next_try = silent_try();
            }
            _ = tokio::time::sleep_until(until) => {
                // Dropping the set aborts the attempts still in flight.
                return Err(last_error.unwrap_or_else(|| timed_out(op, "lease keepalive", limit)));
            }
        }
    }
}

/// How long a keepalive may go unanswered before its connection counts as stalled: four times
/// the last keepalive round trip, at least 50 ms, at most half of `limit`.
fn stall_after(inner: &Inner, limit: Duration) -> Duration {
    let rtt = Duration::from_micros(inner.last_rtt_micros.load(Ordering::Relaxed));
    (rtt * 4).max(Duration::from_millis(50)).min(limit / 2)
}

/// Sends one keepalive of `id` in its own task; it yields the outcome and its round trip.
fn spawn_keep_alive(
    attempts: &mut JoinSet<(std::result::Result<(), etcd_client::Error>, Duration)>,
    inner: &Inner,
    id: i64,
) {
    let mut leases = inner.client.lease_client();
    attempts.spawn(async move {
        let sent = Instant::now();
        // The stream (and its request sender) close when dropped here.
        let outcome = leases.keep_alive(id).await.map(drop);
        (outcome, sent.elapsed())
    });
}

/// Revokes `id` on the current runtime without waiting (cancelled acquisitions, leases whose
/// key may be left behind). Without a runtime the lease simply expires.
pub(crate) fn revoke_in_background(inner: &Arc<Inner>, id: i64) {
    let task = Arc::clone(inner);
    if !inner.cleanups.spawn(async move { revoke(&task, id).await }) {
        tracing::debug!(
            lease = id,
            "no runtime to revoke the lease; it expires on its own"
        );
    }
}

/// Revokes lease `id` (its keys go with it); a failure is only logged, since the lease then
/// expires on its own.
pub(crate) async fn revoke(inner: &Inner, id: i64) {
    let mut leases = inner.client.lease_client();
    let limit = inner.config.request_timeout;
    match call(Operation::Release, "lease revoke", limit, leases.revoke(id)).await {
        Ok(_) => tracing::debug!(lease = id, "lease revoked"),
        Err(e) => {
            tracing::debug!(lease = id, error = %e, "lease revoke failed; it expires on its own")
        }
    }
}

/// What a [`Guard`](lock_core::Guard) holds: our key (an exclusive contender's, a reader's or
/// a permit slot's), its create revision (an exclusive holder's or a permit's fencing token)
/// and its lease.
pub(crate) struct EtcdLease {
    pub inner: Arc<Inner>,
    pub key: Vec<u8>,
    pub revision: i64,
    pub lease: Mutex<LeaseHandle>,
    /// The key's name carries our lease id (an exclusive contender's): only we write it, so a
    /// plain delete releases it. Reader and slot keys are deleted only at our revision.
    pub named_by_lease: bool,
    /// The permit slot, for a permit.
    pub slot: Option<u32>,
}

impl EtcdLease {
    fn handle(&self) -> LeaseHandle {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn extend_inner(&self, ttl: Duration) -> Result<bool> {
        let handle = self.handle();
        if ttl > Duration::from_secs(handle.secs.unsigned_abs()) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                NAME,
                Operation::Extend,
                format!(
                    "an etcd lease keeps the TTL it was granted with ({} s); it cannot be \
                     extended by {ttl:?}: acquire with a longer ttl instead",
                    handle.secs
                ),
            ));
        }
        let inner = &self.inner;
        let limit = renewal_limit(ttl, inner.config.request_timeout);
        let sent = Instant::now();
        if !keep_alive(inner, handle.id, limit, Operation::Extend).await? {
            return Ok(false);
        }
        self.lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked_sent = sent;
        // The lease lives; is our key still on it? (It can be deleted by hand.)
        let mut kv = inner.client.kv_client();
        let resp = call(
            Operation::Extend,
            "checking the lock key",
            limit,
            kv.get(self.key.clone(), None),
        )
        .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == self.revision && kv.lease() == handle.id))
    }

    /// Deletes our key if it is still ours; back to the pool when it was.
    async fn release_inner(&self) -> Result<bool> {
        let inner = &self.inner;
        let handle = self.handle();
        let limit = inner.config.request_timeout;
        // A plain delete, like etcd's own `Mutex.Unlock`: our key's name carries our lease
        // id, and only the holder of that lease writes it, so if it exists it is ours.
        // A reader's or a slot's key may be someone else's by now (ours expired, then the
        // slot was taken again): delete it only at our create revision.
        let delete = || async {
            let mut kv = inner.client.kv_client();
            if self.named_by_lease {
                let resp = kv.delete(self.key.clone(), None);
                return call(Operation::Release, "deleting the lock key", limit, resp)
                    .await
                    .map(|r| r.deleted() > 0);
            }
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    self.revision,
                )])
                .and_then([TxnOp::delete(self.key.clone(), None)]);
            call(
                Operation::Release,
                "deleting the lock key",
                limit,
                kv.txn(txn),
            )
            .await
            .map(|r| r.succeeded())
        };
        // A retry after a lost answer finds the key gone and reports `false`; that costs an
        // accurate answer, never someone else's lock.
        let deleted = match retry(Instant::now() + limit, delete).await {
            Ok(deleted) => deleted,
            Err(e) => {
                // Whether the delete happened is unknown: revoking frees the key either way.
                revoke_in_background(inner, handle.id);
                return Err(e);
            }
        };
        if deleted {
            lock_pool(inner).put(handle);
            Ok(true)
        } else {
            revoke_in_background(inner, handle.id);
            Ok(false)
        }
    }

    /// Moves our key onto a fresh lease of about `keep` (rounded up to whole seconds and to
    /// the server's minimum) that nobody keeps alive, so the server frees the lock then.
    async fn release_after_inner(&self, keep: Duration) -> Result<bool> {
        let inner = &self.inner;
        let old = self.handle();
        // A little extra for the time between the grant and the move.
        let secs = secs_ceil(keep + Duration::from_millis(100)).max(inner.min_ttl_secs);
        let limit = inner.config.request_timeout;
        let mut leases = inner.client.lease_client();
        let granted = call(
            Operation::Release,
            "granting the at_least lease",
            limit,
            leases.grant(secs, None),
        )
        .await?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key.clone(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then([TxnOp::put(
                self.key.clone(),
                "",
                Some(PutOptions::new().with_lease(granted.id())),
            )]);
        let mut kv = inner.client.kv_client();
        let moved = call(
            Operation::Release,
            "moving the lock key to the at_least lease",
            limit,
            kv.txn(txn),
        )
        .await;
        match moved {
            Ok(resp) if resp.succeeded() => {
                // The old lease has no key now; it is not pooled (its key name is still in
                // use until the at_least lease expires).
                revoke_in_background(inner, old.id);
                Ok(true)
            }
            Ok(_) => {
                revoke_in_background(inner, granted.id());
                revoke_in_background(inner, old.id);
                Ok(false)
            }
            Err(e) => {
                revoke_in_background(inner, granted.id());
                Err(e)
            }
        }
    }
}

impl Lease for EtcdLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.inner.supervisors)
    }

    fn cleanups(&self) -> Option<&lock_core::Cleanups> {
        Some(&self.inner.cleanups)
    }

    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.extend_inner(ttl))
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.release_inner())
    }

    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.release_after_inner(keep))
    }

    fn slot(&self) -> Option<u32> {
        self.slot
    }
}

/// Whole seconds, rounded up (etcd lease TTLs are whole seconds).
pub(crate) fn secs_ceil(d: Duration) -> i64 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(whole).unwrap_or(i64::MAX)
}

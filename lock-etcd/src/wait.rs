//! Waiting for our turn: watch only the contender just before us for its deletion (no herd,
//! no polling), keep our own lease alive meanwhile, and before believing we hold the lock,
//! confirm that our own key still exists.

use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp, WatchFilterType, WatchOptions,
};
use lock_core::{ErrorKind, Operation, Result, sleep_until_opt};
use tokio::time::Instant;

use crate::acquire::{contender_scan, first_kv};
use crate::backend::Inner;
use crate::error::{call, from_etcd};
use crate::layout::{Role, blocks};
use crate::lease::{LeaseHandle, keep_alive, renewal_limit};

/// How a wait ended (errors aside).
pub(crate) enum Turn {
    /// Every older contender is gone and our key still exists: the lock is ours.
    Ours,
    /// Our key is gone (our lease expired, or it was deleted): we hold nothing.
    Vanished,
    /// The wait ran out.
    TimedOut,
}

/// How long connection failures may go on, without a success in between, before a wait
/// gives up (in request timeouts); taking the lease of a wait without end retries as long.
pub(crate) const FAILING_FOR: u32 = 3;

/// Until when an acquisition's requests are retried after connection failures: until the
/// wait ends and for at least one request timeout `rt`; a wait without end retries as long as
/// a waiting contender would ([`FAILING_FOR`] request timeouts without a success).
pub(crate) fn retry_until(deadline: Option<Instant>, rt: Duration) -> Instant {
    let now = Instant::now();
    deadline.map_or(now + FAILING_FOR * rt, |d| d.max(now + rt))
}

struct Waiter<'a> {
    inner: &'a Inner,
    prefix: &'a [u8],
    key: &'a [u8],
    revision: i64,
    lease: &'a mut LeaseHandle,
    ttl: Duration,
    deadline: Option<Instant>,
    next_keepalive: Instant,
    role: Role,
}

/// Our place in a lock's queue: the lock's key range, our key, its create revision, and what
/// we wait for (a reader or an exclusive contender).
pub(crate) struct Place<'a> {
    pub prefix: &'a [u8],
    pub key: &'a [u8],
    pub revision: i64,
    pub role: Role,
}

pub(crate) async fn wait_turn(
    inner: &Inner,
    place: Place<'_>,
    lease: &mut LeaseHandle,
    ttl: Duration,
    deadline: Option<Instant>,
) -> Result<Turn> {
    let next_keepalive = lease.acked_sent + ttl / 3;
    let mut w = Waiter {
        inner,
        prefix: place.prefix,
        key: place.key,
        revision: place.revision,
        lease,
        ttl,
        deadline,
        next_keepalive,
        role: place.role,
    };
    let mut failing_since: Option<Instant> = None;
    let mut backoff = crate::link::Backoff::retries();
    let give_up_after = FAILING_FOR * inner.config.request_timeout;
    loop {
        match w.step().await {
            Ok(Some(turn)) => return Ok(turn),
            Ok(None) => {
                failing_since = None;
                backoff = crate::link::Backoff::retries();
            }
            Err(e)
                if e.kind() == ErrorKind::Connection
                    && failing_since.is_none_or(|t| t.elapsed() < give_up_after) =>
            {
                failing_since.get_or_insert_with(Instant::now);
                let pause = backoff.pause();
                tracing::debug!(error = %e, "waiting for the lock: retrying after {pause:?}");
                let resume = Instant::now() + pause;
                if w.deadline.is_some_and(|d| d <= resume) {
                    tokio::time::sleep_until(w.deadline.unwrap_or(resume)).await;
                    return Ok(Turn::TimedOut);
                }
                tokio::time::sleep_until(resume).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Waiter<'_> {
    /// Looks where we stand; if someone is ahead, waits for that one's key to go.
    /// `Ok(None)`: look again.
    async fn step(&mut self) -> Result<Option<Turn>> {
        let (mine, before) = self.position().await?;
        if !mine {
            return Ok(Some(Turn::Vanished));
        }
        let Some((before, before_revision)) = before else {
            // Our turn. Leave the guard enough lease for its first renewal at ttl/3.
            if self.lease.deadline(self.ttl) < Instant::now() + self.ttl / 2
                && !self.keep_alive().await?
            {
                return Ok(Some(Turn::Vanished));
            }
            return Ok(Some(Turn::Ours));
        };
        // A watch from the current revision, then a check that the key is still there: a
        // watch from an older revision would be "unsynced" and etcd delivers those events
        // only on its 100 ms catch-up tick.
        let limit = self.inner.config.request_timeout;
        let opts = WatchOptions::new().with_filters([WatchFilterType::NoPut]);
        let mut watch = self.inner.client.watch_client();
        let what = "watching the contender ahead of us";
        let mut stream = call(
            Operation::Acquire,
            what,
            limit,
            watch.watch(before.clone(), Some(opts)),
        )
        .await?;
        let created = async {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() => return Ok(false),
                    Ok(Some(resp)) if resp.created() => return Ok(true),
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(etcd_client::Error::WatchError("the watch ended".into()));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if !call(Operation::Acquire, what, limit, created).await? {
            return Ok(None);
        }
        let mut kv = self.inner.client.kv_client();
        // The same key, not a newer one of the same name (its holder may have released and
        // queued again, behind us, with the same lease).
        let check = kv.get(before, Some(GetOptions::new().with_keys_only()));
        let still = call(Operation::Acquire, what, limit, check).await?;
        if still
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != before_revision)
        {
            return Ok(None);
        }
        loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        // Cancelled (compaction, no leader) or the key is gone: look again.
                        let deleted = resp.events().iter().any(|e| e.event_type() == EventType::Delete);
                        if deleted || resp.canceled() || resp.compact_revision() > 0 {
                            return Ok(None);
                        }
                    }
                    Ok(None) => {
                        return Err(lock_core::Error::new(
                            ErrorKind::Connection,
                            crate::NAME,
                            Operation::Acquire,
                            "the watch on the contender ahead of us ended",
                        ));
                    }
                    Err(e) => return Err(from_etcd(Operation::Acquire, "watching the contender ahead of us", e)),
                },
                _ = tokio::time::sleep_until(self.next_keepalive) => {
                    if !self.keep_alive().await? {
                        return Ok(Some(Turn::Vanished));
                    }
                }
                _ = sleep_until_opt(self.deadline) => return Ok(Some(Turn::TimedOut)),
            }
        }
    }

    /// One keepalive of our lease; `false` when it has expired.
    async fn keep_alive(&mut self) -> Result<bool> {
        let limit = renewal_limit(self.ttl, self.inner.config.request_timeout);
        let sent = Instant::now();
        let alive = keep_alive(self.inner, self.lease.id, limit, Operation::Acquire).await?;
        if alive {
            self.lease.acked_sent = sent;
            self.next_keepalive = sent + self.ttl / 3;
        }
        Ok(alive)
    }

    /// At one revision: does our key still exist, and which contender is just before us?
    async fn position(&self) -> Result<(bool, Option<(Vec<u8>, i64)>)> {
        let before = GetOptions::new()
            .with_prefix()
            .with_max_create_revision(self.revision - 1)
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let txn = Txn::new().and_then([
            TxnOp::get(self.key.to_vec(), Some(GetOptions::new().with_keys_only())),
            TxnOp::get(self.prefix.to_vec(), Some(before)),
        ]);
        let mut kv = self.inner.client.kv_client();
        let resp = call(
            Operation::Acquire,
            "checking our place in the queue",
            self.inner.config.request_timeout,
            kv.txn(txn),
        )
        .await?;
        let ops = resp.op_responses();
        let mine = first_kv(ops.first()).is_some_and(|kv| kv.create_revision() == self.revision);
        let before = match first_kv(ops.get(1)) {
            None => None,
            Some(kv) if blocks(self.prefix, kv.key(), self.role) => {
                Some((kv.key().to_vec(), kv.create_revision()))
            }
            // A nested lock's key, or a reader before a reader: find the key before us that
            // blocks us.
            Some(_) => contender_scan(self.inner, self.prefix, Some(self.revision), self.role)
                .await?
                .map(|kv| (kv.key().to_vec(), kv.create_revision())),
        };
        Ok((mine, before))
    }
}

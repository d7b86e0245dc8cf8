//! A granted ZooKeeper lock: our contender node, first in line (for a permit: its slot node and
//! its lease node). It lives as long as the session, so there is no lease to extend;
//! `release` deletes the nodes.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{BoxFuture, Cleanups, Error, ErrorKind, Lease, LeaseMonitor, Operation, Result};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use zookeeper_client::Error as ZkError;

use crate::NAME;
use crate::error;
use crate::session::Session;

/// When a hold limit (ttl without renewal, or `max_hold`) ends the grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HoldLimit {
    /// The guard turns `Lost` here, a drift allowance before the node is deleted.
    pub lost_at: Instant,
    /// The node is deleted here.
    pub free_at: Instant,
}

pub(crate) struct ZkLease {
    session: Arc<Session>,
    /// Deleted in this order; the last one is the grant itself (the contender or lease node).
    paths: Vec<String>,
    grant_ids: Vec<u64>,
    slot: Option<u32>,
    limit: Option<AbortHandle>,
}

impl ZkLease {
    /// Takes over the nodes at `paths` (at least one) and starts following the session for
    /// `monitor`.
    pub fn new(
        session: Arc<Session>,
        paths: Vec<String>,
        monitor: &LeaseMonitor,
        limit: Option<HoldLimit>,
    ) -> ZkLease {
        let grant_ids = paths.iter().map(|p| session.register(monitor, p)).collect();
        let limit = limit.map(|limit| {
            let session = Arc::clone(&session);
            let paths = paths.clone();
            let monitor = monitor.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(limit.lost_at).await;
                monitor.report_lost("the hold limit (ttl without renewal, or max_hold) was reached");
                tokio::time::sleep_until(limit.free_at).await;
                if let Err(e) = delete_nodes(&session, &paths, Operation::Release).await {
                    tracing::warn!(nodes = ?paths, error = %e, "could not free the lock at its hold limit; it goes when the session ends");
                }
            })
            .abort_handle()
        });
        ZkLease {
            session,
            paths,
            grant_ids,
            slot: None,
            limit,
        }
    }

    /// The permit slot this grant holds.
    pub fn with_slot(mut self, slot: u32) -> ZkLease {
        self.slot = Some(slot);
        self
    }

    /// The grant's own node (the last of `paths`).
    fn main_path(&self) -> &str {
        self.paths.last().map_or("", String::as_str)
    }

    fn detach(&self) {
        for id in &self.grant_ids {
            self.session.deregister(*id);
        }
        if let Some(limit) = &self.limit {
            limit.abort();
        }
    }
}

impl Drop for ZkLease {
    fn drop(&mut self) {
        self.detach();
    }
}

impl Lease for ZkLease {
    fn extend(&self, _ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(std::future::ready(Err(Error::new(
            ErrorKind::Unsupported,
            NAME,
            Operation::Extend,
            "a ZooKeeper lock lives as long as its session (kept alive by the client); there \
             is no lease to extend",
        ))))
    }

    fn cleanups(&self) -> Option<&Cleanups> {
        Some(self.session.cleanups())
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        self.detach();
        Box::pin(delete_nodes(&self.session, &self.paths, Operation::Release))
    }

    fn slot(&self) -> Option<u32> {
        self.slot
    }

    /// Keeps the node for `keep` more, then deletes it from this process. If the process
    /// exits first, the session ends and the lock frees early: ZooKeeper has no server-side
    /// `at_least`.
    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        self.detach();
        Box::pin(async move {
            let main = self.main_path();
            let what = format!("checking our lock node {main}");
            let limit = self.session.timeout();
            let stat =
                match tokio::time::timeout(limit, self.session.client().check_stat(main)).await {
                    Err(_) => return Err(error::no_answer(Operation::Release, &what, limit)),
                    Ok(Err(e)) if error::is_session_over(&e) => return Ok(false),
                    Ok(Err(e)) => return Err(error::from_zk(Operation::Release, &what, e)),
                    Ok(Ok(stat)) => stat,
                };
            let ours = stat.is_some_and(|s| s.ephemeral_owner == self.session.id());
            if ours {
                let session = Arc::clone(&self.session);
                let paths = self.paths.clone();
                // Tracked, so that `Backend::close` keeps the process (and the node) until
                // `at_least` has passed.
                self.session.cleanups().spawn(async move {
                    tokio::time::sleep(keep).await;
                    if let Err(e) = delete_nodes(&session, &paths, Operation::Release).await {
                        tracing::warn!(nodes = ?paths, error = %e, "could not free the lock after at_least; it goes when the session ends");
                    }
                });
            }
            Ok(ours)
        })
    }
}

/// Deletes our nodes, the requests sent back to back in order (one round trip; the server
/// applies one session's requests in order); `Ok(true)` when each was there (see
/// [`delete_node`]).
pub(crate) async fn delete_nodes(
    session: &Session,
    paths: &[String],
    operation: Operation,
) -> Result<bool> {
    match paths {
        [one] => delete_node(session, one, operation).await,
        [first, second] => {
            let (a, b) = tokio::join!(
                delete_node(session, first, operation),
                delete_node(session, second, operation)
            );
            Ok(a? & b?)
        }
        _ => {
            let mut all = true;
            for path in paths {
                all &= delete_node(session, path, operation).await?;
            }
            Ok(all)
        }
    }
}

/// Deletes our node. `Ok(true)`: it was there and is gone; `Ok(false)`: it was already gone
/// (the session ended, or someone removed it). A connection loss with the delete in flight is
/// retried; a "no node" after that counts as ours when the session is still alive, since
/// nobody but this session or an operator deletes it.
pub(crate) async fn delete_node(
    session: &Session,
    path: &str,
    operation: Operation,
) -> Result<bool> {
    let what = format!("deleting our lock node {path}");
    let limit = session.timeout();
    let mut interrupted = false;
    for _ in 0..3 {
        match tokio::time::timeout(limit, session.client().delete(path, None)).await {
            Err(_) => return Err(error::no_answer(operation, &what, limit)),
            Ok(Ok(())) => return Ok(true),
            Ok(Err(ZkError::NoNode)) => return Ok(interrupted && !session.is_over()),
            Ok(Err(e)) if error::is_session_over(&e) => return Ok(false),
            Ok(Err(e)) if error::is_connection_loss(&e) => interrupted = true,
            Ok(Err(e)) => return Err(error::from_zk(operation, &what, e)),
        }
    }
    Err(error::from_zk(operation, &what, ZkError::ConnectionLoss))
}

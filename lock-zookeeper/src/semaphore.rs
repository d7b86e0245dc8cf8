//! Permits: Curator's `InterProcessSemaphoreV2` layout, so that Curator clients and dlock share
//! a semaphore. Under the semaphore node (see [`layout::semaphore_path`]):
//!
//! - `locks/` is an `InterProcessMutex`, held by one acquirer at a time from before it creates
//!   its lease until it is granted or gives up (so acquirers line up in its FIFO order);
//! - `leases/_c_<uuid>-lease-<seq>` are the leases, ephemeral sequential nodes; an acquirer is
//!   granted once there are at most `limit` of them, its own included (the limit is the
//!   caller's, as in Curator); until then it watches the leases' children;
//! - `slots/<n>` (dlock's own, which Curator ignores) is the permit's slot, the lowest free one
//!   below the limit, an ephemeral node created while still holding `locks/`; its creation zxid
//!   is the permit's fencing token (zxids only grow, so one slot's tokens strictly increase).
//!
//! A Curator holder has a lease and no slot: it counts against the limit, and dlock's slots stay
//! unique among dlock's holders.

use std::sync::Arc;

use lock_core::{
    Error, ErrorKind, FencingToken, Grant, Guard, LeaseMonitor, LockName, LockOptions, Operation,
    Result, WaitPlan, sleep_until_opt,
};
use tokio::time::Instant;
use zookeeper_client::{CreateMode, Error as ZkError, OneshotWatcher};

use crate::NAME;
use crate::backend::{hold_limit, queue};
use crate::contender::Contender;
use crate::error;
use crate::layout;
use crate::lease::ZkLease;
use crate::session::Session;

pub(crate) async fn acquire(
    session: Arc<Session>,
    name: &LockName,
    opts: &LockOptions,
    plan: &WaitPlan,
    path: String,
    limit: u32,
) -> Result<Guard> {
    let leases = format!("{path}/leases");
    let slots = format!("{path}/slots");
    let internal = Contender::new(
        Arc::clone(&session),
        format!("{path}/locks"),
        layout::LOCK_MARKER,
    );
    let (internal, _) = queue(&session, internal, false, plan, name)
        .await
        .map_err(|e| permits_busy(e, name, limit))?;
    let mut lease = Contender::new(Arc::clone(&session), leases.clone(), layout::LEASE_MARKER);
    lease.enter().await?;
    let ours = lease
        .node_name()
        .expect("an entered contender knows its node")
        .to_string();
    let deadline = plan.deadline;
    let (slot, slot_path, czxid) = loop {
        // Both listings back to back (one round trip: a session's requests are answered in
        // order).
        let (listed, slots_listed) = tokio::join!(
            watch_children(&session, &leases),
            watch_children(&session, &slots)
        );
        let (children, lease_watch) = listed?;
        let (taken, slot_watch) = slots_listed?;
        if !children.contains(&ours) {
            return Err(Error::new(
                ErrorKind::Connection,
                NAME,
                Operation::Acquire,
                format!("our lease node under {leases} disappeared (did the session expire?)"),
            ));
        }
        if children.len() <= limit as usize {
            let free = (0..limit).find(|n| !taken.iter().any(|t| *t == n.to_string()));
            if let Some(n) = free {
                if let Some(czxid) = claim_slot(&session, &slots, n).await? {
                    break (n, format!("{slots}/{n}"), czxid);
                }
                continue;
            }
        }
        if !plan.may_wait() || deadline.is_some_and(|d| d <= Instant::now()) {
            lease.withdraw().await;
            internal.withdraw().await;
            return Err(all_held(plan, name, limit));
        }
        tokio::select! {
            _ = lease_watch.changed() => {}
            _ = slot_watch.changed() => {}
            _ = sleep_until_opt(deadline) => {
                lease.withdraw().await;
                internal.withdraw().await;
                return Err(all_held(plan, name, limit));
            }
        }
    };
    // Granted: the next acquirer may go.
    internal.withdraw().await;
    let lease_path = lease
        .into_granted()
        .expect("an entered contender knows its node");
    let monitor = LeaseMonitor::new(name, NAME, None);
    let held = ZkLease::new(
        session,
        vec![slot_path, lease_path],
        &monitor,
        hold_limit(opts, Instant::now()),
    )
    .with_slot(slot);
    Ok(Guard::new(
        Grant {
            name: name.clone(),
            backend: NAME,
            token: Some(FencingToken::new(czxid as u64)),
            lease: Arc::new(held),
            monitor,
            requested_at: plan.requested_at,
        },
        opts,
    ))
}

/// The children of `path` (none if it does not exist yet) and a watch on them; for a missing
/// node the watch is on its creation.
async fn watch_children(session: &Session, path: &str) -> Result<(Vec<String>, OneshotWatcher)> {
    let what = format!("watching the children of {path}");
    let limit = session.timeout();
    let client = session.client();
    for _ in 0..3 {
        let listed = tokio::time::timeout(limit, client.list_and_watch_children(path))
            .await
            .map_err(|_| error::no_answer(Operation::Acquire, &what, limit))?;
        match listed {
            Ok(found) => return Ok(found),
            Err(ZkError::NoNode) => {
                let exists = tokio::time::timeout(limit, client.check_and_watch_stat(path))
                    .await
                    .map_err(|_| error::no_answer(Operation::Acquire, &what, limit))?;
                match exists {
                    // Created meanwhile: list again.
                    Ok((Some(_), _)) => {}
                    Ok((None, watcher)) => return Ok((Vec::new(), watcher)),
                    Err(e) if error::is_connection_loss(&e) => {}
                    Err(e) => return Err(error::from_zk(Operation::Acquire, &what, e)),
                }
            }
            Err(e) if error::is_connection_loss(&e) => {}
            Err(e) => return Err(error::from_zk(Operation::Acquire, &what, e)),
        }
    }
    Err(error::from_zk(
        Operation::Acquire,
        &what,
        ZkError::ConnectionLoss,
    ))
}

/// Creates the ephemeral slot node `slots/n`: its creation zxid, or `None` when it exists
/// (another holder's). After a connection loss, a node that exists and is this session's is
/// ours.
async fn claim_slot(session: &Session, slots: &str, n: u32) -> Result<Option<i64>> {
    let path = format!("{slots}/{n}");
    let what = format!("creating the permit slot {path}");
    let limit = session.timeout();
    let client = session.client();
    let data = format!("dlock pid {}", std::process::id()).into_bytes();
    let mode = CreateMode::Ephemeral.with_acls(session.acls());
    for _ in 0..5 {
        let created = tokio::time::timeout(limit, client.create(&path, &data, &mode))
            .await
            .map_err(|_| error::no_answer(Operation::Acquire, &what, limit))?;
        match created {
            Ok((stat, _)) => return Ok(Some(stat.czxid)),
            Err(ZkError::NodeExists) => return Ok(None),
            Err(ZkError::NoNode) => {
                let parents = CreateMode::Container.with_acls(session.acls());
                match tokio::time::timeout(limit, client.mkdir(slots, &parents)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if error::is_connection_loss(&e) => {}
                    Ok(Err(e)) => return Err(error::from_zk(Operation::Acquire, &what, e)),
                    Err(_) => return Err(error::no_answer(Operation::Acquire, &what, limit)),
                }
            }
            Err(e) if error::is_connection_loss(&e) => {
                let stat = tokio::time::timeout(limit, client.check_stat(&path))
                    .await
                    .map_err(|_| error::no_answer(Operation::Acquire, &what, limit))?;
                match stat {
                    Ok(Some(s)) if s.ephemeral_owner == session.id() => return Ok(Some(s.czxid)),
                    Ok(Some(_)) => return Ok(None),
                    _ => {}
                }
            }
            Err(e) => return Err(error::from_zk(Operation::Acquire, &what, e)),
        }
    }
    Err(error::from_zk(
        Operation::Acquire,
        &what,
        ZkError::ConnectionLoss,
    ))
}

fn all_held(plan: &WaitPlan, name: &LockName, limit: u32) -> Error {
    plan.busy_error(
        NAME,
        name,
        &format!(" (all {limit} permits of the semaphore are held)"),
    )
}

/// The internal mutex was busy: another acquirer is waiting for a permit, so all are held.
fn permits_busy(e: Error, name: &LockName, limit: u32) -> Error {
    match e.kind() {
        ErrorKind::Contended | ErrorKind::Timeout => Error::new(
            e.kind(),
            NAME,
            Operation::Acquire,
            format!(
                "semaphore {:?}: all {limit} permits are held, or another client is acquiring \
                 one ({e})",
                name.as_str()
            ),
        ),
        _ => e,
    }
}

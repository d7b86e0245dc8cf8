//! The `zk://` backend: Curator's `InterProcessMutex`, `InterProcessReadWriteLock` and
//! `InterProcessSemaphoreV2` recipes on one shared session.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    Backend, BoxFuture, Capabilities, ConnectUrl, Error, ErrorKind, FencingToken, Grant, Guard,
    LeaseMonitor, LockMode, LockName, LockOptions, Operation, Renew, Result, WaitPlan,
    lease_deadline,
};
use tokio::time::Instant;
use zookeeper_client::Error as ZkError;

use crate::config::Config;
use crate::contender::{Contender, Entered};
use crate::error;
use crate::layout::{self, Standing};
use crate::lease::{HoldLimit, ZkLease};
use crate::session::Session;
use crate::{CAPABILITIES, NAME};
use lock_core::sleep_until_opt;

/// Locks on a ZooKeeper ensemble. One session serves every lock of the backend; when it
/// expires, its guards turn `Lost` and the next `acquire` opens a new one.
pub(crate) struct ZkBackend {
    config: Config,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkBackend")
            .field("config", &self.config)
            .finish()
    }
}

impl ZkBackend {
    /// Parses the URL and opens the first session, so a wrong address fails here.
    pub async fn connect(url: ConnectUrl) -> Result<ZkBackend> {
        let config = Config::from_url(&url)?;
        let session = Session::open(&config).await?;
        Ok(ZkBackend {
            config,
            session: tokio::sync::Mutex::new(Some(session)),
        })
    }

    /// The current session, or a new one if it is over.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref().filter(|s| !s.is_over()) {
            return Ok(Arc::clone(session));
        }
        tracing::info!("the ZooKeeper session is over; opening a new one");
        let session = Session::open(&self.config)
            .await
            .map_err(|e| e.in_operation(Operation::Acquire))?;
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        opts.check_for(NAME, &CAPABILITIES)?;
        let plan = WaitPlan::new(opts);
        let session = self.session().await?;
        let lock_path = self.config.lock_path(name);
        if let Some(limit) = opts.permits() {
            let path = layout::semaphore_path(&lock_path);
            return crate::semaphore::acquire(session, name, opts, &plan, path, limit).await;
        }
        let shared = opts.mode() == LockMode::Shared;
        let marker = if shared {
            layout::READ_MARKER
        } else if self.config.rwlock_writers {
            layout::WRITE_MARKER
        } else {
            layout::LOCK_MARKER
        };
        let contender = Contender::new(Arc::clone(&session), lock_path.clone(), marker);
        let (contender, czxid) = queue(&session, contender, shared, &plan, name).await?;
        // Ours is first: the lock is ours. No await from here to the guard.
        let node = contender
            .into_granted()
            .expect("a contender that holds the lock knows its node");
        let monitor = LeaseMonitor::new(name, NAME, None);
        let lease = Arc::new(ZkLease::new(
            session,
            vec![node],
            &monitor,
            hold_limit(opts, Instant::now()),
        ));
        Ok(Guard::new(
            Grant {
                name: name.clone(),
                backend: NAME,
                // Readers hold together: a token would fence the others out.
                token: (!shared).then(|| FencingToken::new(czxid as u64)),
                lease,
                monitor,
                requested_at: plan.requested_at,
            },
            opts,
        ))
    }
}

/// Enters the queue of `contender`'s lock node and waits for our turn as an exclusive
/// contender or a reader (`shared`), watching only the node in our way (no herd), as Curator
/// does. Returns the contender, now holding, with its node's creation zxid; a wait that ends
/// first withdraws the node and says busy.
pub(crate) async fn queue(
    session: &Session,
    mut contender: Contender,
    shared: bool,
    plan: &WaitPlan,
    name: &LockName,
) -> Result<(Contender, i64)> {
    let (try_only, deadline) = (!plan.may_wait(), plan.deadline);
    let lock_path = contender.lock_path().to_string();
    let Entered {
        mut children,
        czxid,
    } = contender.enter().await?;
    loop {
        layout::sort_contenders(&mut children);
        let predecessor = match layout::standing(&children, contender.prefix(), shared) {
            Standing::Holder(_) => return Ok((contender, czxid)),
            Standing::Absent => {
                return Err(Error::new(
                    ErrorKind::Connection,
                    NAME,
                    Operation::Acquire,
                    format!(
                        "our contender node under {lock_path} disappeared while waiting (did \
                         the session expire?)"
                    ),
                ));
            }
            Standing::Waiting { predecessor, .. } => format!("{lock_path}/{predecessor}"),
        };
        if try_only || deadline.is_some_and(|d| d <= Instant::now()) {
            contender.withdraw().await;
            return Err(plan.busy_error(NAME, name, ""));
        }
        let what = format!("watching {predecessor}");
        let client = session.client();
        match contender
            .read(&what, || client.get_and_watch_data(&predecessor))
            .await?
        {
            Ok((_, _, watcher)) => {
                tokio::select! {
                    _ = watcher.changed() => {}
                    _ = sleep_until_opt(deadline) => {
                        contender.withdraw().await;
                        return Err(plan.busy_error(NAME, name, ""));
                    }
                }
            }
            // Gone already: look again.
            Err(ZkError::NoNode) => {}
            Err(e) => return Err(error::from_zk(Operation::Acquire, &what, e)),
        }
        children = contender.list().await?;
    }
}

impl Backend for ZkBackend {
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

    /// Waits for this session's background deletes, then ends the session with
    /// `closeSession` unless guards still hold it (see [`Session::close`]).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(session) = self.session.lock().await.take() else {
                return;
            };
            session.cleanups().finished().await;
            session.close().await;
        })
    }
}

/// A session lock has no lease, but the options can still bound the hold: without renewal
/// the lock is held for at most one ttl, and `max_hold` caps renewed holds. Both count from
/// the grant; this process deletes the node when the limit is reached, after telling the
/// guard.
pub(crate) fn hold_limit(opts: &LockOptions, granted_at: Instant) -> Option<HoldLimit> {
    let limit: Duration = match opts.renew() {
        Renew::Off => opts.ttl(),
        Renew::Auto { max_hold: Some(m) } => m,
        Renew::Auto { max_hold: None } => return None,
    };
    Some(HoldLimit {
        lost_at: lease_deadline(granted_at, limit),
        free_at: granted_at + limit,
    })
}

//! One place in a lock's queue: the contender node `_c_<uuid>-<marker><seq>` (`lock-` for the
//! mutex, `__READ__` for a reader, `lease-` for a semaphore lease), created with
//! Curator's protected-mode recovery, and removed again if the acquisition does not end in a
//! grant (including when the `acquire` future is dropped).

use std::future::Future;
use std::sync::Arc;

use lock_core::{Operation, Result};
use zookeeper_client::{CreateMode, Error as ZkError};

use crate::error;
use crate::layout;
use crate::session::Session;

/// How often a create is retried after a connection loss or a vanished parent.
const ENTER_ATTEMPTS: u32 = 5;
/// How often an idempotent read or a delete is retried after a connection loss.
const RETRIES: u32 = 3;

/// Our node in the queue of one lock.
pub(crate) struct Contender {
    session: Arc<Session>,
    lock_path: String,
    prefix: String,
    /// Our node's name once known.
    node: Option<String>,
    /// A create was sent and the node has not been handed to a lease or removed: dropping
    /// the contender must clean up.
    armed: bool,
}

/// What entering the queue found.
pub(crate) struct Entered {
    /// The children of the lock node right after our create, unsorted.
    pub children: Vec<String>,
    /// The creation zxid of our node: the fencing token if we get the lock.
    pub czxid: i64,
}

impl Contender {
    pub fn new(session: Arc<Session>, lock_path: String, marker: &str) -> Contender {
        let prefix = layout::contender_prefix(&uuid::Uuid::new_v4(), marker);
        Contender {
            session,
            lock_path,
            prefix,
            node: None,
            armed: false,
        }
    }

    /// The node whose children are the queue.
    pub fn lock_path(&self) -> &str {
        &self.lock_path
    }

    /// Our node's name (without its path), once known.
    pub fn node_name(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// `_c_<uuid>-<marker>`, the start of our node's name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates our node and lists the queue. The list is sent right behind the create, without
    /// waiting for its answer (ZooKeeper answers one session's requests in order), so entering
    /// costs one round trip. Parents missing are created as container nodes, as Curator does.
    ///
    /// Protected mode: when the connection breaks with the create in flight, the create may or
    /// may not have happened. We list the children and look for our `_c_<uuid>-` prefix
    /// instead of creating a second node, which would be an orphan that blocks everyone
    /// behind it until our session ends.
    pub async fn enter(&mut self) -> Result<Entered> {
        let client = self.session.client().clone();
        let what = || format!("creating a contender node under {}", self.lock_path);
        let create_path = format!("{}/{}", self.lock_path, self.prefix);
        let data = format!("dlock pid {}", std::process::id()).into_bytes();
        let mode = CreateMode::EphemeralSequential.with_acls(self.session.acls());
        let mut last_err = None;
        for _ in 0..ENTER_ATTEMPTS {
            let create = client.create(&create_path, &data, &mode);
            let list = client.list_children(&self.lock_path);
            self.armed = true;
            let (created, listed) = self
                .bounded(Operation::Acquire, &what(), async {
                    tokio::join!(create, list)
                })
                .await?;
            match created {
                Ok((stat, sequence)) => {
                    self.node = Some(format!("{}{sequence}", self.prefix));
                    let children = match listed {
                        Ok(children) => children,
                        Err(_) => self.list().await?,
                    };
                    return Ok(Entered {
                        children,
                        czxid: stat.czxid,
                    });
                }
                Err(ZkError::NoNode) => {
                    let parents = CreateMode::Container.with_acls(self.session.acls());
                    match self
                        .bounded(
                            Operation::Acquire,
                            &what(),
                            client.mkdir(&self.lock_path, &parents),
                        )
                        .await?
                    {
                        Ok(()) => {}
                        Err(e) if error::is_connection_loss(&e) => {}
                        Err(e) => return Err(error::from_zk(Operation::Acquire, &what(), e)),
                    }
                }
                Err(e) if error::is_connection_loss(&e) => {
                    tracing::debug!(lock = %self.lock_path, "connection lost during create; looking for our node");
                    let children = self.list().await?;
                    if let Some(ours) = children.iter().find(|c| c.starts_with(&self.prefix)) {
                        let path = format!("{}/{ours}", self.lock_path);
                        let stat = self
                            .read(&what(), || client.check_stat(&path))
                            .await?
                            .map_err(|e| error::from_zk(Operation::Acquire, &what(), e))?;
                        if let Some(stat) = stat {
                            tracing::debug!(lock = %self.lock_path, node = %ours, "found our node after the connection loss");
                            self.node = Some(ours.clone());
                            return Ok(Entered {
                                children,
                                czxid: stat.czxid,
                            });
                        }
                    }
                    last_err = Some(e);
                }
                Err(e) => {
                    // Refused (or the session is over): no node was created.
                    self.armed = false;
                    return Err(error::from_zk(Operation::Acquire, &what(), e));
                }
            }
        }
        Err(error::from_zk(
            Operation::Acquire,
            &format!("{} (gave up after {ENTER_ATTEMPTS} attempts)", what()),
            last_err.unwrap_or(ZkError::NoNode),
        ))
    }

    /// The children of the lock node (empty if it is gone), unsorted.
    pub async fn list(&self) -> Result<Vec<String>> {
        let client = self.session.client();
        let what = format!("listing the contenders of {}", self.lock_path);
        match self
            .read(&what, || client.list_children(&self.lock_path))
            .await?
        {
            Ok(children) => Ok(children),
            // A vanished lock node means every contender is gone, ours included.
            Err(ZkError::NoNode) => Ok(Vec::new()),
            Err(e) => Err(error::from_zk(Operation::Acquire, &what, e)),
        }
    }

    /// Runs an idempotent read, retrying after connection losses, each try bounded by the
    /// session timeout. The inner error is ZooKeeper's answer, for the caller to interpret.
    pub async fn read<T, F, Fut>(
        &self,
        what: &str,
        mut call: F,
    ) -> Result<std::result::Result<T, ZkError>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, ZkError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.bounded(Operation::Acquire, what, call()).await? {
                Err(e) if error::is_connection_loss(&e) && tries < RETRIES => continue,
                answer => return Ok(answer),
            }
        }
    }

    /// Awaits `fut`, but no longer than the session timeout.
    async fn bounded<T>(
        &self,
        operation: Operation,
        what: &str,
        fut: impl Future<Output = T>,
    ) -> Result<T> {
        let limit = self.session.timeout();
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| error::no_answer(operation, what, limit))
    }

    /// The full path of our node, once known.
    pub fn node_path(&self) -> Option<String> {
        self.node
            .as_ref()
            .map(|n| format!("{}/{n}", self.lock_path))
    }

    /// The node now belongs to a lease: nothing to clean up here any more.
    pub fn into_granted(mut self) -> Option<String> {
        self.armed = false;
        self.node_path()
    }

    /// Leaves the queue and waits until our node is gone (or the session is over), so that a
    /// caller told "busy" leaves nothing behind even if its process exits right away. If this
    /// future is dropped first, the drop finishes the job in the background.
    pub async fn withdraw(mut self) {
        if !self.armed {
            return;
        }
        let session = Arc::clone(&self.session);
        if let Some(path) = self.node_path() {
            match tokio::time::timeout(session.timeout(), session.client().delete(&path, None))
                .await
            {
                Ok(Ok(())) | Ok(Err(ZkError::NoNode)) => {
                    self.armed = false;
                    return;
                }
                Ok(Err(e)) if error::is_session_over(&e) => {
                    self.armed = false;
                    return;
                }
                _ => {}
            }
        }
        remove_by_prefix(&session, &self.lock_path, &self.prefix).await;
        self.armed = false;
    }

    fn start_cleanup(&mut self) {
        if !std::mem::take(&mut self.armed) {
            return;
        }
        let session = Arc::clone(&self.session);
        let first = self
            .node_path()
            .map(|path| session.client().delete(&path, None));
        let lock_path = self.lock_path.clone();
        let prefix = self.prefix.clone();
        let cleanups = self.session.cleanups().clone();
        let spawned = cleanups.spawn(async move {
            if let Some(delete) = first {
                match tokio::time::timeout(session.timeout(), delete).await {
                    Ok(Ok(())) | Ok(Err(ZkError::NoNode)) => return,
                    Ok(Err(e)) if error::is_session_over(&e) => return,
                    _ => {}
                }
            }
            remove_by_prefix(&session, &lock_path, &prefix).await;
        });
        if !spawned {
            tracing::warn!(lock = %self.lock_path, "no tokio runtime: our contender node stays until the session ends");
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        self.start_cleanup();
    }
}

/// Finds the node starting with `prefix` under `lock_path` and deletes it, retrying after
/// connection losses. Gives up quietly when the session is over (the node is gone with it).
async fn remove_by_prefix(session: &Session, lock_path: &str, prefix: &str) {
    let client = session.client();
    let limit = session.timeout();
    for _ in 0..RETRIES {
        let children = match tokio::time::timeout(limit, client.list_children(lock_path)).await {
            Ok(Ok(children)) => children,
            Ok(Err(ZkError::NoNode)) => return,
            Ok(Err(e)) if error::is_session_over(&e) => return,
            _ => continue,
        };
        let Some(ours) = children.iter().find(|c| c.starts_with(prefix)) else {
            return;
        };
        let path = format!("{lock_path}/{ours}");
        match tokio::time::timeout(limit, client.delete(&path, None)).await {
            Ok(Ok(())) | Ok(Err(ZkError::NoNode)) => return,
            Ok(Err(e)) if error::is_session_over(&e) => return,
            _ => continue,
        }
    }
    tracing::warn!(lock = %lock_path, prefix, "could not remove our contender node; it goes when the session ends");
}

//! Background cleanup a backend starts and [`Backend::close`](crate::Backend::close) waits for.
//!
//! A dropped guard, a withdrawn waiter or a release kept back by `at_least` finishes on a
//! spawned task, because `Drop` cannot wait. A process that exits right after (a CLI that found
//! the lock busy, a cron job that ended) would cut those tasks off mid-way and leave a contender
//! record or a held lock on the server until a session or lease times out. [`Cleanups`] counts
//! the tasks so that `close` can wait for them before the process goes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The background cleanup tasks of one backend. Cheap to clone (clones share the count).
#[derive(Clone, Default)]
pub struct Cleanups {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    pending: AtomicUsize,
    idle: Notify,
}

impl std::fmt::Debug for Cleanups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cleanups")
            .field("pending", &self.pending())
            .finish()
    }
}

/// Counts one task out when it ends, however it ends (finished, aborted, or dropped with its
/// runtime), so a waiter is never left counting a task that will not run.
struct Pending(Arc<Inner>);

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Cleanups {
    /// A tracker with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `cleanup` on a task of the current tokio runtime and counts it until it ends.
    /// Returns `false` (and drops `cleanup` unrun) when there is no runtime: the caller then
    /// leaves the record to the server's own timeout and should say so.
    pub fn spawn(&self, cleanup: impl Future<Output = ()> + Send + 'static) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        let pending = Pending(Arc::clone(&self.inner));
        rt.spawn(async move {
            let _pending = pending;
            cleanup.await;
        });
        true
    }

    /// How many cleanup tasks have not ended yet.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Waits until every cleanup task started so far (and any started meanwhile) has ended.
    pub async fn finished(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a task ending in between still wakes us.
            idle.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn finished_waits_for_every_task_and_counts_aborted_ones_out() {
        let cleanups = Cleanups::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(cleanups.spawn(async move {
            let _ = rx.await;
        }));
        assert!(cleanups.spawn(std::future::pending()));
        assert_eq!(cleanups.pending(), 2);
        // Neither has ended: finished must not return.
        let early = tokio::time::timeout(Duration::from_millis(50), cleanups.finished()).await;
        assert!(early.is_err(), "finished returned with two tasks pending");
        tx.send(()).unwrap();
        // The pending-forever task is cut off only with its runtime; here it keeps the count.
        let one_left = tokio::time::timeout(Duration::from_millis(50), cleanups.finished()).await;
        assert!(one_left.is_err());
        assert_eq!(cleanups.pending(), 1);
    }

    #[tokio::test]
    async fn finished_returns_once_all_have_ended() {
        let cleanups = Cleanups::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        cleanups.spawn(async move {
            let _ = rx.await;
        });
        let waiter = tokio::spawn({
            let cleanups = cleanups.clone();
            async move { cleanups.finished().await }
        });
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("finished did not return after the last task ended")
            .unwrap();
        assert_eq!(cleanups.pending(), 0);
    }

    #[test]
    fn a_runtime_shut_down_counts_its_tasks_out() {
        let cleanups = Cleanups::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(cleanups.spawn(std::future::pending()));
        });
        assert_eq!(cleanups.pending(), 1);
        drop(rt);
        assert_eq!(cleanups.pending(), 0);
    }

    #[test]
    fn without_a_runtime_nothing_is_spawned() {
        let cleanups = Cleanups::new();
        assert!(!cleanups.spawn(async {}));
        assert_eq!(cleanups.pending(), 0);
    }
}

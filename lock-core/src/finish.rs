//! Finishing a request its caller stopped waiting for.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs a future on the caller's task; if the caller drops it before it completes, a task
/// spawned on the current tokio runtime finishes it and drops its output.
///
/// For a request whose effect on the server cannot be recalled once sent (a lock statement,
/// an upsert): give it back from the output, after the server has answered — for example by
/// returning a [`PendingLease`](crate::PendingLease) in it, which releases as it drops. A
/// release sent beside the unfinished request could run first and miss what the request then
/// takes. Without a runtime (it is shutting down) the future is dropped unfinished.
pub struct Finish<T: Send + 'static> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> Finish<T> {
    /// Wraps `fut`.
    pub fn new(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Finish {
            fut: Some(Box::pin(fut)),
        }
    }
}

impl<T: Send + 'static> Future for Finish<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(fut) = self.fut.as_mut() else {
            // Polled again after it completed: a caller bug.
            return Poll::Pending;
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl<T: Send + 'static> Drop for Finish<T> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    drop(fut.await);
                });
            }
        }
    }
}

//! The waiting side of an `acquire`, written once for every backend: when the wait ends, how
//! long to sleep at most, and the error for a lock that stayed busy.

use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, ErrorKind, LockName, LockOptions, Operation, Wait};

/// Sleeps until `at`; with `None`, forever (for a `select!` branch of an optional deadline).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The waiting policy of one `acquire` call.
pub struct WaitPlan {
    /// When the caller asked.
    pub requested_at: Instant,
    /// When the wait ends (`None`: never).
    pub deadline: Option<Instant>,
    wait: Wait,
}

impl WaitPlan {
    /// The plan for `opts`, starting now.
    pub fn new(opts: &LockOptions) -> WaitPlan {
        let requested_at = Instant::now();
        let deadline = match opts.wait() {
            Wait::No => Some(requested_at),
            Wait::For(d) => Some(requested_at + d),
            Wait::Forever => None,
        };
        WaitPlan {
            requested_at,
            deadline,
            wait: opts.wait(),
        }
    }

    /// Whether this call may wait at all (then waiters subscribe before trying).
    pub fn may_wait(&self) -> bool {
        self.deadline.is_none_or(|d| d > self.requested_at)
    }

    /// Whether the wait is over.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// The error for a lock still busy when the wait ended: `Contended` when the caller did
    /// not wait, `Timeout` when the wait ran out; `detail` is appended to the message.
    pub fn busy_error(&self, backend: &'static str, name: &LockName, detail: &str) -> Error {
        if matches!(self.wait, Wait::No | Wait::For(Duration::ZERO)) {
            Error::new(
                ErrorKind::Contended,
                backend,
                Operation::Acquire,
                format!("lock {:?} is held by someone else{detail}", name.as_str()),
            )
        } else {
            let waited = self.deadline.unwrap_or(self.requested_at) - self.requested_at;
            Error::new(
                ErrorKind::Timeout,
                backend,
                Operation::Acquire,
                format!(
                    "lock {:?} was still held when the wait of {waited:?} ran out{detail}",
                    name.as_str()
                ),
            )
        }
    }

    /// The instant to wake at: `at`, but no later than the deadline.
    pub fn cap(&self, at: Instant) -> Instant {
        self.deadline.map_or(at, |d| d.min(at))
    }
}

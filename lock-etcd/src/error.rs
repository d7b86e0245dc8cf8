//! etcd client errors → dlock errors, in one place.

use std::future::Future;
use std::time::Duration;

use etcd_client::Error as EtcdError;
use lock_core::{Error, ErrorKind, Operation, Result};

use crate::NAME;

/// Maps an etcd client error: unreachable, timed out or leaderless → `Connection`; a wrong
/// user or password, or a role without rights on the keys → `Auth`; anything else the server
/// refused → `Backend`.
pub(crate) fn from_etcd(op: Operation, what: &str, e: EtcdError) -> Error {
    let (kind, hint) = match &e {
        EtcdError::GRpcStatus(status) if auth_refusal(status.code() as i32, status.message()) => {
            let hint = if status.message().contains("permission denied") {
                " (permission denied: the etcd user's role has no readwrite permission on the \
                 keys dlock uses)"
            } else {
                " (etcd authentication failed: wrong user name or password?)"
            };
            (ErrorKind::Auth, hint)
        }
        EtcdError::GRpcStatus(status) => match status.code() as i32 {
            grpc::CANCELLED
            | grpc::UNKNOWN
            | grpc::DEADLINE_EXCEEDED
            | grpc::ABORTED
            | grpc::UNAVAILABLE => {
                let hint = if status.message().contains("no leader") {
                    " (the etcd cluster has no leader: has it lost its quorum?)"
                } else if status.code() as i32 == grpc::UNAVAILABLE {
                    " (the etcd member is unreachable: is it down?)"
                } else {
                    ""
                };
                (ErrorKind::Connection, hint)
            }
            _ => (ErrorKind::Backend, ""),
        },
        EtcdError::TransportError(_) | EtcdError::IoError(_) => (ErrorKind::Connection, ""),
        _ => (ErrorKind::Backend, ""),
    };
    Error::new(kind, NAME, op, format!("{what} failed{hint}")).with_source(e)
}

/// Whether etcd refused a request for who the client is: a wrong password
/// (`InvalidArgument`, "authentication failed"), a missing or stale token
/// (`Unauthenticated`), or a role without the permission (`PermissionDenied`).
fn auth_refusal(code: i32, message: &str) -> bool {
    matches!(code, grpc::PERMISSION_DENIED | grpc::UNAUTHENTICATED)
        || message.contains("authentication failed")
        || message.contains("permission denied")
}

/// A failed connect: a TLS cause found in the error chain → `Tls` saying which; else as
/// [`from_etcd`].
pub(crate) fn from_connect(what: &str, e: EtcdError, spoke: crate::tls::Spoke) -> Error {
    match crate::tls::cause(&e, spoke) {
        Some(cause) => Error::new(
            ErrorKind::Tls,
            NAME,
            Operation::Connect,
            format!("{what}: {cause}"),
        )
        .with_source(e),
        None => from_etcd(Operation::Connect, what, e),
    }
}

/// gRPC status codes (the numbers are fixed by the gRPC spec).
mod grpc {
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAUTHENTICATED: i32 = 16;
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const UNAVAILABLE: i32 = 14;
}

/// A request that got no answer in time.
pub(crate) fn timed_out(op: Operation, what: &str, after: Duration) -> Error {
    Error::new(
        ErrorKind::Connection,
        NAME,
        op,
        format!(
            "{what}: etcd did not answer within {after:?} (server down, unreachable, or the \
             cluster without a quorum?)"
        ),
    )
}

/// Runs one etcd request with a time limit, mapping its errors.
pub(crate) async fn call<T>(
    op: Operation,
    what: &str,
    limit: Duration,
    request: impl Future<Output = std::result::Result<T, EtcdError>>,
) -> Result<T> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(from_etcd(op, what, e)),
        Err(_) => Err(timed_out(op, what, limit)),
    }
}

/// Retries `op` while it fails with a [`ErrorKind::Connection`] error (a member going down,
/// a leader election, a reconnect after a restart), pausing as [`Backoff::retries`] says
/// (about 50 ms, 100 ms, … up to 1 s) between attempts, as long as the next attempt would
/// start before `until`.
///
/// [`Backoff::retries`]: crate::link::Backoff::retries
pub(crate) async fn retry<T, F, Fut>(until: tokio::time::Instant, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = crate::link::Backoff::retries();
    loop {
        match op().await {
            Err(e) if e.kind() == ErrorKind::Connection => {
                let pause = backoff.pause();
                if tokio::time::Instant::now() + pause >= until {
                    return Err(e);
                }
                tracing::debug!(error = %e, "retrying after {pause:?}");
                tokio::time::sleep(pause).await;
            }
            result => return result,
        }
    }
}

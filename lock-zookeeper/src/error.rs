//! The one place where ZooKeeper client errors become dlock errors.

use std::time::Duration;

use lock_core::{Error, ErrorKind, Operation};

use crate::NAME;

/// Converts a client error from `operation`, described by `what` (e.g. "creating the contender
/// node under /dlock/locks/job").
pub(crate) fn from_zk(operation: Operation, what: &str, err: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Zk;
    let kind = match &err {
        Zk::ConnectionLoss
        | Zk::SessionExpired
        | Zk::SessionMoved
        | Zk::ClientClosed
        | Zk::NoHosts
        | Zk::Timeout
        | Zk::Custom(_) => ErrorKind::Connection,
        Zk::NoAuth | Zk::AuthFailed => ErrorKind::Auth,
        _ => ErrorKind::Backend,
    };
    let hint = match &err {
        Zk::SessionExpired => "; the ZooKeeper session expired",
        Zk::NoAuth => {
            "; the znode's ACL does not allow this client: nodes dlock creates with \
             user:password@ in the URL may be changed only by that user with that password \
             (a wrong password is a different digest identity)"
        }
        Zk::AuthFailed => "; ZooKeeper authentication failed",
        _ => "",
    };
    Error::new(kind, NAME, operation, format!("{what}{hint}")).with_source(err)
}

/// The error for a request ZooKeeper did not answer in time.
pub(crate) fn no_answer(operation: Operation, what: &str, waited: Duration) -> Error {
    Error::new(
        ErrorKind::Connection,
        NAME,
        operation,
        format!(
            "{what}: no answer from ZooKeeper within {waited:?} (is the server down, or has the \
             ensemble lost its quorum?)"
        ),
    )
}

/// True when the error means the request may or may not have been applied (the connection
/// broke while it was in flight). Besides `ConnectionLoss`, the client fails in-flight
/// requests with the connection's own error (an I/O error such as a broken pipe, or "no
/// response from connection"), which it reports as `Custom`.
pub(crate) fn is_connection_loss(err: &zookeeper_client::Error) -> bool {
    matches!(
        err,
        zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_)
    )
}

/// True when the session is over: every ephemeral node it owned is gone.
pub(crate) fn is_session_over(err: &zookeeper_client::Error) -> bool {
    use zookeeper_client::Error as Zk;
    matches!(
        err,
        Zk::SessionExpired | Zk::SessionMoved | Zk::ClientClosed | Zk::AuthFailed
    )
}

//! The object-safe `Backend` trait and the capability description.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::Result;
use crate::guard::Guard;
use crate::name::LockName;
use crate::options::LockOptions;

/// A boxed, `Send` future: what the object-safe traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a backend offers. The behaviour suite runs a test only when the backend claims the
/// capability it needs; asking for something unclaimed fails with
/// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Grants carry a [`FencingToken`](crate::FencingToken) that strictly increases across
    /// successive grants of the same name.
    pub fencing: bool,
    /// [`LockMode::Shared`](crate::LockMode::Shared) is available. Shared grants carry no
    /// fencing token (readers do not write); exclusive grants of the name go on with the
    /// name's tokens, so a writer after readers still gets a higher token than every writer
    /// before.
    pub shared: bool,
    /// Semaphores: [`LockOptions::with_permits`](crate::LockOptions::with_permits).
    pub semaphore: bool,
    /// The lock lives on a lease with a ttl (as opposed to a session that lives as long as a
    /// connection).
    pub lease: bool,
    /// The lease can be extended ([`Guard::extend`] and auto-renewal).
    pub renew: bool,
    /// `at_least` is enforced by the server itself, so it holds even if this process exits
    /// right after releasing. Without it, `at_least` is honoured by extending the lease (or,
    /// for session locks, by releasing later from this process).
    pub at_least: bool,
    /// Waiters are woken by a notification from the server (a blocking call, a watch, pub/sub)
    /// rather than by polling at a fixed interval.
    pub notify: bool,
    /// Fencing tokens survive a server restart (the counter is persisted).
    pub persistent_tokens: bool,
    /// The smallest ttl the backend accepts, if it has one.
    pub min_ttl: Option<Duration>,
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut item = |f: &mut fmt::Formatter<'_>, on: bool, name: &str| -> fmt::Result {
            if on {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                f.write_str(name)?;
            }
            Ok(())
        };
        item(f, self.fencing, "fencing")?;
        item(f, self.shared, "shared")?;
        item(f, self.semaphore, "semaphore")?;
        item(f, self.lease, "lease")?;
        item(f, self.renew, "renew")?;
        item(f, self.at_least, "at_least")?;
        item(f, self.notify, "notify")?;
        item(f, self.persistent_tokens, "persistent_tokens")?;
        if let Some(min) = self.min_ttl {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "min_ttl={min:?}")?;
        }
        Ok(())
    }
}

/// A lock service. Object-safe: the CLI, the conformance suite and the benches hold an
/// `Arc<dyn Backend>` obtained from a URL.
///
/// Implementations must:
/// - call [`LockOptions::validate`] and reject modes they do not support with
///   [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported);
/// - wait by notification where the server allows it and honour the [`Wait`](crate::Wait)
///   policy (`Contended` for a failed try, `Timeout` when a bounded wait runs out);
/// - be cancel-safe: dropping the future returned by `acquire` at any await point never leaves
///   the lock held (a grant that arrives after the caller gave up is released);
/// - hand the grant to [`Guard::new`], which runs the shared renewal and deadline logic.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name as used in errors, metrics and reports (`"memory"`, `"postgres"`,
    /// `"redlock"`, …).
    fn name(&self) -> &'static str;

    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Acquires `name` according to `opts`.
    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>>;

    /// Finishes this client's business with the service before the process exits: waits for
    /// the cleanup it started in the background (withdrawn waiters, dropped guards, releases
    /// held back by `at_least` — so this can take until an `at_least` has passed) and ends its
    /// idle sessions, so nothing it made outlives it on the server. ZooKeeper sends
    /// `closeSession`, which deletes the session's ephemeral nodes at once instead of after the
    /// session timeout; etcd waits for its lease revokes. Sessions that guards still hold stay
    /// open. The backend stays usable: the next `acquire` opens what it needs.
    ///
    /// Bound it with a timeout of your own if the process must exit by a deadline. The default
    /// does nothing, for backends whose records all go with their connection.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

//! Lock options: lease, waiting, renewal, `at_least`, mode.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// How long `acquire` waits when the lock is held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wait {
    /// Try once: a held lock fails at once with [`ErrorKind::Contended`](crate::ErrorKind::Contended).
    #[default]
    No,
    /// Wait up to this long, then fail with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout).
    /// `Wait::For(Duration::ZERO)` behaves like [`Wait::No`].
    For(Duration),
    /// Wait until the lock is granted (or an error other than contention happens).
    Forever,
}

/// Whether the lease is renewed automatically while the [`Guard`](crate::Guard) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renew {
    /// Never renew: the lock is held for at most one ttl (the ShedLock `lockAtMostFor` model).
    Off,
    /// Renew every ttl/3 while the guard lives, but never past `max_hold` after the
    /// acquisition (when set): then the lease runs out and the guard turns `Lost`.
    Auto {
        /// The longest total hold the renewal will sustain; `None` renews until the guard is
        /// released or dropped.
        max_hold: Option<Duration>,
    },
}

impl Default for Renew {
    fn default() -> Self {
        Renew::Auto { max_hold: None }
    }
}

/// Exclusive (one holder) or shared (many holders, no exclusive holder at the same time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LockMode {
    /// One holder at a time.
    #[default]
    Exclusive,
    /// Any number of shared holders, excluding exclusive ones. Only where
    /// [`Capabilities::shared`](crate::Capabilities::shared) is true.
    Shared,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

/// Options for one acquisition. Build with [`LockOptions::new`] and the `with_*` methods;
/// [`LockOptions::validate`] (called by every backend) rejects nonsense with
/// [`ErrorKind::InvalidOptions`](crate::ErrorKind::InvalidOptions).
///
/// Defaults: ttl 30 s, no wait, auto-renew without a hold limit, no `at_least`, exclusive.
///
/// **Semaphores**: [`with_permits(n)`](Self::with_permits) asks for one of `n` permits of the
/// semaphore called by the lock name instead of the lock itself (where
/// [`Capabilities::semaphore`](crate::Capabilities::semaphore) is true). A semaphore is a
/// name space of its own: the semaphore `jobs` and the lock `jobs` are unrelated. The limit is
/// the caller's (Apache Curator's rule for `InterProcessSemaphoreV2`): a request with limit
/// `n` is granted while fewer than `n` permits are held, whatever limit the holders asked
/// with, so callers that share a semaphore must agree on it. A semaphore of `n` permits is
/// `n` slots; a permit is a slot ([`Guard::slot`](crate::Guard::slot)), and where the backend
/// has fencing its token fences that slot: tokens of one slot strictly increase across its
/// grants (a resource serving permit holders keeps the highest token per slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    ttl: Duration,
    wait: Wait,
    renew: Renew,
    at_least: Option<Duration>,
    mode: LockMode,
    permits: Option<u32>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: LockOptions::DEFAULT_TTL,
            wait: Wait::No,
            renew: Renew::default(),
            at_least: None,
            mode: LockMode::Exclusive,
            permits: None,
        }
    }
}

impl LockOptions {
    /// The default lease length.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
    /// The longest ttl accepted (one week): longer leases are almost always a unit mistake.
    pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The largest semaphore limit accepted: every backend keeps a slot per permit.
    pub const MAX_PERMITS: u32 = 1024;

    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease length: how long the lock outlives a holder that stops renewing (for
    /// session-based backends such as PostgreSQL, where the lock lives as long as the session,
    /// the ttl bounds the client-side deadline only).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait for a held lock.
    pub fn with_wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// Auto-renewal policy.
    pub fn with_renew(mut self, renew: Renew) -> Self {
        self.renew = renew;
        self
    }

    /// ShedLock's `lockAtLeastFor`: the lock stays taken until at least this long after the
    /// acquisition, even when released earlier. Must not exceed the ttl.
    pub fn with_at_least(mut self, at_least: Duration) -> Self {
        self.at_least = Some(at_least);
        self
    }

    /// Exclusive or shared.
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = mode;
        self
    }

    /// One permit of a semaphore with `limit` permits, instead of the lock (see the type's
    /// docs). `limit` is 1 to [`MAX_PERMITS`](Self::MAX_PERMITS); the mode stays exclusive
    /// (a permit is not shared).
    pub fn with_permits(mut self, limit: u32) -> Self {
        self.permits = Some(limit);
        self
    }

    /// The lease length.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The wait policy.
    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// The renewal policy.
    pub fn renew(&self) -> Renew {
        self.renew
    }

    /// The `at_least` duration, if any.
    pub fn at_least(&self) -> Option<Duration> {
        self.at_least
    }

    /// The lock mode.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The semaphore limit of a permit request (`None`: the lock itself).
    pub fn permits(&self) -> Option<u32> {
        self.permits
    }

    /// The interval between automatic renewals: a third of the ttl.
    pub fn renew_interval(&self) -> Duration {
        self.ttl / 3
    }

    /// [`validate`](Self::validate), then refuses shared mode and permits where `caps` say the
    /// backend has none (`Unsupported`); the error names `backend`. What every backend checks
    /// first.
    pub fn check_for(&self, backend: &'static str, caps: &crate::Capabilities) -> Result<()> {
        self.validate().map_err(|e| e.in_backend(backend))?;
        if self.permits.is_some() && !caps.semaphore {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                backend,
                crate::Operation::Acquire,
                "semaphores (permits) are not supported by this backend; see the \
                 capabilities of each backend (`dlock backends`)",
            ));
        }
        if self.mode == LockMode::Shared && !caps.shared {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                backend,
                crate::Operation::Acquire,
                "shared locks are not supported by this backend (exclusive only); use \
                 LockMode::Exclusive",
            ));
        }
        Ok(())
    }

    /// Checks the options; every backend calls this before touching the server.
    pub fn validate(&self) -> Result<()> {
        if self.ttl.is_zero() {
            return Err(Error::invalid_options("ttl must be greater than zero"));
        }
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::invalid_options(format!(
                "ttl {:?} is below the 1 ms resolution every backend works with",
                self.ttl
            )));
        }
        if self.ttl > Self::MAX_TTL {
            return Err(Error::invalid_options(format!(
                "ttl {:?} is longer than the maximum of {:?}",
                self.ttl,
                Self::MAX_TTL
            )));
        }
        if let Some(at_least) = self.at_least {
            if at_least > self.ttl {
                return Err(Error::invalid_options(format!(
                    "at_least ({at_least:?}) must not exceed the ttl ({:?}): the lock cannot \
                     stay taken longer than its lease",
                    self.ttl
                )));
            }
        }
        if let Renew::Auto {
            max_hold: Some(max_hold),
        } = self.renew
        {
            if max_hold.is_zero() {
                return Err(Error::invalid_options(
                    "renew max_hold must be greater than zero (use Renew::Off to disable renewal)",
                ));
            }
        }
        if let Some(limit) = self.permits {
            if limit == 0 || limit > Self::MAX_PERMITS {
                return Err(Error::invalid_options(format!(
                    "a semaphore has 1 to {} permits, not {limit}",
                    Self::MAX_PERMITS
                )));
            }
            if self.mode == LockMode::Shared {
                return Err(Error::invalid_options(
                    "a permit is not shared: ask for permits or for a shared lock, not both",
                ));
            }
        }
        if let Wait::For(d) = self.wait {
            if d > Duration::from_secs(100 * 365 * 24 * 3600) {
                return Err(Error::invalid_options(format!(
                    "wait {d:?} is absurdly long; use Wait::Forever"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn defaults_are_valid() {
        LockOptions::new().validate().unwrap();
        assert_eq!(LockOptions::new().renew_interval(), Duration::from_secs(10));
    }

    #[test]
    fn permits_need_the_capability() {
        let opts = LockOptions::new().with_permits(3);
        opts.validate().unwrap();
        let none = crate::Capabilities::default();
        let err = opts.check_for("x", &none).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let sem = crate::Capabilities {
            semaphore: true,
            ..none
        };
        opts.check_for("x", &sem).unwrap();
        let err = LockOptions::new()
            .with_mode(LockMode::Shared)
            .check_for("x", &sem)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }

    #[test]
    fn nonsense_is_rejected_with_invalid_options() {
        let cases = [
            LockOptions::new().with_ttl(Duration::ZERO),
            LockOptions::new().with_ttl(Duration::from_nanos(10)),
            LockOptions::new().with_ttl(Duration::from_secs(8 * 24 * 3600)),
            LockOptions::new()
                .with_ttl(Duration::from_secs(1))
                .with_at_least(Duration::from_secs(2)),
            LockOptions::new().with_renew(Renew::Auto {
                max_hold: Some(Duration::ZERO),
            }),
            LockOptions::new().with_permits(0),
            LockOptions::new().with_permits(LockOptions::MAX_PERMITS + 1),
            LockOptions::new()
                .with_permits(3)
                .with_mode(LockMode::Shared),
        ];
        for opts in cases {
            let err = opts.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidOptions, "{opts:?}: {err}");
        }
    }
}

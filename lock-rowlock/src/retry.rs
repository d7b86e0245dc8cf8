//! A bounded retry policy: so many attempts, exponential backoff with full jitter between.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::Error;

/// How often and how patiently to retry an operation that ended in a retryable error
/// ([`Error::is_retryable`]: a version conflict, a serialization failure, a deadlock).
///
/// Between attempts it sleeps a random time in `[0, min(max_delay, base_delay × 2^k))`
/// ("full jitter"), so racing writers spread out instead of colliding again in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 5 ms base delay, 200 ms cap.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
        }
    }
}

/// The most attempts a policy may ask for: a retry loop is bounded by design.
pub const MAX_ATTEMPTS: u32 = 1000;

impl RetryPolicy {
    /// `max_attempts` in all (1 = no retry, at most [`MAX_ATTEMPTS`]), backing off from
    /// `base_delay` up to `max_delay` (`base_delay <= max_delay`, `max_delay` at most 60 s).
    pub fn new(
        max_attempts: u32,
        base_delay: Duration,
        max_delay: Duration,
    ) -> Result<RetryPolicy, Error> {
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(Error::invalid(
                "retry policy",
                format!("max_attempts {max_attempts}: between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if base_delay > max_delay || max_delay > Duration::from_secs(60) {
            return Err(Error::invalid(
                "retry policy",
                format!("delays {base_delay:?}..{max_delay:?}: base at most max, max at most 60 s"),
            ));
        }
        Ok(RetryPolicy {
            max_attempts,
            base_delay,
            max_delay,
        })
    }

    /// One attempt, no retry.
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The longest sleep before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn delay_cap(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails with an error
    /// that is not retryable, or the attempts run out ([`Error::RetriesExhausted`] with the
    /// last error, or what [`Retryable::exhausted`] makes of it for a caller's own error
    /// type).
    pub async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Err(e) if e.is_retryable() => {
                    if attempt >= self.max_attempts {
                        return Err(E::exhausted(attempt, e));
                    }
                    let cap = self.delay_cap(attempt);
                    if !cap.is_zero() {
                        tokio::time::sleep(jitter(cap)).await;
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// An error type [`RetryPolicy::run`] can retry on: [`Error`], or a caller's own type that
/// wraps it (domain failures such as "out of stock" are then simply not retryable).
pub trait Retryable: Sized {
    /// Whether another attempt may succeed.
    fn is_retryable(&self) -> bool;
    /// The error returned when `attempts` attempts all failed, the last with `last`.
    fn exhausted(attempts: u32, last: Self) -> Self;
}

impl Retryable for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }

    fn exhausted(attempts: u32, last: Error) -> Error {
        Error::RetriesExhausted {
            attempts,
            last: Box::new(last),
        }
    }
}

/// A uniformly random duration in `[0, cap)`, from the standard library's randomly keyed
/// hasher (no RNG crate for one number per retry).
fn jitter(cap: Duration) -> Duration {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(cap.as_nanos());
    let r = h.finish();
    let nanos = cap.as_nanos() as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { r % nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = RetryPolicy::new(6, Duration::from_millis(5), Duration::from_millis(30)).unwrap();
        let caps: Vec<u128> = (1..=5).map(|a| p.delay_cap(a).as_millis()).collect();
        assert_eq!(caps, [5, 10, 20, 30, 30]);
        assert!(p.delay_cap(200) == Duration::from_millis(30));
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(7)) < Duration::from_millis(7));
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        let ms = Duration::from_millis;
        assert!(RetryPolicy::new(0, ms(1), ms(2)).is_err());
        assert!(RetryPolicy::new(MAX_ATTEMPTS + 1, ms(1), ms(2)).is_err());
        assert!(RetryPolicy::new(3, ms(3), ms(2)).is_err());
        assert!(RetryPolicy::new(3, ms(3), Duration::from_secs(61)).is_err());
    }

    #[tokio::test]
    async fn retries_only_retryable_errors_and_stops_at_the_bound() {
        let p = RetryPolicy::new(3, Duration::ZERO, Duration::ZERO).unwrap();
        let mut calls = 0;
        let r: Result<(), Error> = p
            .run(|_| {
                calls += 1;
                async {
                    Err(Error::Conflict {
                        table: "t".into(),
                        id: 1,
                        expected: 1,
                        current: 2,
                    })
                }
            })
            .await;
        assert!(matches!(
            r,
            Err(Error::RetriesExhausted { attempts: 3, .. })
        ));
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<(), Error> = p
            .run(|_| {
                calls += 1;
                async {
                    Err(Error::NotFound {
                        table: "t".into(),
                        id: 1,
                    })
                }
            })
            .await;
        assert!(matches!(r, Err(Error::NotFound { .. })));
        assert_eq!(calls, 1);
        let r = p
            .run(|a| async move {
                if a < 2 {
                    Err(Error::Aborted {
                        code: "40001".into(),
                        message: "x".into(),
                    })
                } else {
                    Ok(a)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
    }
}

//! What the single-instance and the Redlock backends share: option checks, per-acquisition
//! tokens, and the waiting policy (deadline, fallback re-check with jitter).

use std::time::Duration;

use lock_core::{Error, ErrorKind, LockName, LockOptions, Operation};
use tokio::time::Instant;

/// How long a waiter sleeps at most before it re-checks a lock whose release it may have
/// missed (pub/sub down, a key deleted by hand, a lock without expiry): 1 s ± 20 %. A lock
/// that expires sooner is re-checked at its expiry; a release is seen at once by pub/sub.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// `d` scaled by a random factor in `[1 - spread, 1 + spread]`.
pub(crate) fn jittered(d: Duration, spread: f64) -> Duration {
    let unit = (lock_core::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

/// When to look again at a lock that is busy for `pttl_ms` more (negative: no expiry known).
pub(crate) fn next_check(now: Instant, pttl_ms: i64) -> Instant {
    let fallback = jittered(RECHECK, 0.2);
    let at_expiry = u64::try_from(pttl_ms)
        .ok()
        .map(|ms| Duration::from_millis(ms.saturating_add(1)));
    now + at_expiry.map_or(fallback, |d| d.min(fallback))
}

/// Checks the options: valid for dlock, a mode `caps` has, ttl not below `min_ttl`.
pub(crate) fn check_options(
    backend: &'static str,
    caps: &lock_core::Capabilities,
    opts: &LockOptions,
    min_ttl: Duration,
) -> lock_core::Result<()> {
    opts.check_for(backend, caps)?;
    if opts.ttl() < min_ttl {
        return Err(Error::new(
            ErrorKind::InvalidOptions,
            backend,
            Operation::Validate,
            format!(
                "ttl {:?} is below this backend's minimum of {min_ttl:?}",
                opts.ttl()
            ),
        ));
    }
    Ok(())
}

/// The key of `name`: the prefix, then the name's UTF-8 bytes, unchanged.
pub(crate) fn key_of(prefix: &[u8], name: &LockName) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.as_bytes().len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_band() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(1000), 0.2);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }

    #[tokio::test]
    async fn next_check_is_the_expiry_or_the_fallback() {
        let now = Instant::now();
        assert_eq!(next_check(now, 10), now + Duration::from_millis(11));
        let far = next_check(now, 60_000) - now;
        assert!(far <= Duration::from_millis(1200) && far >= Duration::from_millis(800));
        // No expiry (-1) or no key (-2): the jittered fallback, never a tight loop.
        for pttl in [-1, -2] {
            let none = next_check(now, pttl) - now;
            assert!(
                none <= Duration::from_millis(1200) && none >= Duration::from_millis(800),
                "{pttl}: {none:?}"
            );
        }
    }

    #[test]
    fn keys_are_prefix_then_name_bytes() {
        let name = LockName::new("a:b c/ü*").unwrap();
        assert_eq!(key_of(b"dlock:", &name), "dlock:a:b c/ü*".as_bytes());
        assert_eq!(key_of(b"", &name), name.as_bytes());
    }
}

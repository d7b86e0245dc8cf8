//! Unique values for tokens, owner ids and jitter, without a random-number crate.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// SipHash with the process's random keys (from the OS, via std) over a counter, the clock
/// and the pid: distinct in every call of every process, also across a fork (the pid).
fn hasher() -> impl Hasher {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h
}

/// 64 unpredictable bits. Meant for values that must be unique (lock tokens, owner ids) and
/// for jitter, not for secrets.
pub fn random_u64() -> u64 {
    hasher().finish()
}

/// A fresh 128-bit value as 32 hex digits (a lock token, the unique part of an owner id):
/// two outputs of one hasher state, so one clock read and one pid lookup per token.
pub fn unique_hex() -> String {
    let mut h = hasher();
    let high = h.finish();
    h.write_u8(1);
    format!("{high:016x}{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_distinct_hex() {
        let values: std::collections::HashSet<String> = (0..1000).map(|_| unique_hex()).collect();
        assert_eq!(values.len(), 1000);
        assert!(
            values
                .iter()
                .all(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}

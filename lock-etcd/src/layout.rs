//! Where a lock lives in etcd's key space: the layout of etcd's own `concurrency.Mutex`
//! (what `etcdctl lock NAME` writes), so the two exclude each other.
//!
//! Lock `NAME` under URL prefix `P` is the key range `P NAME /`; each contender writes
//! `P NAME / <its lease id in lowercase hex>` with an empty value under that lease. The key
//! with the lowest create revision holds the lock.

/// The key prefix of lock `name`: `prefix + name + "/"`.
pub(crate) fn lock_prefix(prefix: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.len() + 1);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key.push(b'/');
    key
}

/// The key a contender holding lease `lease` writes under `lock_prefix` (Go's
/// `fmt.Sprintf("%s%x", pfx, leaseID)`).
pub(crate) fn contender_key(lock_prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = lock_prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Whether `key` is a contender of the lock at `lock_prefix` itself, rather than of a lock
/// whose name continues with `/…` (lock `a/b` lives inside lock `a`'s prefix `a/`).
pub(crate) fn is_contender(lock_prefix: &[u8], key: &[u8]) -> bool {
    match key.strip_prefix(lock_prefix) {
        Some(rest) => !rest.is_empty() && !rest.contains(&b'/'),
        None => false,
    }
}

/// Renders a key for messages (lossy UTF-8).
pub(crate) fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_etcdctl_lock() {
        // `etcdctl lock jobs/purge` with lease 0x694d7c6e3c5a8c04 writes this key.
        let p = lock_prefix("", "jobs/purge");
        assert_eq!(p, b"jobs/purge/");
        assert_eq!(
            contender_key(&p, 0x694d_7c6e_3c5a_8c04),
            b"jobs/purge/694d7c6e3c5a8c04"
        );
        assert_eq!(lock_prefix("app/", "x"), b"app/x/");
    }

    #[test]
    fn nested_names_are_not_contenders() {
        let a = lock_prefix("", "a");
        assert!(is_contender(&a, b"a/694d"));
        assert!(!is_contender(&a, b"a/b/694d"));
        assert!(!is_contender(&a, b"a/"));
        assert!(!is_contender(&a, b"ab/1"));
    }
}

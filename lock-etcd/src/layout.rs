//! Where a lock lives in etcd's key space: the layout of etcd's own `concurrency.Mutex`
//! (what `etcdctl lock NAME` writes) for the exclusive lock, the layout of etcd's
//! `recipes.RWMutex` for readers, and slot keys of our own for semaphores.
//!
//! Lock `NAME` under URL prefix `P` is the key range `P NAME /`:
//! - an exclusive contender writes `P NAME / <its lease id in lowercase hex>` (at most 16
//!   characters) with an empty value under that lease, as `concurrency.Mutex` does;
//! - a reader writes `P NAME /read/ <UnixNano in decimal>` (19 digits today), as
//!   `recipes.RWMutex.RLock` does; the recipe's writers write `P NAME /write/ <UnixNano>`.
//!
//! The key with the lowest create revision among those that block a contender goes first:
//! everything blocks an exclusive contender; a reader is blocked only by exclusive contenders
//! and recipe writers (so a waiting writer holds back the readers that queue after it). A
//! recipe key is told from a nested lock's contender (lock `NAME/read` writes
//! `NAME/read/<lease hex>`) by its suffix: 17 or more decimal digits, which no lease id in hex
//! has.
//!
//! A semaphore `NAME` of `n` permits is the slots `P NAME \0sem/ <slot>` for slot `0..n`, each
//! created only when absent, under its holder's lease. NUL is not allowed in lock names, so no
//! lock's key range (`… /`) contains a slot and no lock name can produce one.

/// Who is asking: what blocks a contender depends on its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The exclusive lock (etcd's `Mutex`, or the recipe's writer): blocked by every older key.
    Exclusive,
    /// A shared holder (the recipe's reader): blocked by older exclusive contenders only.
    Reader,
}

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

/// The key a reader writes under `lock_prefix`: `read/` and a decimal number (the recipe's
/// `UnixNano`; unique per call in this process, see [`unique_nanos`]).
pub(crate) fn reader_key(lock_prefix: &[u8]) -> Vec<u8> {
    let mut key = lock_prefix.to_vec();
    key.extend_from_slice(format!("read/{}", unique_nanos()).as_bytes());
    key
}

/// The key a recipe writer writes under `lock_prefix` (dlock's exclusive lock with
/// `writers=rwmutex`): `write/` and a decimal number, as [`reader_key`].
pub(crate) fn writer_key(lock_prefix: &[u8]) -> Vec<u8> {
    let mut key = lock_prefix.to_vec();
    key.extend_from_slice(format!("write/{}", unique_nanos()).as_bytes());
    key
}

/// The wall clock in nanoseconds since 1970 (what Go's `time.Now().UnixNano()` gives), and at
/// least one more than the last value handed out in this process.
fn unique_nanos() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The key range of semaphore `name` under `prefix`: `prefix + name + "\0sem/"`.
pub(crate) fn semaphore_prefix(prefix: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.len() + 5);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(b"\0sem/");
    key
}

/// The key of permit slot `slot` in the semaphore at `sem_prefix`.
pub(crate) fn slot_key(sem_prefix: &[u8], slot: u32) -> Vec<u8> {
    let mut key = sem_prefix.to_vec();
    key.extend_from_slice(slot.to_string().as_bytes());
    key
}

/// The slot a key of the semaphore at `sem_prefix` stands for (`None`: not a slot key).
pub(crate) fn slot_of(sem_prefix: &[u8], key: &[u8]) -> Option<u32> {
    let rest = key.strip_prefix(sem_prefix)?;
    if rest.is_empty() || rest.len() > 4 || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// A recipe key's unique suffix: 17 or more decimal digits (a lease id in hex has at most 16).
fn is_nanos(rest: &[u8]) -> bool {
    rest.len() >= 17 && rest.iter().all(u8::is_ascii_digit)
}

/// Whether `key` is a writer of the lock at `lock_prefix` itself (a `concurrency.Mutex` key or
/// a recipe writer's), rather than a key of a lock whose name continues with `/…` (lock `a/b`
/// lives inside lock `a`'s prefix `a/`) or a reader.
#[cfg(test)]
pub(crate) fn is_contender(lock_prefix: &[u8], key: &[u8]) -> bool {
    blocks(lock_prefix, key, Role::Reader)
}

/// Whether `key`, if older, keeps a contender of `role` of the lock at `lock_prefix` waiting:
/// exclusive contenders and recipe writers block everyone, readers block exclusive contenders.
/// Keys of nested locks block nobody.
pub(crate) fn blocks(lock_prefix: &[u8], key: &[u8], role: Role) -> bool {
    let Some(rest) = key.strip_prefix(lock_prefix) else {
        return false;
    };
    if !rest.is_empty() && !rest.contains(&b'/') && !is_nanos(rest) {
        return true;
    }
    if rest.strip_prefix(b"write/").is_some_and(is_nanos) {
        return true;
    }
    role == Role::Exclusive && rest.strip_prefix(b"read/").is_some_and(is_nanos)
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

    #[test]
    fn recipe_keys_block_by_role() {
        let a = lock_prefix("", "a");
        let read = b"a/read/1765143600123456789";
        let write = b"a/write/1765143600123456789";
        // A reader waits for writers only; a writer waits for everyone.
        assert!(blocks(&a, read, Role::Exclusive));
        assert!(!blocks(&a, read, Role::Reader));
        assert!(blocks(&a, write, Role::Reader));
        assert!(blocks(&a, write, Role::Exclusive));
        assert!(blocks(&a, b"a/694d7c6e3c5a8c04", Role::Reader));
        // Lock `a/read`'s own contender (a lease id) is a nested lock's key for `a` ...
        assert!(!blocks(&a, b"a/read/694d7c6e3c5a8c04", Role::Exclusive));
        // ... and `a`'s readers are not contenders of lock `a/read`.
        let ar = lock_prefix("", "a/read");
        assert!(is_contender(&ar, b"a/read/694d7c6e3c5a8c04"));
        assert!(!is_contender(&ar, read));
        // A 16-digit lease id is still a lease id.
        assert!(is_contender(&a, b"a/1234567890123456"));
    }

    #[test]
    fn reader_keys_are_unique_recipe_keys() {
        let a = lock_prefix("", "a");
        let (k1, k2) = (reader_key(&a), reader_key(&a));
        assert_ne!(k1, k2);
        assert!(blocks(&a, &k1, Role::Exclusive) && !blocks(&a, &k1, Role::Reader));
    }

    #[test]
    fn slot_keys_round_trip_and_stay_out_of_lock_ranges() {
        let s = semaphore_prefix("app/", "jobs");
        assert_eq!(s, b"app/jobs\0sem/");
        assert_eq!(slot_key(&s, 7), b"app/jobs\0sem/7");
        assert_eq!(slot_of(&s, b"app/jobs\0sem/7"), Some(7));
        assert_eq!(slot_of(&s, b"app/jobs\0sem/x"), None);
        assert!(!slot_key(&s, 0).starts_with(&lock_prefix("app/", "jobs")));
    }
}

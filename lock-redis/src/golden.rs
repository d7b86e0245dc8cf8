//! Golden vectors: the Redis keys, values and scripts of `redis://` and `redlock://`.
//!
//! Two dlock versions exclude each other only while they write the same key for a name and
//! check the same value; fencing tokens keep increasing across an upgrade only while both
//! count in the same hash field. A failing vector here is a breaking change (see
//! `CHANGELOG.md`), never something to update in passing. The layout is the README's table.

use lock_core::{ConnectUrl, LockName};
use redis::Script;

use crate::config::Config;
use crate::scripts::{ACQUIRE_LUA, FenceSlot, RELEASE_LUA, TOUCH_LUA};
use crate::wait::key_of;

fn prefix_of(url: &str) -> Vec<u8> {
    let url = ConnectUrl::parse(url).unwrap();
    Config::from_url(&url, "golden").unwrap().prefix
}

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

/// Lock `NAME` is the string key `prefix ++ NAME`, byte for byte; the prefix is `dlock:`
/// unless the URL's `prefix` option (percent-decoded) says otherwise. Redlock uses the same key
/// on every instance.
#[test]
fn lock_keys() {
    let cases: &[(&str, &str, &[u8])] = &[
        (
            "redis://127.0.0.1:6379",
            "nightly-purge",
            b"dlock:nightly-purge",
        ),
        ("redis://127.0.0.1", "jobs/purge", b"dlock:jobs/purge"),
        (
            "redis://h/3?prefix=app%3Ajobs%3A",
            "report",
            b"app:jobs:report",
        ),
        ("redis://h?prefix=", "bare", b"bare"),
        ("redis://h", "ключ 🔒", "dlock:ключ 🔒".as_bytes()),
        (
            "redlock://a:1,b:2,c:3",
            "nightly-purge",
            b"dlock:nightly-purge",
        ),
        (
            "redlock://a:1,b:2,c:3?prefix=x%3A",
            "nightly-purge",
            b"x:nightly-purge",
        ),
    ];
    for (url, n, key) in cases {
        assert_eq!(key_of(&prefix_of(url), &name(n)), *key, "{url} {n}");
    }
}

/// The fencing counter of lock `NAME` (`redis://` only): field `NAME` of the hash whose key is
/// the prefix itself.
#[test]
fn fencing_counter_slot() {
    let prefix = prefix_of("redis://127.0.0.1:6379");
    let n = name("nightly-purge");
    let slot = FenceSlot::of(&prefix, &n);
    assert_eq!(slot.hash, b"dlock:");
    assert_eq!(slot.field, b"nightly-purge");
}

/// The value is the acquisition's token, 32 lowercase hex digits (128 random bits); other
/// versions only ever compare it for equality, so its length and alphabet are what is pinned.
#[test]
fn lock_values_are_32_hex_digits() {
    for _ in 0..100 {
        let token = lock_core::unique_hex();
        assert_eq!(token.len(), 32, "{token}");
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{token}"
        );
    }
}

/// The scripts' SHA-1 (what `EVALSHA` sends), computed with Python's hashlib over the script
/// texts as they stand in `scripts.rs`. They carry the semantics two versions must share: set
/// only if absent, act only on an equal value, count tokens in the counter hash (seeded from
/// `TIME` in microseconds), publish `released` on the key's channel. A changed script is not
/// necessarily a breaking change, but it must be checked beside the previous one on the same
/// keys and its new hash pinned on purpose, with a CHANGELOG entry.
#[test]
fn script_hashes() {
    let cases = [
        (ACQUIRE_LUA, "ae1e3871c5e799370181a9cc07a5865931c4a8c7"),
        (TOUCH_LUA, "a77dc60212ca33c9ee27a6810a95a960722639f0"),
        (RELEASE_LUA, "4eded1420912eab6d42f8a0e599c80575048681d"),
    ];
    for (code, sha1) in cases {
        assert_eq!(Script::new(code).get_hash(), sha1, "{code}");
    }
}

/// The reader–writer and semaphore layout (`multi_scripts.rs`): sub-keys are the lock key, a
/// NUL, and a letter (no lock key contains NUL); a slot's counter field is the name, a NUL
/// and the slot.
#[test]
fn shared_and_semaphore_keys() {
    use crate::multi_scripts::{SHARED_MARKER, sub_key};
    let prefix = prefix_of("redis://127.0.0.1:6379");
    let key = crate::wait::key_of(&prefix, &name("reports"));
    assert_eq!(sub_key(&key, b"r"), b"dlock:reports\0r");
    assert_eq!(sub_key(&key, b"w"), b"dlock:reports\0w");
    let sem = crate::multi::semaphore_key(&prefix, &name("reports"));
    assert_eq!(sem, b"dlock:reports\0s");
    assert_eq!(sub_key(&sem, b"o"), b"dlock:reports\0s\0o");
    assert_eq!(SHARED_MARKER, "dlock-shared");
}

/// The SHA-1 of the reader–writer and semaphore scripts (Python's hashlib over the texts in
/// `multi_scripts.rs`), pinned as the lock's are.
#[test]
fn multi_script_hashes() {
    use crate::multi_scripts::*;
    let cases = [
        (READ_ACQUIRE_LUA, "772499b653acba3ff8bacd8929c8f0c8d24efc40"),
        (READ_TOUCH_LUA, "034e04f33db08f6cb70d87d0d6ca7323d9f4ae90"),
        (WRITER_WAITS_LUA, "92179bc08f96d3697eb991bb60af5160ce04b11c"),
        (
            PERMIT_ACQUIRE_LUA,
            "30d8c5c0ef6647efef88bf8048530dc529dd971a",
        ),
        (PERMIT_TOUCH_LUA, "511a89fcba157258820e07c68d45ca25c91d3b76"),
    ];
    for (code, sha1) in cases {
        assert_eq!(Script::new(code).get_hash(), sha1, "{code}");
    }
}

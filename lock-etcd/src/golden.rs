//! Golden vectors: the etcd keys a lock name maps to.
//!
//! dlock shares the layout of etcd's `concurrency.Mutex` (what `etcdctl lock NAME` writes), so
//! dlock versions exclude each other and `etcdctl lock` only while these keys stay as they
//! are. A failing vector is a breaking change (see `CHANGELOG.md`), never something to update
//! in passing.

use lock_core::ConnectUrl;

use crate::config::Config;
use crate::layout::{contender_key, is_contender, lock_prefix};

fn prefix_of(url: &str) -> String {
    Config::parse(&ConnectUrl::parse(url).unwrap())
        .unwrap()
        .prefix
}

/// Measured with etcd 3.4.23 and `etcdctl lock locks/nightly-purge -- etcdctl get --prefix
/// locks/nightly-purge/ -w json`: the contender key held lease 7587899402633075973 and was
/// `locks/nightly-purge/694da24de557dd05` (the lease id in lowercase hex, Go's `%x`), with an
/// empty value. dlock's `etcd://HOST/locks` with name `nightly-purge` must write that key.
#[test]
fn contender_key_matches_etcdctl_lock() {
    let prefix = lock_prefix(&prefix_of("etcd://127.0.0.1:2379/locks"), "nightly-purge");
    assert_eq!(prefix, b"locks/nightly-purge/");
    assert_eq!(
        contender_key(&prefix, 7587899402633075973),
        b"locks/nightly-purge/694da24de557dd05"
    );
}

/// The URL's path is the key prefix, with a `/` added when missing; no path, no prefix (lock
/// `NAME` is then `etcdctl lock NAME`). The name goes in unchanged, slashes included.
#[test]
fn url_path_and_name_make_the_key_prefix() {
    let cases: &[(&str, &str, &[u8])] = &[
        ("etcd://h:2379", "jobs/purge", b"jobs/purge/"),
        ("etcd://h:2379/", "nightly-purge", b"nightly-purge/"),
        (
            "etcd://h:2379/locks",
            "nightly-purge",
            b"locks/nightly-purge/",
        ),
        (
            "etcd://h:2379/locks/",
            "nightly-purge",
            b"locks/nightly-purge/",
        ),
        (
            "etcd://a:1,b:2/app/locks",
            "ключ",
            "app/locks/ключ/".as_bytes(),
        ),
        ("etcd://h:2379//abs", "x", b"/abs/x/"),
    ];
    for (url, name, key) in cases {
        assert_eq!(lock_prefix(&prefix_of(url), name), *key, "{url} {name}");
    }
}

/// Lease ids in lowercase hex without leading zeros or `0x`, as Go's `%x` prints them.
#[test]
fn lease_ids_in_lowercase_hex() {
    let p = lock_prefix("", "job");
    let cases: &[(i64, &[u8])] = &[
        (1, b"job/1"),
        (0xabc, b"job/abc"),
        (0x0123_4567_89ab_cdef, b"job/123456789abcdef"),
        (i64::MAX, b"job/7fffffffffffffff"),
    ];
    for (lease, key) in cases {
        assert_eq!(contender_key(&p, *lease), *key, "{lease:#x}");
        assert!(is_contender(&p, key));
    }
}

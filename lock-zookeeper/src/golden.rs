//! Golden vectors: the znode paths a lock name maps to, and the contender nodes' names.
//!
//! dlock shares Apache Curator's `InterProcessMutex` layout (INTEROP.md: a container node per
//! lock, `_c_<uuid>-lock-<10-digit sequence>` contenders, ordered by the sequence), which is
//! how dlock versions and Curator exclude each other. A failing vector here is a breaking
//! change (see `CHANGELOG.md`), never something to update in passing.

use lock_core::LockName;

use crate::config::Config;
use crate::layout::{LOCK_MARKER, Standing, contender_prefix, sort_contenders, standing};

fn lock_path(rest: &str, name: &str) -> String {
    Config::parse(rest)
        .unwrap()
        .lock_path(&LockName::new(name).unwrap())
}

/// `zk://HOSTS[/chroot][?base=…]` and a name → the lock's znode: chroot, then base (default
/// `/dlock/locks`), then the name with `%`, `/` and what ZooKeeper refuses percent-escaped.
/// `zk://h:2181?base=/locks` with name `NAME` is Curator's `new InterProcessMutex(client,
/// "/locks/NAME")`, the pairing the Curator interop test runs.
#[test]
fn lock_paths() {
    let cases = [
        ("h:2181", "nightly-purge", "/dlock/locks/nightly-purge"),
        (
            "h:2181?base=/locks",
            "nightly-purge",
            "/locks/nightly-purge",
        ),
        ("a:1,b:2/app?base=/locks", "report", "/app/locks/report"),
        ("h/app", "job", "/app/dlock/locks/job"),
        ("h?base=/locks", "jobs/purge", "/locks/jobs%2Fpurge"),
        ("h?base=/locks", "100%", "/locks/100%25"),
        ("h?base=/locks", "..", "/locks/%2E%2E"),
        ("h?base=/locks", "ключ", "/locks/ключ"),
        ("h?base=/locks", "🔒", "/locks/%F0%9F%94%92"),
        ("h?base=/locks", "tab\there", "/locks/tab%09here"),
        ("h?base=/", "job", "/job"),
        ("h?base=/", "zookeeper", "/%7Aookeeper"),
        ("h?base=/locks", "zookeeper", "/locks/zookeeper"),
    ];
    for (rest, name, path) in cases {
        assert_eq!(lock_path(rest, name), path, "zk://{rest} {name:?}");
    }
}

/// A contender's node name before the server appends its 10-digit sequence: Curator's
/// protected prefix `_c_`, the hyphenated lower-case UUID (36 characters), `-lock-`.
#[test]
fn contender_node_names() {
    let uuid = uuid::Uuid::from_u128(0x6ba7b810_9dad_11d1_80b4_00c04fd430c8);
    let prefix = contender_prefix(&uuid, LOCK_MARKER);
    assert_eq!(prefix, "_c_6ba7b810-9dad-11d1-80b4-00c04fd430c8-lock-");
    assert_eq!(prefix.len(), 3 + 36 + 6);
}

/// Order is by the sequence after the last `lock-`, whoever created the node (Curator, an
/// older dlock, a plain `lock-` node); the first holds the lock.
#[test]
fn contenders_order_by_sequence() {
    let mut children = vec![
        "_c_a1a1a1a1-0000-4000-8000-000000000000-lock-0000000012".to_string(),
        "_c_6ba7b810-9dad-11d1-80b4-00c04fd430c8-lock-0000000010".to_string(),
        "lock-0000000011".to_string(),
        "_c_ffffffff-ffff-4fff-bfff-ffffffffffff-lock-0000000009".to_string(),
    ];
    sort_contenders(&mut children);
    let sequences: Vec<&str> = children.iter().map(|c| &c[c.len() - 10..]).collect();
    assert_eq!(
        sequences,
        ["0000000009", "0000000010", "0000000011", "0000000012"]
    );
    assert_eq!(
        standing(
            &children,
            "_c_6ba7b810-9dad-11d1-80b4-00c04fd430c8-lock-",
            false
        ),
        Standing::Waiting {
            ours: "_c_6ba7b810-9dad-11d1-80b4-00c04fd430c8-lock-0000000010",
            predecessor: "_c_ffffffff-ffff-4fff-bfff-ffffffffffff-lock-0000000009",
        }
    );
}

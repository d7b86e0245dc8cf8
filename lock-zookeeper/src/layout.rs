//! The znode layout: how a lock name becomes one znode name, and Apache Curator's contender
//! nodes and their order: `InterProcessMutex`'s `_c_<uuid>-lock-<sequence>`,
//! `InterProcessReadWriteLock`'s `_c_<uuid>-__READ__<sequence>` and
//! `_c_<uuid>-__WRIT__<sequence>` (all ephemeral sequential children of the lock node), and
//! `InterProcessSemaphoreV2`'s `locks/` (an `InterProcessMutex`) and
//! `leases/_c_<uuid>-lease-<sequence>` under the semaphore node.

use std::fmt::Write as _;

/// Curator's "protected" prefix: a contender node starts with `_c_<uuid>-` so its creator can
/// find it again after a connection loss during the create.
pub(crate) const PROTECTED_PREFIX: &str = "_c_";
/// The lock name Curator's `InterProcessMutex` gives its contender nodes; the sequence number
/// follows its last occurrence.
pub(crate) const LOCK_MARKER: &str = "lock-";
/// `InterProcessReadWriteLock`'s reader nodes.
pub(crate) const READ_MARKER: &str = "__READ__";
/// `InterProcessReadWriteLock`'s writer nodes.
pub(crate) const WRITE_MARKER: &str = "__WRIT__";
/// `InterProcessSemaphoreV2`'s lease nodes (under `leases/`).
pub(crate) const LEASE_MARKER: &str = "lease-";
/// What follows a marker: the server's 10-digit sequence.
const SEQUENCE_DIGITS: usize = 10;

/// Whether a child of a lock node keeps a contender in `shared` mode (a reader) or not (an
/// exclusive contender) waiting, when it is older: an exclusive contender waits for every
/// contender node; a reader waits for writers and `InterProcessMutex` nodes only.
pub(crate) fn blocks(child: &str, shared: bool) -> bool {
    let Some((marker, _)) = sequence_after_marker(child) else {
        return false;
    };
    !shared || marker != READ_MARKER
}

/// The marker a contender node's sequence follows and that sequence, for nodes whose name ends
/// in one of [`LOCK_MARKER`], [`READ_MARKER`], [`WRITE_MARKER`] and 10 digits.
fn sequence_after_marker(child: &str) -> Option<(&'static str, &str)> {
    let seq_at = child.len().checked_sub(SEQUENCE_DIGITS)?;
    let (head, seq) = child.split_at_checked(seq_at)?;
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    [LOCK_MARKER, READ_MARKER, WRITE_MARKER]
        .into_iter()
        .find(|m| head.ends_with(m))
        .map(|m| (m, seq))
}

/// True for characters ZooKeeper refuses in a node name (its `PathUtils.validatePath`): NUL,
/// C0 and C1 controls, DEL, the range U+D800–U+F8FF (surrogates and private use) and
/// U+FFF0–U+FFFF. Characters beyond U+FFFF are sent to the Java server as surrogate pairs, so
/// they are refused too.
pub(crate) fn is_forbidden_char(c: char) -> bool {
    let u = u32::from(c);
    u <= 0x1f
        || (0x7f..=0x9f).contains(&u)
        || (0xd800..=0xf8ff).contains(&u)
        || (0xfff0..=0xffff).contains(&u)
        || u > 0xffff
}

/// The znode name of a lock name: the name itself, except that `%`, `/` and the characters
/// ZooKeeper refuses are percent-escaped (each UTF-8 byte as `%XX`, upper-case hex), the names
/// `.` and `..` become `%2E` and `%2E%2E`, and, directly under the root of the tree (where
/// `/zookeeper` is the server's own), `zookeeper` becomes `%7Aookeeper`.
///
/// Every `%` in the result starts an escape, so the mapping is one-to-one: `a/b` → `a%2Fb`
/// and `a%2Fb` → `a%252Fb` are different znodes, and `a_b` is left alone.
pub(crate) fn encode_name(name: &str, at_zk_root: bool) -> String {
    match name {
        "." => return "%2E".to_string(),
        ".." => return "%2E%2E".to_string(),
        "zookeeper" if at_zk_root => return "%7Aookeeper".to_string(),
        _ => {}
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '%' || c == '/' || is_forbidden_char(c) {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The node of the semaphore named like the lock at `lock_path`: `<lock path>%sem`. A lock
/// name's node never contains a `%` that does not start a hex escape, so no lock lives there;
/// Curator's `InterProcessSemaphoreV2` on that path shares the semaphore.
pub(crate) fn semaphore_path(lock_path: &str) -> String {
    format!("{lock_path}%sem")
}

/// The name prefix of one contender's node, `_c_<uuid>-<marker>` (`marker` one of the
/// markers above); the server appends the 10-digit sequence.
pub(crate) fn contender_prefix(uuid: &uuid::Uuid, marker: &str) -> String {
    format!("{PROTECTED_PREFIX}{}-{marker}", uuid.hyphenated())
}

/// Curator's sort key for a child of a lock node (`StandardLockInternalsDriver.fixForSorting`,
/// applied for `__READ__` and `__WRIT__` by the read–write lock's driver): the sequence after
/// the marker, or the whole name for nodes that are not contenders. A mutex's children sort the
/// same way in Curator (its nodes all end in `lock-` and a sequence); dlock sorts every kind of
/// contender by sequence, so that its own contenders see all three kinds in one queue.
fn sort_key(child: &str) -> &str {
    match sequence_after_marker(child) {
        Some((_, seq)) => seq,
        None => match child.rfind(LOCK_MARKER) {
            Some(i) => &child[i + LOCK_MARKER.len()..],
            None => child,
        },
    }
}

/// Sorts the children of a lock node the way Curator does (a stable sort by [`sort_key`]
/// compared as strings; the zero-padded sequences make that numeric order). Index 0 holds the
/// lock. dlock and Curator must agree on this order, or they would not exclude each other.
pub(crate) fn sort_contenders(children: &mut [String]) {
    children.sort_by(|a, b| sort_key(a).cmp(sort_key(b)));
}

/// What a sorted list of contenders says about the one whose name starts with `prefix`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Standing<'a> {
    /// Ours is first: the lock is ours.
    Holder(&'a str),
    /// Ours waits behind `predecessor`.
    Waiting { ours: &'a str, predecessor: &'a str },
    /// No node of ours is there (never created, or deleted: the session ended).
    Absent,
}

/// Where the node starting with `prefix` stands among the sorted `children`, for an exclusive
/// contender (`shared` false: every older contender node is in the way; it waits on the one
/// right before it) or a reader (only older writers and mutex nodes are; as Curator's reader,
/// it waits on the first of them).
pub(crate) fn standing<'a>(sorted: &'a [String], prefix: &str, shared: bool) -> Standing<'a> {
    let Some(i) = sorted.iter().position(|c| c.starts_with(prefix)) else {
        return Standing::Absent;
    };
    let before = &sorted[..i];
    let blocker = if shared {
        before.iter().find(|c| blocks(c, true))
    } else {
        before.iter().rev().find(|c| blocks(c, false))
    };
    match blocker {
        None => Standing::Holder(&sorted[i]),
        Some(b) => Standing::Waiting {
            ours: &sorted[i],
            predecessor: b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_one_to_one_onto_valid_znode_names() {
        let cases = [
            ("job", "job"),
            ("emp_details_purge", "emp_details_purge"),
            ("a/b", "a%2Fb"),
            ("a_b", "a_b"),
            ("a%2Fb", "a%252Fb"),
            ("100%", "100%25"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            ("a.b", "a.b"),
            ("zookeeper", "zookeeper"),
            ("tab\there", "tab%09here"),
            ("del\u{7f}", "del%7F"),
            ("ключ", "ключ"),
            ("🔒", "%F0%9F%94%92"),
            ("\u{e000}", "%EE%80%80"),
            (" ", " "),
            ("it's; DROP", "it's; DROP"),
        ];
        for (name, znode) in cases {
            assert_eq!(encode_name(name, false), znode, "{name:?}");
            assert!(!encode_name(name, false).chars().any(is_forbidden_char));
        }
        assert_eq!(encode_name("zookeeper", true), "%7Aookeeper");
        assert_eq!(encode_name("%7Aookeeper", true), "%257Aookeeper");
        let all: std::collections::HashSet<String> =
            cases.iter().map(|(n, _)| encode_name(n, false)).collect();
        assert_eq!(all.len(), cases.len(), "two names share a znode");
    }

    #[test]
    fn contenders_sort_like_curator() {
        let uuid = uuid::Uuid::nil();
        let prefix = contender_prefix(&uuid, LOCK_MARKER);
        assert_eq!(prefix, "_c_00000000-0000-0000-0000-000000000000-lock-");
        let mut children = vec![
            "_c_bbbbbbbb-0000-0000-0000-000000000000-lock-0000000012".to_string(),
            format!("{prefix}0000000010"),
            "_c_aaaaaaaa-0000-0000-0000-000000000000-lock-0000000003".to_string(),
        ];
        sort_contenders(&mut children);
        assert!(children[0].ends_with("0000000003"));
        assert_eq!(
            standing(&children, &prefix, false),
            Standing::Waiting {
                ours: &format!("{prefix}0000000010"),
                predecessor: "_c_aaaaaaaa-0000-0000-0000-000000000000-lock-0000000003",
            }
        );
        children.remove(0);
        assert_eq!(
            standing(&children, &prefix, false),
            Standing::Holder(&format!("{prefix}0000000010"))
        );
        assert_eq!(
            standing(&children, "_c_ffffffff-", false),
            Standing::Absent,
            "a prefix nobody has"
        );
        // A plain Curator node without the protected prefix (older clients) sorts by sequence.
        let mut mixed = vec![format!("{prefix}0000000002"), "lock-0000000001".to_string()];
        sort_contenders(&mut mixed);
        assert_eq!(mixed[0], "lock-0000000001");
    }

    #[test]
    fn readers_wait_for_writers_only_and_writers_for_everyone() {
        let node = |uuid: &str, marker: &str, seq: u32| format!("_c_{uuid}-{marker}{seq:010}");
        let u = "00000000-0000-0000-0000-00000000000";
        let mut children = vec![
            node(&format!("{u}4"), READ_MARKER, 4),
            node(&format!("{u}1"), READ_MARKER, 1),
            node(&format!("{u}3"), WRITE_MARKER, 3),
            node(&format!("{u}2"), READ_MARKER, 2),
            node(&format!("{u}5"), LOCK_MARKER, 5),
        ];
        sort_contenders(&mut children);
        let seqs: Vec<_> = children.iter().map(|c| &c[c.len() - 1..]).collect();
        assert_eq!(seqs, ["1", "2", "3", "4", "5"], "one queue by sequence");
        let prefix = |n: u32| format!("_c_{u}{n}-");
        // Readers 1 and 2 hold together; reader 4 waits for writer 3 (writer first).
        assert!(matches!(
            standing(&children, &prefix(1), true),
            Standing::Holder(_)
        ));
        assert!(matches!(
            standing(&children, &prefix(2), true),
            Standing::Holder(_)
        ));
        assert_eq!(
            standing(&children, &prefix(4), true),
            Standing::Waiting {
                ours: &children[3],
                predecessor: &children[2]
            }
        );
        // Writer 3 waits for the reader right before it; the mutex node 5 for reader 4.
        assert_eq!(
            standing(&children, &prefix(3), false),
            Standing::Waiting {
                ours: &children[2],
                predecessor: &children[1]
            }
        );
        assert_eq!(
            standing(&children, &prefix(5), false),
            Standing::Waiting {
                ours: &children[4],
                predecessor: &children[3]
            }
        );
        // A reader behind a mutex node (Curator's InterProcessMutex, dlock's exclusive lock)
        // waits for it too, and a stray child blocks nobody.
        let mut children = vec![
            node(&format!("{u}1"), LOCK_MARKER, 1),
            "stray".to_string(),
            node(&format!("{u}2"), READ_MARKER, 2),
        ];
        sort_contenders(&mut children);
        assert!(matches!(
            standing(&children, &prefix(2), true),
            Standing::Waiting { .. }
        ));
        children.retain(|c| !c.contains("-lock-"));
        assert!(matches!(
            standing(&children, &prefix(2), true),
            Standing::Holder(_)
        ));
        assert!(!blocks("stray", false));
    }
}

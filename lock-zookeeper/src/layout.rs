//! The znode layout: how a lock name becomes one znode name, and Apache Curator's
//! `InterProcessMutex` contender nodes (`_c_<uuid>-lock-<sequence>`) and their order.

use std::fmt::Write as _;

/// Curator's "protected" prefix: a contender node starts with `_c_<uuid>-` so its creator can
/// find it again after a connection loss during the create.
pub(crate) const PROTECTED_PREFIX: &str = "_c_";
/// The lock name Curator's `InterProcessMutex` gives its contender nodes; the sequence number
/// follows its last occurrence.
pub(crate) const LOCK_MARKER: &str = "lock-";

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

/// The name prefix of one contender's node, `_c_<uuid>-lock-`; the server appends the
/// 10-digit sequence.
pub(crate) fn contender_prefix(uuid: &uuid::Uuid) -> String {
    format!("{PROTECTED_PREFIX}{}-{LOCK_MARKER}", uuid.hyphenated())
}

/// Curator's sort key for a child of a lock node (`StandardLockInternalsDriver.fixForSorting`):
/// what follows the last `lock-`, or the whole name when there is none.
fn sort_key(child: &str) -> &str {
    match child.rfind(LOCK_MARKER) {
        Some(i) => &child[i + LOCK_MARKER.len()..],
        None => child,
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

/// Where the node starting with `prefix` stands among the sorted `children`.
pub(crate) fn standing<'a>(sorted: &'a [String], prefix: &str) -> Standing<'a> {
    match sorted.iter().position(|c| c.starts_with(prefix)) {
        None => Standing::Absent,
        Some(0) => Standing::Holder(&sorted[0]),
        Some(i) => Standing::Waiting {
            ours: &sorted[i],
            predecessor: &sorted[i - 1],
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
        let prefix = contender_prefix(&uuid);
        assert_eq!(prefix, "_c_00000000-0000-0000-0000-000000000000-lock-");
        let mut children = vec![
            "_c_bbbbbbbb-0000-0000-0000-000000000000-lock-0000000012".to_string(),
            format!("{prefix}0000000010"),
            "_c_aaaaaaaa-0000-0000-0000-000000000000-lock-0000000003".to_string(),
        ];
        sort_contenders(&mut children);
        assert!(children[0].ends_with("0000000003"));
        assert_eq!(
            standing(&children, &prefix),
            Standing::Waiting {
                ours: &format!("{prefix}0000000010"),
                predecessor: "_c_aaaaaaaa-0000-0000-0000-000000000000-lock-0000000003",
            }
        );
        children.remove(0);
        assert_eq!(
            standing(&children, &prefix),
            Standing::Holder(&format!("{prefix}0000000010"))
        );
        assert_eq!(
            standing(&children, "_c_ffffffff-"),
            Standing::Absent,
            "a prefix nobody has"
        );
        // A plain Curator node without the protected prefix (older clients) sorts by sequence.
        let mut mixed = vec![format!("{prefix}0000000002"), "lock-0000000001".to_string()];
        sort_contenders(&mut mixed);
        assert_eq!(mixed[0], "lock-0000000001");
    }
}

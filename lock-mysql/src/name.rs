//! From a dlock lock name to the name `GET_LOCK` gets.
//!
//! MySQL 8 compares user-lock names case-insensitively and refuses names longer than 64
//! characters; MariaDB 10.11 compares them byte for byte and takes up to 192 bytes. One
//! mapping serves both: a name that is already safe everywhere (1 to 64 of `a-z 0-9 . _ : / -`)
//! is passed as it is, so a SQL caller's `GET_LOCK('emp_details_purge', 0)` and dlock's lock
//! `emp_details_purge` are the same lock; any other name becomes `#` followed by the first 63
//! hex digits of its SHA-256 (of its UTF-8 bytes). A mapped name always starts with `#`, which
//! no passed name contains, so the two kinds never meet; two different names that both need
//! the hash meet only if their SHA-256 agree in 252 bits.
//!
//! The same mapping in SQL (MariaDB; the connection's character set must be `utf8mb4` or
//! `utf8mb3` so that `SHA2` hashes the UTF-8 bytes):
//!
//! ```sql
//! IF(CAST(n AS BINARY) REGEXP '^[a-z0-9._:/-]{1,64}$', n, CONCAT('#', LEFT(SHA2(n, 256), 63)))
//! ```

use std::fmt;
use std::str::FromStr;

use lock_core::{Error, ErrorKind, LockName, Operation, Result};
use sha2::{Digest, Sha256};

use crate::BACKEND;

/// The SQL expression of the `mapped` scheme for a name bound as `?` (see the module docs).
pub const MAPPING_SQL: &str =
    "IF(CAST(? AS BINARY) REGEXP '^[a-z0-9._:/-]{1,64}$', ?, CONCAT('#', LEFT(SHA2(?, 256), 63)))";

/// The longest name `GET_LOCK` takes on MySQL 8 (in characters).
pub const MAX_CHARS: usize = 64;

/// The longest name `GET_LOCK` takes on MariaDB (in bytes).
pub const MAX_BYTES: usize = 192;

/// How dlock names become server lock names (`?names=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameScheme {
    /// Safe names as they are, every other name hashed (the module docs): one-to-one on
    /// MySQL and MariaDB alike.
    #[default]
    Mapped,
    /// The name as it is: up to 64 characters and 192 bytes, otherwise `InvalidName`. On MySQL
    /// `Job` and `job` are then one lock, on MariaDB two.
    Raw,
}

impl FromStr for NameScheme {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mapped" => Ok(NameScheme::Mapped),
            "raw" => Ok(NameScheme::Raw),
            _ => Err(format!("names={s:?}: expected mapped or raw")),
        }
    }
}

impl fmt::Display for NameScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameScheme::Mapped => "mapped",
            NameScheme::Raw => "raw",
        })
    }
}

impl NameScheme {
    /// The server lock name of `name`.
    pub fn server_name(self, name: &LockName) -> Result<String> {
        let s = name.as_str();
        match self {
            NameScheme::Mapped => Ok(mapped(s)),
            NameScheme::Raw => {
                let chars = s.chars().count();
                if chars == 0 || chars > MAX_CHARS || s.len() > MAX_BYTES {
                    return Err(Error::new(
                        ErrorKind::InvalidName,
                        BACKEND,
                        Operation::Acquire,
                        format!(
                            "lock name of {chars} characters and {} bytes: with names=raw a \
                             GET_LOCK name has 1 to {MAX_CHARS} characters and at most \
                             {MAX_BYTES} bytes (names=mapped, the default, takes any name)",
                            s.len()
                        ),
                    ));
                }
                Ok(s.to_string())
            }
        }
    }
}

/// Whether `s` passes unchanged under the `mapped` scheme.
pub fn is_plain(s: &str) -> bool {
    (1..=MAX_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b':' | b'/' | b'-'))
}

/// The `mapped` scheme's server name of `s`.
pub fn mapped(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(MAX_CHARS);
    out.push('#');
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out.truncate(MAX_CHARS);
    out
}

/// Test vectors of the `mapped` scheme, `(dlock name, server name)`: the hashes come from
/// `printf %s NAME | sha256sum` (coreutils), not from this code, and the integration tests
/// check them against the server's own [`MAPPING_SQL`].
pub const TEST_VECTORS: &[(&str, &str)] = &[
    ("emp_details_purge", "emp_details_purge"),
    ("a", "a"),
    (
        "Job",
        "#ad617a0fdd57e3f4b8ebb27f6f60470bc4468aadec290db57e612f751767745",
    ),
    (
        "café",
        "#850f7dc43910ff890f8879c0ed26fe697c93a067ad93a7d50f466a7028a9bf4",
    ),
    (
        "Nightly Purge",
        "#f33707ba4b88b82b59324419b1fa33f69fb662b1ec91acc68e0a32ee58f9cf1",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors() {
        for (name, server) in TEST_VECTORS {
            assert_eq!(mapped(name), *server, "{name:?}");
        }
        assert_eq!(
            mapped(&"x".repeat(65)),
            "#9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e"
        );
    }

    #[test]
    fn plain_names_pass_as_they_are() {
        for s in [
            "emp_details_purge",
            "a",
            "billing/nightly:2026-12-07",
            &"x".repeat(64),
        ] {
            assert!(is_plain(s), "{s}");
            assert_eq!(mapped(s), s);
        }
    }

    #[test]
    fn other_names_are_hashed_to_64_characters_starting_with_hash() {
        for s in [
            "Job",
            "job ",
            "café",
            "",
            &"x".repeat(65),
            "a#b",
            "ÅÄÖ",
            "x'; DROP",
        ] {
            assert!(!is_plain(s), "{s:?}");
            let m = mapped(s);
            assert_eq!(m.len(), 64, "{s:?}");
            assert!(m.starts_with('#'));
            assert!(
                m[1..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // Names that a case-insensitive server would confuse map apart.
        assert_ne!(mapped("Job"), mapped("JOB"));
        assert_ne!(mapped("Job"), "job");
        // A 65-character name is not its 64-character prefix.
        assert_ne!(mapped(&"x".repeat(65)), "x".repeat(64));
    }

    #[test]
    fn raw_names_are_checked_for_length() {
        let ok = LockName::new("Job").unwrap();
        assert_eq!(NameScheme::Raw.server_name(&ok).unwrap(), "Job");
        let long = LockName::new("y".repeat(65)).unwrap();
        let e = NameScheme::Raw.server_name(&long).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName);
        // 64 characters of 4 bytes each: 256 bytes, over MariaDB's limit.
        let wide = LockName::new("🔒".repeat(64)).unwrap();
        assert!(NameScheme::Raw.server_name(&wide).is_err());
        assert!(NameScheme::Mapped.server_name(&wide).is_ok());
    }

    #[test]
    fn schemes_parse() {
        assert_eq!("mapped".parse(), Ok(NameScheme::Mapped));
        assert_eq!("raw".parse(), Ok(NameScheme::Raw));
        assert!("Raw".parse::<NameScheme>().is_err());
    }
}

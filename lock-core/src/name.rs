//! Validated lock names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A validated lock name: non-empty UTF-8 without NUL, at most [`LockName::MAX_LEN`] bytes.
///
/// These are the rules every backend accepts at the core level; each backend documents how a
/// name maps onto its key space (a hash, a key, a znode, a table row) and rejects with
/// [`ErrorKind::InvalidName`](crate::ErrorKind::InvalidName) what it cannot represent (for
/// example a ShedLock `name` column of 64 characters). Names are opaque: `/`, `..`, quotes,
/// semicolons and any Unicode are ordinary characters, and backends must never build queries
/// out of them.
///
/// Cloning is cheap (the text is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockName(Arc<str>);

impl LockName {
    /// The longest name accepted at the core level, in bytes (16 KiB).
    pub const MAX_LEN: usize = 16 * 1024;

    /// Validates `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(Error::invalid_name("dlock", "lock name is empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(Error::invalid_name(
                "dlock",
                format!(
                    "lock name is {} bytes long; the limit is {} bytes",
                    name.len(),
                    Self::MAX_LEN
                ),
            ));
        }
        if let Some(pos) = name.find('\0') {
            return Err(Error::invalid_name(
                "dlock",
                format!("lock name contains a NUL character at byte {pos}"),
            ));
        }
        Ok(LockName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A new name with `prefix` in front (used to give a test run its own namespace).
    pub fn prefixed(&self, prefix: &str) -> Result<Self> {
        LockName::new(format!("{prefix}{}", self.as_str()))
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for LockName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for LockName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LockName::new(s)
    }
}

impl TryFrom<&str> for LockName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        LockName::new(s)
    }
}

impl TryFrom<String> for LockName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        LockName::new(s)
    }
}

/// Whether `s` is a plain SQL table name, `table` or `schema.table`, safe to splice into a
/// statement unquoted: each part `[A-Za-z_][A-Za-z0-9_]*` of at most `max_part` characters
/// (PostgreSQL 63, MySQL / MariaDB 64). For the backends' `fencing_table=` options.
pub fn is_sql_identifier(s: &str, max_part: usize) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= max_part
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match s.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn accepts_ordinary_and_unusual_names() {
        for n in ["job", "a/b", "..", "it's; DROP TABLE x", "ключ-🔒", " "] {
            assert_eq!(LockName::new(n).unwrap().as_str(), n);
        }
        let long = "x".repeat(LockName::MAX_LEN);
        assert_eq!(
            LockName::new(&long).unwrap().as_bytes().len(),
            LockName::MAX_LEN
        );
    }

    #[test]
    fn rejects_empty_nul_and_overlong_with_a_typed_error() {
        for bad in [
            String::new(),
            "a\0b".to_string(),
            "x".repeat(LockName::MAX_LEN + 1),
        ] {
            let err = LockName::new(&bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidName, "{err}");
        }
        let msg = LockName::new("").unwrap_err().to_string();
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn prefix_builds_a_new_valid_name() {
        let n = LockName::new("job").unwrap().prefixed("ns-1/").unwrap();
        assert_eq!(n.as_str(), "ns-1/job");
    }
}

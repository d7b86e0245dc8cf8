//! How a lock name becomes an advisory-lock key, and the SQL for each key form.

use std::fmt;
use std::str::FromStr;

use lock_core::{Error, LockMode, LockName, Result};

use crate::BACKEND;

/// The `?key=` schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScheme {
    /// `hashtextextended(name, 0)`: 64 bits, computed by the server (PostgreSQL 11+). Default.
    HashTextExtended,
    /// `hashtext(name)`: what SQL callers write (`pg_try_advisory_lock(hashtext('job'))`);
    /// 32 bits, so distinct names collide more often.
    HashText,
    /// sqlx's `PgAdvisoryLock` derivation: HKDF-SHA256 of the name (no salt, info
    /// `SQLx (Rust) Postgres advisory lock`), first 8 bytes little-endian as i64.
    Sqlx,
    /// The name is a decimal i64, used as the key directly.
    Int,
    /// The name is `a,b`: two decimal i32 (the two-key form, a separate key space).
    Pair,
}

impl FromStr for KeyScheme {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "hashtextextended" => KeyScheme::HashTextExtended,
            "hashtext" => KeyScheme::HashText,
            "sqlx" => KeyScheme::Sqlx,
            "int" => KeyScheme::Int,
            "pair" => KeyScheme::Pair,
            other => {
                return Err(format!(
                    "unknown key scheme {other:?}; expected hashtextextended, hashtext, sqlx, int or pair"
                ));
            }
        })
    }
}

impl fmt::Display for KeyScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyScheme::HashTextExtended => "hashtextextended",
            KeyScheme::HashText => "hashtext",
            KeyScheme::Sqlx => "sqlx",
            KeyScheme::Int => "int",
            KeyScheme::Pair => "pair",
        })
    }
}

/// What is bound to the lock statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyArg {
    /// The name, hashed by the server (a shared handle on it: no copy per acquisition).
    Text(LockName),
    /// A bigint key.
    Big(i64),
    /// Two int4 keys.
    Pair(i32, i32),
    /// A semaphore's slot: the name and the seed `1 + slot`, hashed by the server
    /// (`hashtextextended(name, 1 + slot)`; the lock itself is seed 0).
    Slot(LockName, i64),
}

/// A key as the server sees it (the identity of the lock within a database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyId {
    /// The bigint key space.
    Big(i64),
    /// The two-int4 key space.
    Pair(i32, i32),
}

impl KeyScheme {
    /// Maps a name to what the statements bind; names a scheme cannot represent are
    /// `InvalidName`.
    pub(crate) fn arg(self, name: &LockName) -> Result<KeyArg> {
        let s = name.as_str();
        match self {
            KeyScheme::HashTextExtended | KeyScheme::HashText => Ok(KeyArg::Text(name.clone())),
            KeyScheme::Sqlx => Ok(KeyArg::Big(sqlx_key(s))),
            KeyScheme::Int => s.trim().parse::<i64>().map(KeyArg::Big).map_err(|_| {
                Error::invalid_name(
                    BACKEND,
                    format!("with ?key=int the lock name must be a decimal i64, got {s:?}"),
                )
            }),
            KeyScheme::Pair => {
                let parsed = s.split_once(',').and_then(|(a, b)| {
                    Some((a.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?))
                });
                parsed.map(|(a, b)| KeyArg::Pair(a, b)).ok_or_else(|| {
                    Error::invalid_name(
                        BACKEND,
                        format!("with ?key=pair the lock name must be two decimal i32 as \"a,b\", got {s:?}"),
                    )
                })
            }
        }
    }
}

/// The key sqlx's `PgAdvisoryLock::new(name)` locks (computed by sqlx itself).
pub fn sqlx_key(name: &str) -> i64 {
    // `PgAdvisoryLock::new` always derives the bigint form.
    sqlx::postgres::PgAdvisoryLock::new(name)
        .key()
        .as_bigint()
        .unwrap_or_default()
}

fn suffix(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "",
        LockMode::Shared => "_shared",
    }
}

/// The statements for one key form and mode. Every statement returns the backend pid (for
/// pooler detection: a transaction-pooling proxy answers from another server session) and
/// the lock statements the key they locked, so the caller learns the server-computed key.
/// The session marker (`dlock.session`) is checked at open and by every session check, not
/// here: reading it back costs about 3 % of an uncontended acquire + release.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// Try: columns (acquired bool, pid int4, key int8).
    pub try_lock: String,
    /// Blocking: columns (pid int4, key int8, void as text).
    pub lock: String,
    /// Unlock by key id: columns (was_held bool, pid int4).
    pub unlock_big: String,
    /// Unlock by key pair: columns (was_held bool, pid int4).
    pub unlock_pair: String,
}

impl Statements {
    /// The statements of a semaphore's slots: exclusive locks on
    /// `hashtextextended(name, 1 + slot)`.
    pub(crate) fn permits() -> Self {
        Self::with_source(
            KeyScheme::HashTextExtended,
            LockMode::Exclusive,
            "SELECT hashtextextended($1, $2) AS k",
        )
    }

    pub(crate) fn new(scheme: KeyScheme, mode: LockMode) -> Self {
        let source = match scheme {
            KeyScheme::HashTextExtended => "SELECT hashtextextended($1, 0) AS k",
            KeyScheme::HashText => "SELECT hashtext($1)::int8 AS k",
            KeyScheme::Sqlx | KeyScheme::Int => "SELECT $1::int8 AS k",
            KeyScheme::Pair => "SELECT $1::int4 AS a, $2::int4 AS b",
        };
        Self::with_source(scheme, mode, source)
    }

    fn with_source(scheme: KeyScheme, mode: LockMode, source: &str) -> Self {
        let m = suffix(mode);
        let (try_lock, lock) = if scheme == KeyScheme::Pair {
            (
                format!(
                    "SELECT pg_try_advisory_lock{m}(a, b), pg_backend_pid(), (a::int8 << 32) | (b::int8 & 4294967295) FROM ({source}) s"
                ),
                format!(
                    "SELECT pg_backend_pid(), (a::int8 << 32) | (b::int8 & 4294967295), pg_advisory_lock{m}(a, b)::text FROM ({source}) s"
                ),
            )
        } else {
            (
                format!("SELECT pg_try_advisory_lock{m}(k), pg_backend_pid(), k FROM ({source}) s"),
                format!(
                    "SELECT pg_backend_pid(), k, pg_advisory_lock{m}(k)::text FROM ({source}) s"
                ),
            )
        };
        Statements {
            try_lock,
            lock,
            unlock_big: format!("SELECT pg_advisory_unlock{m}($1::int8), pg_backend_pid()"),
            unlock_pair: format!(
                "SELECT pg_advisory_unlock{m}($1::int4, $2::int4), pg_backend_pid()"
            ),
        }
    }
}

/// The key id for a pair, as returned by the statements.
pub(crate) fn key_id(scheme: KeyScheme, server_key: i64) -> KeyId {
    if scheme == KeyScheme::Pair {
        KeyId::Pair((server_key >> 32) as i32, server_key as i32)
    } else {
        KeyId::Big(server_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ErrorKind;

    fn name(s: &str) -> LockName {
        LockName::new(s).unwrap()
    }

    /// Test vectors for the sqlx derivation, pinned so a change in sqlx is noticed.
    #[test]
    fn sqlx_derivation_test_vectors() {
        assert_eq!(sqlx_key("emp_details_purge"), SQLX_VECTORS[0].1);
        for (n, k) in SQLX_VECTORS {
            assert_eq!(sqlx_key(n), *k, "{n}");
        }
    }

    /// Computed independently (Python's hmac/hashlib HKDF-SHA256, zero salt, the sqlx info
    /// string, first 8 bytes little-endian), not by sqlx.
    const SQLX_VECTORS: &[(&str, i64)] = &[
        ("emp_details_purge", -8222262978726185169),
        ("my-lock", -7577905956304869515),
        ("ключ", 6648385615309933817),
    ];

    #[test]
    fn int_and_pair_names_must_be_numbers() {
        assert_eq!(KeyScheme::Int.arg(&name("-42")).unwrap(), KeyArg::Big(-42));
        assert_eq!(
            KeyScheme::Pair.arg(&name("1, -2")).unwrap(),
            KeyArg::Pair(1, -2)
        );
        for (scheme, bad) in [
            (KeyScheme::Int, "job"),
            (KeyScheme::Int, "99999999999999999999"),
            (KeyScheme::Pair, "1"),
            (KeyScheme::Pair, "1,2,3"),
            (KeyScheme::Pair, "3000000000,1"),
        ] {
            let err = scheme.arg(&name(bad)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidName, "{scheme} {bad}");
        }
    }

    #[test]
    fn pair_key_ids_round_trip() {
        let packed = (7i64 << 32) | (-2i32 as u32 as i64);
        assert_eq!(key_id(KeyScheme::Pair, packed), KeyId::Pair(7, -2));
    }
}

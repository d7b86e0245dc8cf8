//! Golden vectors: the advisory-lock key each `?key=` scheme gives a fixed name.
//!
//! Two processes exclude each other only when they lock the same key, so these values are
//! the contract between dlock versions during a rolling upgrade, and between dlock and the
//! other clients each scheme is named after. A failing vector is a breaking change (see
//! `CHANGELOG.md`), never something to update in passing.
//!
//! `hashtext` and `hashtextextended` are computed by the server: what is pinned here is the
//! SQL that reaches it (the same function over the name's text, in the same key space); the
//! values one server returned are pinned, and checked lock by lock, in the server tests
//! (`harness/tests/tests/postgres_golden.rs`).

use lock_core::{ConnectUrl, LockMode, LockName};

use crate::PgConfig;
use crate::key::{KeyArg, KeyId, KeyScheme, Statements, key_id, sqlx_key};

fn name(s: &str) -> LockName {
    LockName::new(s).unwrap()
}

fn scheme_of(url: &str) -> KeyScheme {
    PgConfig::from_url(&ConnectUrl::parse(url).unwrap())
        .unwrap()
        .key
}

/// The URL option picks the scheme; without one it is `hashtextextended`.
#[test]
fn url_option_names_the_scheme() {
    let cases = [
        ("postgres://app@db/prod", KeyScheme::HashTextExtended),
        (
            "postgres://app@db/prod?key=hashtextextended",
            KeyScheme::HashTextExtended,
        ),
        ("postgres://app@db/prod?key=hashtext", KeyScheme::HashText),
        ("postgresql://app@db/prod?key=sqlx", KeyScheme::Sqlx),
        ("postgres://app@db/prod?key=int", KeyScheme::Int),
        ("postgres://app@db/prod?key=pair", KeyScheme::Pair),
    ];
    for (url, scheme) in cases {
        assert_eq!(scheme_of(url), scheme, "{url}");
    }
}

/// The server hashes the name itself: the name goes out unchanged, as text.
#[test]
fn server_hashed_schemes_bind_the_name_unchanged() {
    for n in ["emp_details_purge", "jobs/purge", "ключ", "🔒"] {
        for scheme in [KeyScheme::HashText, KeyScheme::HashTextExtended] {
            assert_eq!(scheme.arg(&name(n)).unwrap(), KeyArg::Text(name(n)), "{n}");
        }
    }
}

/// The statements, pinned word for word: the key source decides the key (a change from
/// `hashtext($1)::int8` to, say, `hashtext($1::bytea)` would move every lock), and the
/// function decides the key space (the bigint space for every scheme but `pair`).
#[test]
fn statements_compute_the_key_the_same_way() {
    let cases = [
        (
            KeyScheme::HashTextExtended,
            LockMode::Exclusive,
            "SELECT pg_try_advisory_lock(k), pg_backend_pid(), k FROM (SELECT hashtextextended($1, 0) AS k) s",
            "SELECT pg_backend_pid(), k, pg_advisory_lock(k)::text FROM (SELECT hashtextextended($1, 0) AS k) s",
        ),
        (
            KeyScheme::HashText,
            LockMode::Exclusive,
            // hashtext returns int4; widening it to int8 is what PostgreSQL does implicitly
            // for `pg_try_advisory_lock(hashtext('job'))`, so both lock the same bigint key.
            "SELECT pg_try_advisory_lock(k), pg_backend_pid(), k FROM (SELECT hashtext($1)::int8 AS k) s",
            "SELECT pg_backend_pid(), k, pg_advisory_lock(k)::text FROM (SELECT hashtext($1)::int8 AS k) s",
        ),
        (
            KeyScheme::Sqlx,
            LockMode::Exclusive,
            "SELECT pg_try_advisory_lock(k), pg_backend_pid(), k FROM (SELECT $1::int8 AS k) s",
            "SELECT pg_backend_pid(), k, pg_advisory_lock(k)::text FROM (SELECT $1::int8 AS k) s",
        ),
        (
            KeyScheme::Int,
            LockMode::Shared,
            "SELECT pg_try_advisory_lock_shared(k), pg_backend_pid(), k FROM (SELECT $1::int8 AS k) s",
            "SELECT pg_backend_pid(), k, pg_advisory_lock_shared(k)::text FROM (SELECT $1::int8 AS k) s",
        ),
        (
            KeyScheme::Pair,
            LockMode::Exclusive,
            "SELECT pg_try_advisory_lock(a, b), pg_backend_pid(), (a::int8 << 32) | (b::int8 & 4294967295) FROM (SELECT $1::int4 AS a, $2::int4 AS b) s",
            "SELECT pg_backend_pid(), (a::int8 << 32) | (b::int8 & 4294967295), pg_advisory_lock(a, b)::text FROM (SELECT $1::int4 AS a, $2::int4 AS b) s",
        ),
    ];
    for (scheme, mode, try_lock, lock) in cases {
        let s = Statements::new(scheme, mode);
        assert_eq!(s.try_lock, try_lock, "{scheme} {mode:?}");
        assert_eq!(s.lock, lock, "{scheme} {mode:?}");
    }
    let s = Statements::new(KeyScheme::HashText, LockMode::Exclusive);
    assert_eq!(
        s.unlock_big,
        "SELECT pg_advisory_unlock($1::int8), pg_backend_pid()"
    );
    assert_eq!(
        s.unlock_pair,
        "SELECT pg_advisory_unlock($1::int4, $2::int4), pg_backend_pid()"
    );
}

/// `?key=sqlx`: the key sqlx's `PgAdvisoryLock::new(name)` locks. Computed independently of
/// sqlx and of this crate, with Python's hmac and hashlib: HKDF-SHA256 (RFC 5869) with the
/// name's UTF-8 bytes as input key material, no salt (32 zero bytes), info
/// `SQLx (Rust) Postgres advisory lock`, the first 8 output bytes as a little-endian i64.
#[test]
fn sqlx_keys() {
    let vectors: &[(&str, i64)] = &[
        ("emp_details_purge", -8222262978726185169),
        ("nightly-purge", 3722585716469689562),
        ("my-lock", -7577905956304869515),
        ("jobs/purge", -1218977717891971936),
        ("a", -2537430154616479981),
        ("ключ", 6648385615309933817),
        ("🔒", -2174858188468066231),
    ];
    for (n, key) in vectors {
        assert_eq!(sqlx_key(n), *key, "sqlx_key({n:?})");
        assert_eq!(
            KeyScheme::Sqlx.arg(&name(n)).unwrap(),
            KeyArg::Big(*key),
            "{n}"
        );
    }
}

/// `?key=int` and `?key=pair`: the name is the key, in decimal; the pair is the two-int4 key
/// space (`pg_locks.objsubid = 2`), which never meets the bigint one.
#[test]
fn explicit_keys() {
    let big: &[(&str, i64)] = &[
        ("42", 42),
        ("-1", -1),
        (" 7 ", 7),
        ("9223372036854775807", i64::MAX),
        ("-9223372036854775808", i64::MIN),
    ];
    for (n, key) in big {
        assert_eq!(
            KeyScheme::Int.arg(&name(n)).unwrap(),
            KeyArg::Big(*key),
            "{n:?}"
        );
    }
    let pairs: &[(&str, i32, i32)] = &[
        ("1,2", 1, 2),
        ("1, -2", 1, -2),
        ("-2147483648,2147483647", i32::MIN, i32::MAX),
    ];
    for (n, a, b) in pairs {
        assert_eq!(
            KeyScheme::Pair.arg(&name(n)).unwrap(),
            KeyArg::Pair(*a, *b),
            "{n:?}"
        );
    }
    // The pair's key as the lock statement returns it (a high, b low) and back.
    let packed = |a: i32, b: i32| (i64::from(a) << 32) | (i64::from(b) & 0xffff_ffff);
    assert_eq!(packed(1, -2), 8589934590);
    assert_eq!(key_id(KeyScheme::Pair, 8589934590), KeyId::Pair(1, -2));
    assert_eq!(key_id(KeyScheme::Int, 8589934590), KeyId::Big(8589934590));
}

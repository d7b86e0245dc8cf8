//! Golden vectors: ShedLock's row and statements (PostgreSQL) and its Redis key and value.
//!
//! These layouts are shared with Java ShedLock (INTEROP.md, read from ShedLock 7.x) and
//! between dlock versions: two processes exclude each other only while they write the same
//! row or key for a name and apply the same conditions. A failing vector here is a breaking
//! change (see `CHANGELOG.md`), never something to update in passing.

use lock_core::ConnectUrl;

use crate::ShedPgConfig;
use crate::owner::{hostname, owner};
use crate::pg::Sql;
use crate::redis::{DEFAULT_ENV, DEFAULT_KEY_PREFIX, added_at, env_prefix, lock_value};

fn sql_for(url: &str) -> (Sql, String) {
    let cfg = ShedPgConfig::from_url(&ConnectUrl::parse(url).unwrap()).unwrap();
    Sql::new(&cfg.layout, cfg.fencing_table.as_deref()).unwrap()
}

/// ShedLock's documented table, database time (`usingDbTime()`: now is
/// `timezone('utc', CURRENT_TIMESTAMP)`), durations bound as seconds. The conditions are the
/// exclusion: insert, or take over a row only where `lock_until <= now`; extend and unlock only
/// the row `locked_by` this owner, still valid; unlock keeps `lock_until` at
/// `locked_at + lockAtLeastFor` when that is later.
#[test]
fn default_table_statements() {
    let (sql, table) = sql_for("shedlock+postgres://app@db/prod");
    assert_eq!(table, r#""shedlock""#);
    assert_eq!(
        sql.create_table,
        r#"CREATE TABLE IF NOT EXISTS "shedlock" ("name" VARCHAR(64) NOT NULL, "lock_until" TIMESTAMP NOT NULL, "locked_at" TIMESTAMP NOT NULL, "locked_by" VARCHAR(255) NOT NULL, PRIMARY KEY ("name"))"#
    );
    assert_eq!(
        sql.acquire,
        r#"INSERT INTO "shedlock" AS s ("name", "lock_until", "locked_at", "locked_by") VALUES ($1, timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $2), timezone('utc', CURRENT_TIMESTAMP), $3) ON CONFLICT ("name") DO UPDATE SET "lock_until" = EXCLUDED."lock_until", "locked_at" = EXCLUDED."locked_at", "locked_by" = EXCLUDED."locked_by" WHERE s."lock_until" <= timezone('utc', CURRENT_TIMESTAMP)"#
    );
    assert_eq!(
        sql.extend,
        r#"UPDATE "shedlock" SET "lock_until" = timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $3) WHERE "name" = $1 AND "locked_by" = $2 AND "lock_until" > timezone('utc', CURRENT_TIMESTAMP)"#
    );
    assert_eq!(
        sql.unlock,
        r#"WITH u AS (UPDATE "shedlock" SET "lock_until" = GREATEST("locked_at" + make_interval(secs => $3), timezone('utc', CURRENT_TIMESTAMP)) WHERE "name" = $1 AND "locked_by" = $2 AND "lock_until" > timezone('utc', CURRENT_TIMESTAMP) RETURNING 1) SELECT count(*) FROM u, LATERAL (SELECT pg_notify('dlock_shedlock', $1)) AS n"#
    );
    assert!(sql.acquire_fenced.is_none() && sql.create_fence_table.is_none());
}

/// ShedLock's configurable names (`usingTableName`, `withColumnNames`) as URL options,
/// quoted; and dlock's own fencing table, shared by dlock versions only. With fencing the
/// ShedLock table's statements are the same text (Java reads and writes the table unchanged);
/// the acquire runs inside a statement that also counts the token.
#[test]
fn configured_names_and_fencing_table() {
    let (sql, table) = sql_for(
        "shedlock+postgres://app@db/prod?schema=jobs&table=locks&name_column=lock_name\
         &lock_until_column=until&locked_at_column=at&locked_by_column=by&fencing=table",
    );
    assert_eq!(table, r#""jobs"."locks""#);
    assert_eq!(
        sql.extend,
        r#"UPDATE "jobs"."locks" SET "until" = timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $3) WHERE "lock_name" = $1 AND "by" = $2 AND "until" > timezone('utc', CURRENT_TIMESTAMP)"#
    );
    assert_eq!(
        sql.create_fence_table.as_deref(),
        Some(
            r#"CREATE TABLE IF NOT EXISTS "dlock_shedlock_fencing" (name text PRIMARY KEY, token bigint NOT NULL)"#
        )
    );
    let acquire = r#"INSERT INTO "jobs"."locks" AS s ("lock_name", "until", "at", "by") VALUES ($1, timezone('utc', CURRENT_TIMESTAMP) + make_interval(secs => $2), timezone('utc', CURRENT_TIMESTAMP), $3) ON CONFLICT ("lock_name") DO UPDATE SET "until" = EXCLUDED."until", "at" = EXCLUDED."at", "by" = EXCLUDED."by" WHERE s."until" <= timezone('utc', CURRENT_TIMESTAMP)"#;
    assert_eq!(sql.acquire, acquire);
    assert_eq!(
        sql.acquire_fenced,
        Some(format!(
            r#"WITH won AS ({acquire} RETURNING 1) INSERT INTO "dlock_shedlock_fencing" AS f (name, token) SELECT $1, 1 FROM won ON CONFLICT (name) DO UPDATE SET token = f.token + 1 RETURNING token"#
        ))
    );
    for spelling in ["fencing=on", "fencing=table"] {
        let (same, _) = sql_for(&format!("shedlock+postgres://app@db/prod?{spelling}"));
        let (plain, _) = sql_for("shedlock+postgres://app@db/prod");
        assert_eq!(
            (&same.acquire, &same.extend, &same.unlock),
            (&plain.acquire, &plain.extend, &plain.unlock)
        );
        assert!(same.acquire_fenced.is_some(), "{spelling}");
    }
}

/// `locked_by` (PostgreSQL) and the value's owner part (Redis): `<hostname>:<pid>:<32 hex>`,
/// so it begins with the hostname as ShedLock's does, yet differs per acquisition (ShedLock's
/// only ownership check compares it); the hostname is cut, never the unique part.
#[test]
fn owner_values() {
    let o = owner(255);
    let host = hostname();
    let rest = o
        .strip_prefix(&format!("{host}:"))
        .expect("starts with the hostname");
    let (pid, unique) = rest.split_once(':').unwrap();
    assert_eq!(pid, std::process::id().to_string());
    assert_eq!(unique.len(), 32);
    assert!(unique.bytes().all(|b| b.is_ascii_hexdigit()));
    let short = owner(40);
    assert!(short.len() <= 40, "{short}");
    let (head, unique) = short.rsplit_once(':').unwrap();
    assert!(head.ends_with(&format!(":{pid}")), "{short}");
    assert_eq!(unique.len(), 32, "{short}");
}

/// ShedLock's Redis provider: key `job-lock:<env>:<name>` (env `default`), value
/// `ADDED:<UTC creation time, milliseconds>Z@<owner>`. The times were computed with Python's
/// `datetime.fromtimestamp(ms / 1000, timezone.utc)`.
#[test]
fn redis_key_and_value() {
    assert_eq!((DEFAULT_KEY_PREFIX, DEFAULT_ENV), ("job-lock", "default"));
    let key = format!(
        "{}{}",
        env_prefix(DEFAULT_KEY_PREFIX, DEFAULT_ENV),
        "nightly-purge"
    );
    assert_eq!(key, "job-lock:default:nightly-purge");
    assert_eq!(env_prefix("app", "prod"), "app:prod:");

    let times = [
        (0, "ADDED:1970-01-01T00:00:00.000Z"),
        (1765065600123, "ADDED:2025-12-07T00:00:00.123Z"),
        (951782400999, "ADDED:2000-02-29T00:00:00.999Z"),
        (1798761599000, "ADDED:2026-12-31T23:59:59.000Z"),
        (4102444799999, "ADDED:2099-12-31T23:59:59.999Z"),
    ];
    for (ms, added) in times {
        assert_eq!(added_at(ms), added, "{ms}");
    }
    assert_eq!(
        lock_value(
            &added_at(1765065600123),
            "web-1:4242:00112233445566778899aabbccddeeff"
        ),
        "ADDED:2025-12-07T00:00:00.123Z@web-1:4242:00112233445566778899aabbccddeeff"
    );
}

/// `?fencing=on` (or `key`) on Redis: the counters live in one hash whose key is the env's key
/// prefix itself (`job-lock:default:`), field = the name. No lock key equals it (names are
/// never empty), so Java ShedLock, which reads only `job-lock:<env>:<name>`, never meets it;
/// the lock key and value stay the ones above.
#[test]
fn redis_fencing_hash() {
    let hash = |q: &str| {
        crate::config::ShedRedisConfig::from_url(
            &ConnectUrl::parse(&format!("shedlock+redis://h:6379{q}")).unwrap(),
        )
        .unwrap()
        .fence_hash
    };
    assert_eq!(hash(""), None);
    assert_eq!(hash("?fencing=on").as_deref(), Some("job-lock:default:"));
    assert_eq!(
        hash("?fencing=key&env=prod&prefix=app").as_deref(),
        Some("app:prod:")
    );
}

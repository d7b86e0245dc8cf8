//! URL options of both flavours, and the PostgreSQL table layout.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lock_core::hosts::{TargetSessionAttrs, split_hosts};
use lock_core::pg_tls::{self, PgTls, PgTlsOptions};
use lock_core::{ConnectUrl, Error, ErrorKind, Operation, Result};
use lock_redis::tls::TlsWanted;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::redis::{DEFAULT_ENV, DEFAULT_KEY_PREFIX, env_prefix};
use crate::{BACKEND_PG, BACKEND_REDIS};

/// Splits a URL's query into (our options, the URL without them). `ours` lists the option
/// names this flavour understands; everything else stays in the URL for the client library.
pub(crate) fn split_options(
    url: &str,
    ours: &[&str],
) -> std::result::Result<(Vec<(String, String)>, url::Url), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    let mut mine = Vec::new();
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        let kv = (k.into_owned(), v.into_owned());
        if ours.contains(&kv.0.as_str()) {
            mine.push(kv);
        } else {
            rest.push(kv);
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        let mut q = parsed.query_pairs_mut();
        q.clear();
        for (k, v) in &rest {
            q.append_pair(k, v);
        }
    }
    Ok((mine, parsed))
}

/// Quotes an SQL identifier: `"` around it, inner quotes doubled. Identifiers must be
/// non-empty, at most 63 bytes and free of NUL.
pub(crate) fn quote_ident(id: &str) -> std::result::Result<String, String> {
    if id.is_empty() || id.len() > 63 || id.contains('\0') {
        return Err(format!(
            "{id:?} is not a usable SQL identifier (1–63 bytes, no NUL)"
        ));
    }
    Ok(format!("\"{}\"", id.replace('"', "\"\"")))
}

/// The ShedLock table: names as configured (defaults are ShedLock's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLayout {
    /// Schema, when not the connection's default.
    pub schema: Option<String>,
    /// Table name (`shedlock`).
    pub table: String,
    /// Column `name`.
    pub name: String,
    /// Column `lock_until`.
    pub lock_until: String,
    /// Column `locked_at`.
    pub locked_at: String,
    /// Column `locked_by`.
    pub locked_by: String,
}

impl Default for TableLayout {
    fn default() -> Self {
        TableLayout {
            schema: None,
            table: "shedlock".into(),
            name: "name".into(),
            lock_until: "lock_until".into(),
            locked_at: "locked_at".into(),
            locked_by: "locked_by".into(),
        }
    }
}

/// Parsed `shedlock+postgres://` configuration. `Debug` hides the password.
#[derive(Clone)]
pub struct ShedPgConfig {
    /// Every host's options, in the order of the URL.
    pub(crate) hosts: Vec<PgConnectOptions>,
    /// Which host the backend may settle on.
    pub(crate) target: TargetSessionAttrs,
    pub(crate) display_url: String,
    /// TLS as the URL asked (already applied to every host's options).
    pub(crate) tls: PgTls,
    pub(crate) layout: TableLayout,
    pub(crate) create_table: bool,
    pub(crate) fencing_table: Option<String>,
    pub(crate) pool_size: u32,
}

impl std::fmt::Debug for ShedPgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedPgConfig")
            .field("url", &self.display_url)
            .field("tls", &self.tls)
            .field("layout", &self.layout)
            .field("create_table", &self.create_table)
            .field("fencing_table", &self.fencing_table)
            .finish()
    }
}

const PG_OPTIONS: &[&str] = &[
    "table",
    "schema",
    "name_column",
    "lock_until_column",
    "locked_at_column",
    "locked_by_column",
    "create_table",
    "fencing",
    "fencing_table",
    "pool",
    "target_session_attrs",
];

impl ShedPgConfig {
    /// Parses `shedlock+postgres://…` (the rest is a PostgreSQL URL for sqlx).
    pub fn from_url(url: &ConnectUrl) -> Result<Self> {
        let bad = |msg: String| Error::invalid_url(BACKEND_PG, format!("{msg} (URL {url})"));
        let pg_url = format!("postgres://{}", url.rest());
        let per_host = split_hosts(&pg_url);
        // libpq's TLS options (and dlock's aliases ca=, cert=, key=) are ours too: checked
        // and resolved as the advisory-lock backend does (lock_core::pg_tls).
        let names: Vec<&str> = PG_OPTIONS
            .iter()
            .chain(pg_tls::OPTION_NAMES)
            .copied()
            .collect();
        let (mine, _) = split_options(&per_host[0], &names).map_err(bad)?;
        let mut tls = PgTlsOptions::default();
        let mut target = TargetSessionAttrs::default();
        let mut layout = TableLayout::default();
        let mut create_table = true;
        let mut fencing = false;
        let mut fencing_table = "dlock_shedlock_fencing".to_string();
        let mut pool_size = 4;
        for (k, v) in mine {
            let ident = |v: &str| {
                quote_ident(v)
                    .map(|_| v.to_string())
                    .map_err(|e| bad(format!("option {k}: {e}")))
            };
            match k.as_str() {
                "table" => layout.table = ident(&v)?,
                "schema" => layout.schema = Some(ident(&v)?),
                "name_column" => layout.name = ident(&v)?,
                "lock_until_column" => layout.lock_until = ident(&v)?,
                "locked_at_column" => layout.locked_at = ident(&v)?,
                "locked_by_column" => layout.locked_by = ident(&v)?,
                "create_table" => {
                    create_table = parse_bool(&v).ok_or_else(|| {
                        bad(format!("option create_table={v:?}: expected true or false"))
                    })?
                }
                "fencing" => {
                    fencing = parse_fencing(&v, "table")
                        .ok_or_else(|| bad(fencing_expected(&v, "table")))?
                }
                "fencing_table" => fencing_table = ident(&v)?,
                "target_session_attrs" => {
                    target = v.parse().map_err(|e| bad(format!("option {e}")))?
                }
                "pool" => {
                    pool_size = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad(format!("option pool={v:?}: expected 1..=64")))?
                }
                t if pg_tls::OPTION_NAMES.contains(&t) => {
                    tls.take(t, &v).map_err(bad)?;
                }
                _ => unreachable!("split_options only returns listed options"),
            }
        }
        let tls = tls.finish(cfg!(feature = "tls")).map_err(|(kind, m)| {
            Error::new(
                kind,
                BACKEND_PG,
                Operation::Connect,
                format!("{m} (URL {url})"),
            )
        })?;
        let mut hosts = Vec::new();
        for host_url in &per_host {
            let (_, mut rest) = split_options(host_url, &names).map_err(bad)?;
            rest.query_pairs_mut().extend_pairs(tls.libpq_options());
            hosts.push(
                PgConnectOptions::from_str(rest.as_str())
                    .map_err(|e| bad(format!("sqlx rejected the URL: {e}")))?
                    .application_name("dlock-shedlock")
                    .disable_statement_logging(),
            );
        }
        Ok(ShedPgConfig {
            hosts,
            target,
            display_url: url.to_string(),
            tls,
            layout,
            create_table,
            fencing_table: fencing.then_some(fencing_table),
            pool_size,
        })
    }
}

/// What a connection attempt (a `sqlx::Error` in an error's chain) was refused for, when that
/// is TLS or authentication: the kind to report and the cause in words
/// ([`lock_core::pg_tls::reclassify`] takes it).
pub(crate) fn pg_refusal(
    e: &(dyn std::error::Error + 'static),
) -> Option<(lock_core::ErrorKind, String)> {
    let e = e.downcast_ref::<sqlx::Error>()?;
    let db = e.as_database_error();
    let code = db.and_then(|d| d.code());
    pg_tls::classify(db.map(|d| (code.as_deref(), d.message())), e)
}

/// Parsed `shedlock+redis://` and `shedlock+rediss://` options. `Debug` hides the password.
#[derive(Clone)]
pub(crate) struct ShedRedisConfig {
    /// The server's host (also the name its certificate must carry over TLS) and port.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// User, password, database: what redis-rs sends when a connection opens.
    pub(crate) info: RedisConnectionInfo,
    /// `shedlock+rediss://`: the TLS files the URL named (paths only).
    pub(crate) tls: Option<TlsWanted>,
    /// `?prefix=` (`job-lock`): the ACL key pattern `~<prefix>:*` refusals name.
    pub(crate) prefix: String,
    /// What every lock key of this client starts with: `<prefix>:<env>:`.
    pub(crate) key_prefix: String,
    /// Reply and connect timeout.
    pub(crate) timeout: Duration,
    /// The hash holding one fencing counter per name (`?fencing=on`): the key prefix itself,
    /// which no lock key equals because names are never empty.
    pub(crate) fence_hash: Option<String>,
}

impl std::fmt::Debug for ShedRedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedRedisConfig")
            .field("addr", &format!("{}:{}", self.host, self.port))
            .field("db", &self.info.db())
            .field("username", &self.info.username())
            .field("password", &self.info.password().map(|_| "***"))
            .field("tls", &self.tls.as_ref().map(TlsWanted::describe))
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("fence_hash", &self.fence_hash)
            .finish()
    }
}

const REDIS_OPTIONS: &[&str] = &[
    "env", "prefix", "timeout", "fencing", "ca", "cacert", "cert", "key", "insecure",
];

impl ShedRedisConfig {
    /// Parses `shedlock+redis://[user:password@]host:port[/db]?env=default&prefix=job-lock&timeout=5000ms&fencing=off`,
    /// and `shedlock+rediss://…` with `ca=` (alias `cacert=`), `cert=`, `key=` besides.
    pub(crate) fn from_url(url: &ConnectUrl) -> Result<Self> {
        let bad = |msg: String| Error::invalid_url(BACKEND_REDIS, format!("{msg} (URL {url})"));
        let tls_scheme = url.scheme() == crate::SCHEME_REDISS;
        let (mine, client_url) =
            split_options(&format!("redis://{}", url.rest()), REDIS_OPTIONS).map_err(bad)?;
        let (mut env, mut prefix) = (DEFAULT_ENV.to_string(), DEFAULT_KEY_PREFIX.to_string());
        let mut timeout = Duration::from_secs(5);
        let mut fencing = false;
        let mut tls_files = Vec::new();
        for (k, v) in mine {
            match k.as_str() {
                "env" | "prefix" if v.is_empty() => {
                    return Err(bad(format!("option {k} must not be empty")));
                }
                "env" => env = v,
                "prefix" => prefix = v,
                "timeout" => {
                    timeout = v
                        .strip_suffix("ms")
                        .and_then(|ms| ms.parse::<u64>().ok())
                        .filter(|ms| *ms > 0)
                        .map(Duration::from_millis)
                        .ok_or_else(|| {
                            bad(format!(
                                "option timeout={v:?}: expected milliseconds like 5000ms"
                            ))
                        })?
                }
                "fencing" => {
                    fencing =
                        parse_fencing(&v, "key").ok_or_else(|| bad(fencing_expected(&v, "key")))?
                }
                // redis-rs's `rediss://…#insecure` spelling, were it passed through: refused
                // rather than silently meaning nothing.
                "insecure" => {
                    return Err(bad(
                        "there is no switch to skip certificate verification: name the server's \
                         CA with ca=FILE"
                            .to_string(),
                    ));
                }
                _ => tls_files.push((k, v)),
            }
        }
        let tls = redis_tls(tls_scheme, tls_files).map_err(bad)?;
        if tls.is_some() && !cfg!(feature = "tls") {
            return Err(Error::new(
                ErrorKind::Unsupported,
                BACKEND_REDIS,
                Operation::Connect,
                format!(
                    "shedlock+rediss:// needs lock-shedlock's `tls` feature (the dlock facade's \
                     `tls`, on by default), which this build lacks (URL {url})"
                ),
            ));
        }
        let info = client_url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(format!("the redis client rejected the URL: {e}")))?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => return Err(bad(format!("expected host:port, got {other:?}"))),
        };
        let key_prefix = env_prefix(&prefix, &env);
        Ok(ShedRedisConfig {
            host,
            port,
            info: info.redis_settings().clone(),
            tls,
            prefix,
            fence_hash: fencing.then(|| key_prefix.clone()),
            key_prefix,
            timeout,
        })
    }
}

/// The TLS files of a `shedlock+rediss://` URL, with lock-redis's option names and meaning:
/// `ca=` (alias `cacert=`) trusts only that file's CAs (none: the system roots), `cert=` and
/// `key=` come together. On `shedlock+redis://` they are refused: they would mean nothing.
fn redis_tls(
    tls_scheme: bool,
    given: Vec<(String, String)>,
) -> std::result::Result<Option<TlsWanted>, String> {
    let (mut ca, mut cert, mut key) = (None, None, None);
    for (option, value) in given {
        let slot = match option.as_str() {
            "ca" | "cacert" => &mut ca,
            "cert" => &mut cert,
            _ => &mut key,
        };
        if !tls_scheme {
            return Err(format!(
                "option {option} applies to TLS connections only: use shedlock+rediss://host:port"
            ));
        }
        if slot.is_some() {
            return Err(format!(
                "option {option} given twice (cacert= is another name for ca=)"
            ));
        }
        if value.is_empty() {
            return Err(format!("option {option}= needs a file path"));
        }
        *slot = Some(PathBuf::from(value));
    }
    if !tls_scheme {
        return Ok(None);
    }
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("a client certificate needs both cert= and key=".to_string()),
    };
    Ok(Some(TlsWanted { ca, client }))
}

/// `?fencing=`: `on` / `off` on both flavours, plus each flavour's own word for on
/// (`table`, `key`, where the tokens live) and `none` for off, the spellings of earlier
/// versions.
pub(crate) fn parse_fencing(v: &str, where_word: &str) -> Option<bool> {
    match v {
        "on" => Some(true),
        "off" | "none" => Some(false),
        _ if v == where_word => Some(true),
        _ => None,
    }
}

/// The message for a `?fencing=` value [`parse_fencing`] refused.
pub(crate) fn fencing_expected(v: &str, where_word: &str) -> String {
    format!("option fencing={v:?}: expected on or off ({where_word} means on, none means off)")
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ErrorKind;

    #[test]
    fn identifiers_are_quoted_not_trusted() {
        assert_eq!(quote_ident("shedlock").unwrap(), "\"shedlock\"");
        assert_eq!(
            quote_ident("we\"ird; table").unwrap(),
            "\"we\"\"ird; table\""
        );
        assert!(quote_ident("").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
    }

    #[test]
    fn options_parse_and_bad_ones_are_invalid_url() {
        let u = ConnectUrl::parse("shedlock+postgres://app:pw@h/db?table=Job%20Locks&schema=ops&create_table=false&fencing=table&sslmode=disable").unwrap();
        let c = ShedPgConfig::from_url(&u).unwrap();
        assert_eq!(c.layout.table, "Job Locks");
        assert_eq!(c.layout.schema.as_deref(), Some("ops"));
        assert!(!c.create_table);
        assert!(c.fencing_table.is_some());
        assert!(!format!("{c:?}").contains("pw"));
        for (fencing, on) in [
            ("on", true),
            ("table", true),
            ("off", false),
            ("none", false),
        ] {
            let u =
                ConnectUrl::parse(&format!("shedlock+postgres://h/db?fencing={fencing}")).unwrap();
            let c = ShedPgConfig::from_url(&u).unwrap();
            assert_eq!(c.fencing_table.is_some(), on, "{fencing}");
        }
        for bad in [
            "create_table=maybe",
            "fencing=column",
            "fencing=key",
            "pool=0",
            "table=",
            "target_session_attrs=standby",
        ] {
            let u = ConnectUrl::parse(&format!("shedlock+postgres://h/db?{bad}")).unwrap();
            assert_eq!(
                ShedPgConfig::from_url(&u).unwrap_err().kind(),
                ErrorKind::InvalidUrl,
                "{bad}"
            );
        }
    }

    #[test]
    fn several_hosts_share_the_options() {
        let u = ConnectUrl::parse("shedlock+postgres://app@h1:5432,h2:5433/db?table=jobs&target_session_attrs=read-write&sslmode=disable").unwrap();
        let c = ShedPgConfig::from_url(&u).unwrap();
        assert_eq!(c.target, TargetSessionAttrs::ReadWrite);
        assert_eq!(c.layout.table, "jobs");
        let hosts: Vec<(&str, u16)> = c
            .hosts
            .iter()
            .map(|h| (h.get_host(), h.get_port()))
            .collect();
        assert_eq!(hosts, [("h1", 5432), ("h2", 5433)]);
        assert!(c.hosts.iter().all(|h| h.get_database() == Some("db")));
    }

    #[test]
    fn redis_options_and_the_fencing_hash() {
        let parse = |q: &str| {
            ShedRedisConfig::from_url(
                &ConnectUrl::parse(&format!("shedlock+redis://h:1/2{q}")).unwrap(),
            )
        };
        let c = parse("").unwrap();
        assert_eq!(c.key_prefix, "job-lock:default:");
        assert_eq!(c.fence_hash, None);
        assert_eq!((c.host.as_str(), c.port, c.info.db()), ("h", 1, 2));
        assert_eq!(c.tls, None);
        let c = parse("?env=prod&fencing=on&timeout=250ms&protocol=resp3").unwrap();
        assert_eq!(c.fence_hash.as_deref(), Some("job-lock:prod:"));
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.info.protocol(), redis::ProtocolVersion::RESP3);
        for (fencing, on) in [("on", true), ("key", true), ("off", false), ("none", false)] {
            assert_eq!(
                parse(&format!("?fencing={fencing}"))
                    .unwrap()
                    .fence_hash
                    .is_some(),
                on
            );
        }
        for bad in [
            "fencing=table",
            "fencing=yes",
            "fencing=",
            "env=",
            "timeout=5s",
        ] {
            let err = parse(&format!("?{bad}")).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{bad}");
        }
        let err = parse("?fencing=true").unwrap_err().to_string();
        assert!(
            err.contains(r#"fencing="true": expected on or off (key means on, none means off)"#),
            "{err}"
        );
    }

    #[test]
    fn rediss_takes_lock_redis_tls_options_and_redis_refuses_them() {
        let parse = |u: &str| ShedRedisConfig::from_url(&ConnectUrl::parse(u).unwrap());
        let c = parse("shedlock+redis://app:pw%40x@h:1/1").unwrap();
        assert_eq!(c.info.username(), Some("app"));
        assert_eq!(c.info.password(), Some("pw@x"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("pw@x") && debug.contains("***"), "{debug}");
        let full = "shedlock+rediss://app:pw%40x@localhost:6380/1?cacert=/ca.pem&cert=/c.pem&key=/k.pem&fencing=on";
        if !cfg!(feature = "tls") {
            let e = parse(full).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        } else {
            let c = parse(full).unwrap();
            assert_eq!(c.info.password(), Some("pw@x"));
            let tls = c.tls.clone().unwrap();
            assert_eq!(tls.ca, Some(PathBuf::from("/ca.pem")));
            assert_eq!(
                tls.client,
                Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
            );
            let debug = format!("{c:?}");
            assert!(
                !debug.contains("pw@x") && debug.contains("/ca.pem"),
                "{debug}"
            );
            // No ca=: the system roots.
            let c = parse("shedlock+rediss://localhost:6380").unwrap();
            assert_eq!(c.tls.unwrap().ca, None);
        }
        for (u, says) in [
            ("shedlock+redis://h:1?ca=/ca.pem", "TLS connections only"),
            ("shedlock+redis://h:1?key=/k.pem", "TLS connections only"),
            ("shedlock+rediss://h:1?ca=/a&cacert=/b", "given twice"),
            ("shedlock+rediss://h:1?ca=", "needs a file path"),
            ("shedlock+rediss://h:1?cert=/c.pem", "both cert= and key="),
            ("shedlock+rediss://h:1?insecure=true&ca=/a", "no switch"),
        ] {
            let e = parse(u).expect_err(u);
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{u}: {e}");
            assert!(e.to_string().contains(says), "{u}: {e}");
        }
    }
}

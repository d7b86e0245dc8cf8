//! `postgres://` URL options.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lock_core::hosts::{TargetSessionAttrs, split_hosts};
use lock_core::pg_tls::{self, PgTls, PgTlsOptions};
use lock_core::{ConnectUrl, Error, Operation, Result};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::BACKEND;
use crate::key::KeyScheme;

/// Where fencing tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fencing {
    /// No fencing tokens (`Guard::token()` is `None`).
    None,
    /// A per-name counter in this table, incremented while holding the advisory lock.
    Table(String),
}

/// The parsed backend configuration. `Debug` hides the password.
#[derive(Clone)]
pub struct PgConfig {
    /// The first host's options.
    pub(crate) connect: PgConnectOptions,
    /// Every host's options, in the order of the URL (`connect` first).
    pub(crate) hosts: Vec<PgConnectOptions>,
    /// Which host a session may settle on.
    pub(crate) target: TargetSessionAttrs,
    pub(crate) display_url: String,
    /// TLS as the URL asked (already applied to every host's options).
    pub(crate) tls: PgTls,
    pub(crate) key: KeyScheme,
    pub(crate) fencing: Fencing,
    pub(crate) keepalives_idle: Duration,
    pub(crate) keepalives_interval: Duration,
    pub(crate) keepalives_count: u32,
    pub(crate) user_timeout: Duration,
    pub(crate) session_deadline: Duration,
    pub(crate) check_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// How many dedicated sessions of released waiting acquisitions are kept for the next
    /// waits (0: close each on release).
    pub(crate) idle_sessions: usize,
    /// How long a kept session waits for reuse before it is closed.
    pub(crate) idle_timeout: Duration,
    /// Whether a session-watch connection reads for the end of the server's connections, so
    /// the lock sessions are checked the moment it sees one end (`session_watch=off`: only
    /// the periodic checks).
    pub(crate) session_watch: bool,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.display_url)
            .field("hosts", &self.hosts.len())
            .field("target_session_attrs", &self.target)
            .field("tls", &self.tls)
            .field("key", &self.key)
            .field("fencing", &self.fencing)
            .field("keepalives_idle", &self.keepalives_idle)
            .field("keepalives_interval", &self.keepalives_interval)
            .field("keepalives_count", &self.keepalives_count)
            .field("user_timeout", &self.user_timeout)
            .field("session_deadline", &self.session_deadline)
            .field("check_timeout", &self.check_timeout)
            .field("idle_sessions", &self.idle_sessions)
            .field("idle_timeout", &self.idle_timeout)
            .field("session_watch", &self.session_watch)
            .finish()
    }
}

impl PgConfig {
    /// Parses a `postgres://` or `postgresql://` URL, which may name several hosts
    /// (`h1:p1,h2:p2`, as libpq takes them). dlock's own query options are removed before the
    /// rest is handed to sqlx, once per host.
    pub fn from_url(url: &ConnectUrl) -> Result<Self> {
        let bad = |msg: String| Error::invalid_url(BACKEND, format!("{msg} (URL {url})"));
        let per_host = split_hosts(url.expose());
        let parsed = url::Url::parse(&per_host[0])
            .map_err(|e| bad(format!("not a valid PostgreSQL URL: {e}")))?;
        let mut cfg = PgConfig {
            connect: PgConnectOptions::new(),
            hosts: Vec::new(),
            target: TargetSessionAttrs::default(),
            display_url: url.to_string(),
            tls: PgTls::default(),
            key: KeyScheme::HashTextExtended,
            fencing: Fencing::None,
            keepalives_idle: Duration::from_secs(3),
            keepalives_interval: Duration::from_secs(1),
            keepalives_count: 3,
            user_timeout: Duration::from_secs(6),
            session_deadline: Duration::from_secs(4),
            check_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            idle_sessions: 8,
            idle_timeout: Duration::from_secs(30),
            session_watch: true,
        };
        let mut fencing_table = "dlock_fencing".to_string();
        let mut fencing_on = false;
        let mut rest: Vec<(String, String)> = Vec::new();
        let mut tls = PgTlsOptions::default();
        for (k, v) in parsed.query_pairs() {
            let (k, v) = (k.into_owned(), v.into_owned());
            let dur =
                |v: &str| parse_duration(v).map_err(|e| bad(format!("option {k}={v:?}: {e}")));
            match k.as_str() {
                // `key=` is the key scheme (a word) or, like on every backend, the client's
                // TLS key (a file: a path with `/` or `.`).
                "key" if !pg_tls::names_a_file(&v) => {
                    cfg.key = KeyScheme::from_str(&v).map_err(|e| {
                        bad(format!(
                            "option key: {e} (or a client key file, as a path with / or .)"
                        ))
                    })?
                }
                t if pg_tls::OPTION_NAMES.contains(&t) => {
                    tls.take(t, &v).map_err(bad)?;
                }
                "fencing" => match v.as_str() {
                    "table" => fencing_on = true,
                    "none" => fencing_on = false,
                    _ => return Err(bad(format!("option fencing={v:?}: expected table or none"))),
                },
                "fencing_table" => {
                    if !lock_core::is_sql_identifier(&v, 63) {
                        return Err(bad(format!(
                            "option fencing_table={v:?}: expected an identifier [A-Za-z_][A-Za-z0-9_]* (optionally schema.table)"
                        )));
                    }
                    fencing_table = v;
                }
                "keepalives_idle" => cfg.keepalives_idle = dur(&v)?,
                "keepalives_interval" => cfg.keepalives_interval = dur(&v)?,
                "keepalives_count" => {
                    cfg.keepalives_count = v
                        .parse()
                        .ok()
                        .filter(|c| (1..=100).contains(c))
                        .ok_or_else(|| {
                            bad(format!("option keepalives_count={v:?}: expected 1..=100"))
                        })?
                }
                "user_timeout" => cfg.user_timeout = dur(&v)?,
                "session_deadline" => cfg.session_deadline = dur(&v)?,
                "check_timeout" => cfg.check_timeout = dur(&v)?,
                "connect_timeout" => cfg.connect_timeout = dur(&v)?,
                "idle_sessions" => {
                    cfg.idle_sessions = v.parse().ok().filter(|n| *n <= 1000).ok_or_else(|| {
                        bad(format!("option idle_sessions={v:?}: expected 0..=1000"))
                    })?
                }
                "idle_timeout" => cfg.idle_timeout = dur(&v)?,
                "target_session_attrs" => {
                    cfg.target = v.parse().map_err(|e| bad(format!("option {e}")))?
                }
                "session_watch" => {
                    cfg.session_watch = match v.as_str() {
                        "on" | "true" => true,
                        "off" | "false" => false,
                        _ => {
                            return Err(bad(format!(
                                "option session_watch={v:?}: expected on or off"
                            )));
                        }
                    }
                }
                _ => rest.push((k, v)),
            }
        }
        if fencing_on {
            cfg.fencing = Fencing::Table(fencing_table);
        }
        cfg.tls = tls.finish(cfg!(feature = "tls")).map_err(|(kind, m)| {
            Error::new(
                kind,
                BACKEND,
                Operation::Connect,
                format!("{m} (URL {url})"),
            )
        })?;
        let tls_options = cfg.tls.libpq_options();
        for host_url in &per_host {
            let mut parsed = url::Url::parse(host_url)
                .map_err(|e| bad(format!("not a valid PostgreSQL URL: {e}")))?;
            let mut q = parsed.query_pairs_mut();
            q.clear();
            for (k, v) in &rest {
                q.append_pair(k, v);
            }
            for (k, v) in &tls_options {
                q.append_pair(k, v);
            }
            drop(q);
            cfg.hosts.push(
                PgConnectOptions::from_str(parsed.as_str())
                    .map_err(|e| bad(format!("sqlx rejected the URL: {e}")))?
                    .application_name("dlock")
                    .disable_statement_logging(),
            );
        }
        cfg.connect = cfg.hosts[0].clone();
        cfg.check_timings().map_err(bad)?;
        Ok(cfg)
    }

    /// The shortest time after the last packet from us at which the server can decide our
    /// connection is dead and end the session (freeing its locks).
    pub fn server_detection_min(&self) -> Duration {
        self.keepalive_detection().min(self.user_timeout)
    }

    fn keepalive_detection(&self) -> Duration {
        self.keepalives_idle.saturating_add(
            self.keepalives_interval
                .saturating_mul(self.keepalives_count),
        )
    }

    /// The longest time after the last packet from us before the server ends the session of
    /// a vanished client (roughly; the kernel adds up to one probe interval).
    pub fn server_detection_max(&self) -> Duration {
        self.keepalive_detection().max(self.user_timeout)
    }

    fn check_timings(&self) -> std::result::Result<(), String> {
        for (n, d) in [
            ("keepalives_idle", self.keepalives_idle),
            ("keepalives_interval", self.keepalives_interval),
        ] {
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err(format!(
                    "{n} must be a whole number of seconds ≥ 1s, got {d:?}"
                ));
            }
        }
        if self.user_timeout < Duration::from_millis(100) {
            return Err(format!(
                "user_timeout must be ≥ 100ms, got {:?}",
                self.user_timeout
            ));
        }
        if self.check_timeout.is_zero() || self.session_deadline.is_zero() {
            return Err("check_timeout and session_deadline must be > 0".into());
        }
        if self.check_timeout >= self.session_deadline {
            return Err(format!(
                "check_timeout ({:?}) must be shorter than session_deadline ({:?})",
                self.check_timeout, self.session_deadline
            ));
        }
        // The holder must learn of a possible loss before the server can free the lock.
        let server = self.server_detection_min();
        if self
            .session_deadline
            .saturating_add(Duration::from_millis(500))
            > server
        {
            return Err(format!(
                "session_deadline ({:?}) must be at least 500ms shorter than the server's \
                 earliest detection of a vanished client (min(keepalives_idle + \
                 keepalives_interval × keepalives_count, user_timeout) = {server:?}), or the \
                 holder could learn of the loss after someone else got the lock",
                self.session_deadline
            ));
        }
        Ok(())
    }
}

fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    let v = v.trim();
    let (num, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| v.split_at(i))
        .unwrap_or((v, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| "expected a duration like 500ms, 3s or 2m".to_string())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("unknown unit {unit:?}; use ms, s or m")),
    };
    if d > Duration::from_secs(24 * 3600) {
        return Err(format!("{v:?} is longer than a day"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ErrorKind;

    fn cfg(url: &str) -> Result<PgConfig> {
        PgConfig::from_url(&ConnectUrl::parse(url).unwrap())
    }

    #[test]
    fn defaults_keep_the_holder_ahead_of_the_server() {
        let c = cfg("postgres://u:pw@localhost/db").unwrap();
        assert_eq!(c.key, KeyScheme::HashTextExtended);
        assert_eq!(c.fencing, Fencing::None);
        assert_eq!(c.server_detection_min(), Duration::from_secs(6));
        assert!(c.server_detection_max() <= Duration::from_secs(10));
        assert!(c.session_deadline < c.server_detection_min());
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn our_options_are_parsed_and_sqlx_options_kept() {
        let c = cfg("postgresql://h/db?key=hashtext&fencing=table&fencing_table=locks.tokens&keepalives_idle=5s&user_timeout=9s&session_deadline=5s&idle_sessions=0&idle_timeout=2m&sslmode=disable").unwrap();
        assert_eq!(c.key, KeyScheme::HashText);
        assert_eq!(c.fencing, Fencing::Table("locks.tokens".into()));
        assert_eq!(c.keepalives_idle, Duration::from_secs(5));
        assert_eq!(c.session_deadline, Duration::from_secs(5));
        assert_eq!(c.user_timeout, Duration::from_secs(9));
        assert_eq!(c.idle_sessions, 0);
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert!(c.session_watch, "on by default");
        assert!(
            !cfg("postgres://h/db?session_watch=off")
                .unwrap()
                .session_watch
        );
        assert_eq!(c.connect.get_database(), Some("db"));
        assert!(matches!(
            c.connect.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ));
    }

    #[test]
    fn several_hosts_each_get_the_options() {
        let c = cfg("postgres://u:pw@h1:5432,h2:5433,[::1]/db?target_session_attrs=read-write&sslmode=disable&key=hashtext").unwrap();
        assert_eq!(c.target, TargetSessionAttrs::ReadWrite);
        let hosts: Vec<(String, u16)> = c
            .hosts
            .iter()
            .map(|h| (h.get_host().to_string(), h.get_port()))
            .collect();
        assert_eq!(hosts[0], ("h1".to_string(), 5432));
        assert_eq!(hosts[1], ("h2".to_string(), 5433));
        assert_eq!(hosts[2].1, 5432);
        assert_eq!(hosts.len(), 3);
        for h in &c.hosts {
            assert_eq!(h.get_database(), Some("db"));
            assert_eq!(h.get_username(), "u");
        }
        assert_eq!(c.key, KeyScheme::HashText);
        assert_eq!(c.connect.get_host(), "h1");
        let one = cfg("postgres://h/db").unwrap();
        assert_eq!((one.hosts.len(), one.target), (1, TargetSessionAttrs::Any));
        let p = cfg("postgres://h1,h2/db?target_session_attrs=primary").unwrap();
        assert_eq!(p.target, TargetSessionAttrs::Primary);
    }

    #[test]
    fn tls_options_in_libpq_and_dlock_spellings() {
        let f = std::env::current_exe().unwrap();
        let f = f.to_str().unwrap();
        // `key=` is the key scheme when it is a word, the client key when it is a file.
        let c = cfg(&format!(
            "postgres://h/db?key=hashtext&sslmode=prefer&ca={f}&cert={f}&sslkey={f}"
        ))
        .unwrap();
        assert_eq!(c.key, KeyScheme::HashText);
        assert!(c.tls.client.is_some());
        let c = cfg(&format!(
            "postgres://h/db?key={f}&sslcert={f}&sslrootcert={f}"
        ))
        .unwrap();
        assert_eq!(c.key, KeyScheme::HashTextExtended);
        assert_eq!(c.tls.mode, pg_tls::SslMode::Prefer);
        if cfg!(feature = "tls") {
            let c = cfg(&format!("postgres://h1,h2/db?sslmode=require&ca={f}")).unwrap();
            for h in &c.hosts {
                assert!(matches!(
                    h.get_ssl_mode(),
                    sqlx::postgres::PgSslMode::VerifyCa
                ));
            }
        } else {
            let err = cfg("postgres://h/db?sslmode=require").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
        let err = cfg(&format!("postgres://h/db?sslrootcert={f}&ca=/other.pem")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{err}");
        assert!(
            err.to_string().contains("sslrootcert and ca disagree"),
            "{err}"
        );
    }

    #[test]
    fn bad_options_are_invalid_url_errors() {
        for url in [
            "postgres://h/db?key=md5",
            "postgres://h/db?fencing=yes",
            "postgres://h/db?fencing_table=x;drop",
            "postgres://h/db?keepalives_idle=500ms",
            "postgres://h/db?keepalives_count=0",
            "postgres://h/db?session_deadline=30s",
            "postgres://h/db?check_timeout=5s",
            "postgres://h/db?user_timeout=abc",
            "postgres://h/db?keepalives_interval=18446744073709551615s",
            "postgres://h/db?keepalives_idle=99999999999999m",
            "postgres://h/db?idle_sessions=-1",
            "postgres://h/db?idle_sessions=1001",
            "postgres://h/db?idle_timeout=soon",
            "postgres://h/db?session_watch=maybe",
            "postgres://h1,h2/db?target_session_attrs=standby",
            "postgres://h1,h2/db?target_session_attrs=rw",
            "postgres://h1,h2:x/db",
            "postgres://[::1/db",
        ] {
            let err = cfg(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}: {err}");
        }
    }
}

//! `mysql://` / `mariadb://` URL options.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lock_core::hosts::{TargetSessionAttrs, split_hosts};
use lock_core::{ConnectUrl, Error, Result};
use sqlx::ConnectOptions;
use sqlx::mysql::MySqlConnectOptions;

use crate::BACKEND;
use crate::name::NameScheme;

/// Where fencing tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fencing {
    /// No fencing tokens (`Guard::token()` is `None`).
    None,
    /// A per-name counter in this table, incremented while holding the lock.
    Table(String),
}

/// The parsed backend configuration. `Debug` hides the password.
#[derive(Clone)]
pub struct MySqlConfig {
    /// The first host's options (what TLS and messages read).
    pub(crate) connect: MySqlConnectOptions,
    /// Every host of the URL, in its order, each with the same options.
    pub(crate) hosts: Vec<MySqlConnectOptions>,
    /// Which host a session may settle on (`?target_session_attrs=`).
    pub(crate) target: TargetSessionAttrs,
    pub(crate) display_url: String,
    pub(crate) names: NameScheme,
    pub(crate) fencing: Fencing,
    /// A lock session's guards are confirmed for this long after each session check was
    /// sent (checks run every third of it).
    pub(crate) session_deadline: Duration,
    /// How long one statement (other than a blocking `GET_LOCK`) may take.
    pub(crate) check_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// `SET SESSION wait_timeout` on every lock session: the server ends a session that sent
    /// nothing for this long, and frees its locks.
    pub(crate) wait_timeout: Duration,
    /// How many dedicated sessions of released waiting acquisitions are kept for the next
    /// waits (0: close each on release).
    pub(crate) idle_sessions: usize,
    /// How long a kept session waits for reuse before it is closed.
    pub(crate) idle_timeout: Duration,
    /// One more connection, always busy, whose end checks every lock session at once.
    pub(crate) session_watch: bool,
}

impl fmt::Debug for MySqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlConfig")
            .field("url", &self.display_url)
            .field("hosts", &self.hosts.len())
            .field("target", &self.target)
            .field("names", &self.names)
            .field("fencing", &self.fencing)
            .field("session_deadline", &self.session_deadline)
            .field("check_timeout", &self.check_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("idle_sessions", &self.idle_sessions)
            .field("idle_timeout", &self.idle_timeout)
            .field("session_watch", &self.session_watch)
            .finish()
    }
}

/// dlock's own options, removed before the rest of the URL goes to sqlx.
const OWN_OPTIONS: &[&str] = &[
    "names",
    "fencing",
    "fencing_table",
    "session_deadline",
    "check_timeout",
    "connect_timeout",
    "wait_timeout",
    "idle_sessions",
    "idle_timeout",
    "target_session_attrs",
    "session_watch",
];

/// The options sqlx's MySQL driver reads from a URL.
const SQLX_OPTIONS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

impl MySqlConfig {
    /// Parses a `mysql://` or `mariadb://` URL: `[user[:password]@]host[:port][/database]`
    /// with dlock's options (the crate docs) and sqlx's (`ssl-mode`, `ssl-ca`, …). Several
    /// hosts (`h1:p1,h2:p2`) are tried in order, as `?target_session_attrs=` says.
    pub fn from_url(url: &ConnectUrl) -> Result<Self> {
        let bad = |msg: String| Error::invalid_url(BACKEND, format!("{msg} (URL {url})"));
        let per_host = split_hosts(url.expose());
        let parsed = url::Url::parse(&per_host[0])
            .map_err(|e| bad(format!("not a valid MySQL URL: {e}")))?;
        if !matches!(parsed.scheme(), "mysql" | "mariadb") {
            return Err(bad(format!(
                "scheme {:?}: expected mysql or mariadb",
                parsed.scheme()
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host".into()));
        }
        let mut cfg = MySqlConfig {
            connect: MySqlConnectOptions::new(),
            hosts: Vec::new(),
            target: TargetSessionAttrs::default(),
            display_url: url.to_string(),
            names: NameScheme::Mapped,
            fencing: Fencing::None,
            session_deadline: Duration::from_secs(4),
            check_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(10),
            idle_sessions: 8,
            idle_timeout: Duration::from_secs(30),
            session_watch: true,
        };
        let mut fencing_table = "dlock_fencing".to_string();
        let mut fencing_on = false;
        let mut wait_timeout_set = false;
        let mut rest: Vec<(String, String)> = Vec::new();
        for (k, v) in parsed.query_pairs() {
            let (k, v) = (k.into_owned(), v.into_owned());
            let dur =
                |v: &str| parse_duration(v).map_err(|e| bad(format!("option {k}={v:?}: {e}")));
            match k.as_str() {
                "names" => {
                    cfg.names = NameScheme::from_str(&v).map_err(|e| bad(format!("option {e}")))?
                }
                "fencing" => match v.as_str() {
                    "table" => fencing_on = true,
                    "none" => fencing_on = false,
                    _ => return Err(bad(format!("option fencing={v:?}: expected table or none"))),
                },
                "fencing_table" => {
                    if !lock_core::is_sql_identifier(&v, 64) {
                        return Err(bad(format!(
                            "option fencing_table={v:?}: expected an identifier [A-Za-z_][A-Za-z0-9_]* (optionally database.table)"
                        )));
                    }
                    fencing_table = v;
                }
                "session_deadline" => cfg.session_deadline = dur(&v)?,
                "check_timeout" => cfg.check_timeout = dur(&v)?,
                "connect_timeout" => cfg.connect_timeout = dur(&v)?,
                "wait_timeout" => {
                    cfg.wait_timeout = dur(&v)?;
                    wait_timeout_set = true;
                }
                "idle_sessions" => {
                    cfg.idle_sessions = v.parse().ok().filter(|n| *n <= 1000).ok_or_else(|| {
                        bad(format!("option idle_sessions={v:?}: expected 0..=1000"))
                    })?
                }
                "idle_timeout" => cfg.idle_timeout = dur(&v)?,
                "session_watch" => {
                    cfg.session_watch = match v.as_str() {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(bad(format!(
                                "option session_watch={v:?}: expected on or off"
                            )));
                        }
                    }
                }
                "target_session_attrs" => {
                    cfg.target =
                        TargetSessionAttrs::from_str(&v).map_err(|e| bad(format!("option {e}")))?
                }
                // The names every dlock backend takes for the same files.
                "ca" => rest.push(("ssl-ca".into(), v)),
                "cert" => rest.push(("ssl-cert".into(), v)),
                "key" => rest.push(("ssl-key".into(), v)),
                s if SQLX_OPTIONS.contains(&s) => rest.push((k, v)),
                other => {
                    return Err(bad(format!(
                        "unknown option {other:?}: expected one of {} or sqlx's {}",
                        OWN_OPTIONS.join(", "),
                        SQLX_OPTIONS.join(", ")
                    )));
                }
            }
        }
        if fencing_on {
            cfg.fencing = Fencing::Table(fencing_table);
        }
        // TLS: a CA without a mode means "verify the server and its name" (a certificate is
        // always checked where TLS is asked for), and two spellings must agree.
        let value_of = |names: &[&str]| -> Result<Option<String>> {
            let mut found: Option<&String> = None;
            for (k, v) in &rest {
                if names.contains(&k.as_str()) {
                    if found.is_some_and(|f| f != v) {
                        return Err(bad(format!(
                            "option {} given twice with different values",
                            names.join(" / ")
                        )));
                    }
                    found = Some(v);
                }
            }
            Ok(found.cloned())
        };
        let mode = value_of(&["sslmode", "ssl-mode"])?;
        let ca = value_of(&["sslca", "ssl-ca"])?;
        value_of(&["sslcert", "ssl-cert"])?;
        value_of(&["sslkey", "ssl-key"])?;
        if ca.is_some() && mode.is_none() {
            rest.push(("ssl-mode".into(), "VERIFY_IDENTITY".into()));
        }
        let wants_tls = ca.is_some()
            || mode.as_deref().is_some_and(|m| {
                !m.eq_ignore_ascii_case("disabled") && !m.eq_ignore_ascii_case("preferred")
            });
        if wants_tls && !cfg!(feature = "tls") {
            return Err(Error::new(
                lock_core::ErrorKind::Unsupported,
                BACKEND,
                lock_core::Operation::Connect,
                format!(
                    "this build has no TLS: build lock-mysql (or the dlock facade) with the \
                     `tls` feature (URL {url})"
                ),
            ));
        }
        for (what, d) in [
            ("session_deadline", cfg.session_deadline),
            ("check_timeout", cfg.check_timeout),
            ("connect_timeout", cfg.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(format!("option {what}: must be more than 0")));
            }
        }
        if !wait_timeout_set {
            // Whole seconds, at least twice the deadline: the guards learn first.
            cfg.wait_timeout =
                Duration::from_secs((cfg.session_deadline * 2).as_secs_f64().ceil() as u64)
                    .max(cfg.wait_timeout);
        }
        if cfg.wait_timeout.subsec_nanos() != 0 || cfg.wait_timeout.is_zero() {
            return Err(bad(format!(
                "option wait_timeout={:?}: the server takes whole seconds, at least 1",
                cfg.wait_timeout
            )));
        }
        if cfg.wait_timeout <= cfg.session_deadline {
            return Err(bad(format!(
                "option wait_timeout={:?} must be longer than session_deadline={:?}: the \
                 server would free a quiet session's locks before its guards stop trusting them",
                cfg.wait_timeout, cfg.session_deadline
            )));
        }
        for host_url in &per_host {
            let mut parsed = url::Url::parse(host_url)
                .map_err(|e| bad(format!("not a valid MySQL URL: {e}")))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(bad("a host of the list is empty".into()));
            }
            // sqlx parses `mysql://` only; the rest of the URL is the same.
            parsed
                .set_scheme("mysql")
                .map_err(|()| bad("cannot rewrite the scheme".into()))?;
            {
                let mut q = parsed.query_pairs_mut();
                q.clear();
                for (k, v) in &rest {
                    q.append_pair(k, v);
                }
            }
            let text = parsed.as_str().trim_end_matches('?').to_string();
            // A blocking GET_LOCK and the session watch's SLEEP are long on purpose: sqlx's
            // slow-statement warnings would be noise (and mail from cron).
            cfg.hosts.push(
                MySqlConnectOptions::from_str(&text)
                    .map_err(|e| bad(format!("not a valid MySQL URL: {e}")))?
                    .disable_statement_logging(),
            );
        }
        cfg.connect = cfg.hosts[0].clone();
        Ok(cfg)
    }

    /// Whether connections verify TLS (`ssl-mode` `VERIFY_CA` or `VERIFY_IDENTITY`).
    pub fn verifies_tls(&self) -> bool {
        use sqlx::mysql::MySqlSslMode;
        matches!(
            self.connect.get_ssl_mode(),
            MySqlSslMode::VerifyCa | MySqlSslMode::VerifyIdentity
        )
    }

    /// The name scheme (`?names=`).
    pub fn names(&self) -> NameScheme {
        self.names
    }

    /// Where fencing tokens come from (`?fencing=`).
    pub fn fencing(&self) -> &Fencing {
        &self.fencing
    }

    /// How long a guard is confirmed after each session check (`?session_deadline=`).
    pub fn session_deadline(&self) -> Duration {
        self.session_deadline
    }

    /// Which host a session may settle on (`?target_session_attrs=`).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target
    }

    /// The lock sessions' `wait_timeout` (`?wait_timeout=`).
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }
}

fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| format!("{e}: expected a duration such as 500ms, 4s or 1m"))?;
    if d > Duration::from_secs(86_400) {
        return Err("expected a duration up to 24h".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> Result<MySqlConfig> {
        MySqlConfig::from_url(&ConnectUrl::parse(url)?)
    }

    #[test]
    fn defaults() {
        let c = cfg("mysql://root@127.0.0.1:3306/dlock").unwrap();
        assert_eq!(c.names, NameScheme::Mapped);
        assert_eq!(c.fencing, Fencing::None);
        assert_eq!(c.session_deadline, Duration::from_secs(4));
        assert_eq!(c.wait_timeout, Duration::from_secs(10));
        assert_eq!(c.connect.get_port(), 3306);
        assert_eq!(c.connect.get_database(), Some("dlock"));
    }

    #[test]
    fn mariadb_scheme_and_options() {
        let c = cfg("mariadb://u:secret@db:3307/app?names=raw&fencing=table&fencing_table=app.fence&session_deadline=10s&ssl-mode=disabled").unwrap();
        assert_eq!(c.names, NameScheme::Raw);
        assert_eq!(c.fencing, Fencing::Table("app.fence".into()));
        // Twice the deadline when not given.
        assert_eq!(c.wait_timeout, Duration::from_secs(20));
        assert_eq!(c.connect.get_host(), "db");
        assert_eq!(c.connect.get_username(), "u");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn several_hosts_each_get_the_options() {
        let c = cfg("mariadb://u:pw@h1:3306,h2:3307,[::1]/db?target_session_attrs=read-write&ssl-mode=disabled&fencing=table").unwrap();
        let hosts: Vec<(String, u16)> = c
            .hosts
            .iter()
            .map(|h| (h.get_host().to_string(), h.get_port()))
            .collect();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0], ("h1".to_string(), 3306));
        assert_eq!(hosts[1], ("h2".to_string(), 3307));
        assert_eq!(hosts[2].1, 3306);
        for h in &c.hosts {
            assert_eq!(h.get_database(), Some("db"));
            assert_eq!(h.get_username(), "u");
        }
        assert_eq!(c.target, TargetSessionAttrs::ReadWrite);
        assert_eq!(c.fencing, Fencing::Table("dlock_fencing".into()));
        let one = cfg("mysql://u@h/db").unwrap();
        assert_eq!((one.hosts.len(), one.target), (1, TargetSessionAttrs::Any));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_options_without_the_feature_are_unsupported() {
        let e = cfg("mariadb://u@h/db?ca=/etc/ca.pem").unwrap_err();
        assert_eq!(e.kind(), lock_core::ErrorKind::Unsupported, "{e}");
        assert!(cfg("mariadb://u@h/db?ssl-mode=DISABLED").is_ok());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_names_and_the_verify_default() {
        use sqlx::mysql::MySqlSslMode;
        let c = cfg("mariadb://u@h/db?ca=/etc/ca.pem").unwrap();
        assert!(matches!(
            c.connect.get_ssl_mode(),
            MySqlSslMode::VerifyIdentity
        ));
        let c = cfg("mariadb://u@h/db?ssl-ca=/etc/ca.pem&ssl-mode=VERIFY_CA").unwrap();
        assert!(matches!(c.connect.get_ssl_mode(), MySqlSslMode::VerifyCa));
        let e = cfg("mariadb://u@h/db?ca=/a.pem&ssl-ca=/b.pem").unwrap_err();
        assert_eq!(e.kind(), lock_core::ErrorKind::InvalidUrl, "{e}");
    }

    #[test]
    fn bad_options_are_invalid_url() {
        for url in [
            "mysql://h/db?names=upper",
            "mysql://h/db?fencing=yes",
            "mysql://h/db?fencing_table=a;drop",
            "mysql://h/db?session_deadline=soon",
            "mysql://h/db?session_deadline=0s",
            "mysql://h/db?wait_timeout=2s",
            "mysql://h/db?wait_timeout=10.5s",
            "mysql://h/db?idle_sessions=-1",
            "mysql://h/db?nosuch=1",
            "mysql://h/db?target_session_attrs=standby",
            "mysql://h/db?session_watch=yes",
            "mysql://h1,,h2/db",
            "mysql:///db",
            "postgres://h/db",
        ] {
            let e = cfg(url).unwrap_err();
            assert_eq!(e.kind(), lock_core::ErrorKind::InvalidUrl, "{url}: {e}");
        }
    }
}

//! URL parsing: `redis://[user[:password]@]host[:port][/db][?options]`,
//! `redlock://[user[:password]@]h1[:p1],h2[:p2],…[/db][?options]` and
//! `redis+sentinel://[user[:password]@]s1[:p1],s2[:p2],…/master[/db][?options]`.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use lock_core::{ConnectUrl, Error};
use redis::RedisConnectionInfo;

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "dlock:";
/// The default time to wait for a connection or a reply.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;
const OPTIONS: &str = "prefix, timeout";

/// Why a `redis://` or `redlock://` URL was rejected. Carried as the source of the
/// [`ErrorKind::InvalidUrl`](lock_core::ErrorKind::InvalidUrl) error that connecting returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidUrl {
    /// No host in the URL.
    #[error("no host given (expected {0})")]
    NoHost(&'static str),
    /// A host entry that cannot be parsed (bad port, unbalanced `[`).
    #[error("bad host {host:?}: {reason}")]
    BadHost {
        /// The offending entry.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `redis://` takes one host; several hosts mean Redlock.
    #[error(
        "redis:// takes a single host; for several independent instances use redlock://h1:p1,h2:p2,h3:p3"
    )]
    SeveralHosts,
    /// The path is not a database number.
    #[error("bad database {0:?}: the path must be a database number such as /0")]
    BadDatabase(String),
    /// A query option this backend does not know.
    #[error("unknown option {0:?} (known options: {OPTIONS})")]
    UnknownOption(String),
    /// A known option with a bad value.
    #[error("bad value {value:?} for option {option}: {reason}")]
    BadValue {
        /// The option.
        option: &'static str,
        /// Its value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same option twice.
    #[error("option {0} given twice")]
    Repeated(&'static str),
    /// Bad percent-encoding.
    #[error("bad percent-encoding in {0:?}")]
    BadEncoding(String),
    /// The same instance listed twice: it would vote twice in the Redlock quorum.
    #[error("instance {0} is listed twice; Redlock needs independent instances")]
    DuplicateHost(String),
    /// A `#fragment`.
    #[error("URL fragments (#…) mean nothing here")]
    Fragment,
    /// `redis+sentinel://` without the master's name as the path.
    #[error(
        "no master name: the path of a redis+sentinel:// URL is the name the Sentinels monitor the master under (redis+sentinel://s1:26379,s2:26379/mymaster)"
    )]
    NoMaster,
}

/// Single instance or Redlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Single,
    Redlock,
    /// One master, found through its Sentinels.
    Sentinel,
}

/// One Redis endpoint.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub info: RedisConnectionInfo,
    pub timeout: Duration,
    /// When set, `host:port` is only the first Sentinel's: connections go to the master
    /// they name.
    pub sentinels: Option<Arc<crate::sentinel::Sentinels>>,
}

impl Endpoint {
    /// `host:port` as people write it (`master NAME via Sentinel h:p,…` through Sentinels).
    pub fn label(&self) -> String {
        if let Some(s) = &self.sentinels {
            let addrs: Vec<String> = s.addrs.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            return format!("master {:?} via Sentinel {}", s.master, addrs.join(","));
        }
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.label())
            .field("db", &self.info.db())
            .field("username", &self.info.username())
            .field("password", &self.info.password().map(|_| "***"))
            .finish()
    }
}

/// A parsed URL. `Debug` hides the password.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub endpoints: Vec<Endpoint>,
    /// Raw bytes: keys are `prefix ++ name`.
    pub prefix: Vec<u8>,
    pub timeout: Duration,
}

impl Config {
    /// Parses `url` (scheme `redis` or `redlock`).
    pub fn from_url(url: &ConnectUrl, backend: &'static str) -> Result<Config, Error> {
        let mode = match url.scheme() {
            "redlock" => Mode::Redlock,
            "redis+sentinel" => Mode::Sentinel,
            _ => Mode::Single,
        };
        parse(mode, url.rest())
            .map_err(|e| Error::invalid_url(backend, format!("{e} (URL {url})")).with_source(e))
    }
}

fn parse(mode: Mode, rest: &str) -> Result<Config, InvalidUrl> {
    if rest.contains('#') {
        return Err(InvalidUrl::Fragment);
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let expected = match mode {
        Mode::Single => "redis://host:port",
        Mode::Redlock => "redlock://h1:p1,h2:p2,h3:p3",
        Mode::Sentinel => "redis+sentinel://s1:26379,s2:26379/mymaster",
    };
    let mut info = RedisConnectionInfo::default();
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let user = percent_decode_with(user, false)?;
        if !user.is_empty() {
            info = info.set_username(utf8(user, "user name")?);
        }
        if let Some(p) = password {
            info = info.set_password(utf8(percent_decode_with(p, false)?, "password")?);
        }
    }
    let path = path.trim_end_matches('/');
    let (master, path) = match mode {
        Mode::Sentinel => {
            let (m, db) = path.split_once('/').unwrap_or((path, ""));
            if m.is_empty() {
                return Err(InvalidUrl::NoMaster);
            }
            (
                Some(utf8(percent_decode_with(m, false)?, "master name")?),
                db,
            )
        }
        _ => (None, path),
    };
    if !path.is_empty() {
        let db: i64 = path
            .parse()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| InvalidUrl::BadDatabase(path.to_string()))?;
        info = info.set_db(db);
    }
    let mut prefix: Option<Vec<u8>> = None;
    let mut timeout: Option<Duration> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "prefix" => {
                if prefix.is_some() {
                    return Err(InvalidUrl::Repeated("prefix"));
                }
                prefix = Some(percent_decode_with(value, true)?);
            }
            "timeout" => {
                if timeout.is_some() {
                    return Err(InvalidUrl::Repeated("timeout"));
                }
                timeout = Some(parse_duration("timeout", value)?);
            }
            other => return Err(InvalidUrl::UnknownOption(other.to_string())),
        }
    }
    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    if hosts.is_empty() {
        return Err(InvalidUrl::NoHost(expected));
    }
    let mut endpoints = Vec::new();
    let default_port = if mode == Mode::Sentinel {
        DEFAULT_SENTINEL_PORT
    } else {
        DEFAULT_PORT
    };
    for host in hosts.split(',') {
        let (host, port) = parse_host(host, default_port)?;
        if endpoints
            .iter()
            .any(|e: &Endpoint| e.host.eq_ignore_ascii_case(&host) && e.port == port)
        {
            return Err(InvalidUrl::DuplicateHost(format!("{host}:{port}")));
        }
        endpoints.push(Endpoint {
            host,
            port,
            info: info.clone(),
            timeout,
            sentinels: None,
        });
    }
    if mode == Mode::Single && endpoints.len() > 1 {
        return Err(InvalidUrl::SeveralHosts);
    }
    if let Some(master) = master {
        // One endpoint: the master, wherever the Sentinels say it is.
        let addrs = endpoints.iter().map(|e| (e.host.clone(), e.port)).collect();
        endpoints.truncate(1);
        endpoints[0].sentinels = Some(Arc::new(crate::sentinel::Sentinels { master, addrs }));
    }
    Ok(Config {
        endpoints,
        prefix: prefix.unwrap_or_else(|| DEFAULT_PREFIX.as_bytes().to_vec()),
        timeout,
    })
}

fn parse_host(entry: &str, default_port: u16) -> Result<(String, u16), InvalidUrl> {
    let bad = |reason: &str| InvalidUrl::BadHost {
        host: entry.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("unbalanced [ in an IPv6 address"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected :port after ]"))?,
                ),
            ),
        }
    } else {
        match entry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host name"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_string(), port))
}

/// `250ms`, `2s`, `1m`, or a bare number of milliseconds.
fn parse_duration(option: &'static str, value: &str) -> Result<Duration, InvalidUrl> {
    let bad = |reason| InvalidUrl::BadValue {
        option,
        value: value.to_string(),
        reason,
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| bad("expected a duration such as 500ms, 2s or 1m"))?;
    let d = match unit {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad("expected a duration such as 500ms, 2s or 1m")),
    };
    if d.is_zero() {
        return Err(bad("must be greater than zero"));
    }
    if d > Duration::from_secs(3600) {
        return Err(bad("must be at most one hour"));
    }
    Ok(d)
}

/// Decodes `%XX`; `+` is a space only in query values (form encoding), never in userinfo.
fn percent_decode_with(s: &str, plus_is_space: bool) -> Result<Vec<u8>, InvalidUrl> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| InvalidUrl::BadEncoding(s.to_string()))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn utf8(bytes: Vec<u8>, what: &'static str) -> Result<String, InvalidUrl> {
    String::from_utf8(bytes).map_err(|_| InvalidUrl::BadValue {
        option: what,
        value: "(not UTF-8)".to_string(),
        reason: "must be UTF-8 after percent-decoding",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(mode: Mode, rest: &str) -> Config {
        parse(mode, rest).unwrap_or_else(|e| panic!("{rest}: {e}"))
    }

    #[test]
    fn single_instance_urls() {
        let c = ok(Mode::Single, "127.0.0.1:6380");
        assert_eq!(c.endpoints.len(), 1);
        assert_eq!(c.endpoints[0].label(), "127.0.0.1:6380");
        assert_eq!(c.prefix, b"dlock:");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);

        let c = ok(
            Mode::Single,
            "app:p%40ss@cache/3?prefix=my%20app%3A&timeout=250ms",
        );
        assert_eq!(c.endpoints[0].label(), "cache:6379");
        assert_eq!(c.endpoints[0].info.db(), 3);
        assert_eq!(c.endpoints[0].info.username(), Some("app"));
        assert_eq!(c.endpoints[0].info.password(), Some("p@ss"));
        assert_eq!(c.prefix, b"my app:");
        assert_eq!(c.timeout, Duration::from_millis(250));

        // `+` is literal in userinfo (form encoding applies to query values only)
        let c = ok(Mode::Single, "app:a+b%2Bc@cache?prefix=x+y");
        assert_eq!(c.endpoints[0].info.password(), Some("a+b+c"));
        assert_eq!(c.prefix, b"x y");

        let c = ok(Mode::Single, ":secret@[::1]:7000/?prefix=");
        assert_eq!(c.endpoints[0].label(), "[::1]:7000");
        assert_eq!(c.endpoints[0].info.username(), None);
        assert!(c.prefix.is_empty());
    }

    #[test]
    fn redlock_urls() {
        let c = ok(Mode::Redlock, "h1:1,h2:2,h3?timeout=2s");
        let labels: Vec<_> = c.endpoints.iter().map(Endpoint::label).collect();
        assert_eq!(labels, ["h1:1", "h2:2", "h3:6379"]);
    }

    #[test]
    fn sentinel_urls() {
        let c = ok(
            Mode::Sentinel,
            "u:pw@s1:5000,s2,[::1]:5002/my%20master/2?prefix=x",
        );
        assert_eq!(c.endpoints.len(), 1);
        let e = &c.endpoints[0];
        let s = e.sentinels.as_ref().unwrap();
        assert_eq!(s.master, "my master");
        assert_eq!(
            s.addrs,
            [
                ("s1".to_string(), 5000),
                ("s2".to_string(), 26379),
                ("::1".to_string(), 5002)
            ]
        );
        assert_eq!(e.info.db(), 2);
        assert_eq!(e.info.password(), Some("pw"));
        assert_eq!(c.prefix, b"x");
        assert!(e.label().contains("via Sentinel s1:5000"), "{}", e.label());
        assert!(!format!("{c:?}").contains("pw\""));
        assert_eq!(ok(Mode::Sentinel, "s1/m").endpoints[0].info.db(), 0);
        for bad in ["s1:1,s2:2", "s1:1/", "s1/m/x", "s1,s1/m"] {
            assert!(parse(Mode::Sentinel, bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse(Mode::Sentinel, "s1:1").unwrap_err(),
            InvalidUrl::NoMaster
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ok(Mode::Single, "u:hunter2@h:1");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"), "{dbg}");
    }

    #[test]
    fn bad_urls_are_typed_errors() {
        type Case = (Mode, &'static str, fn(&InvalidUrl) -> bool);
        let cases: &[Case] = &[
            (Mode::Single, "", |e| matches!(e, InvalidUrl::NoHost(_))),
            (Mode::Redlock, "?prefix=x", |e| {
                matches!(e, InvalidUrl::NoHost(_))
            }),
            (Mode::Single, "h:1,h:2", |e| {
                matches!(e, InvalidUrl::SeveralHosts)
            }),
            (Mode::Single, "h:port", |e| {
                matches!(e, InvalidUrl::BadHost { .. })
            }),
            (Mode::Single, "h:0", |e| {
                matches!(e, InvalidUrl::BadHost { .. })
            }),
            (Mode::Redlock, "h:1,,h:2", |e| {
                matches!(e, InvalidUrl::BadHost { .. })
            }),
            (Mode::Single, "[::1:7000", |e| {
                matches!(e, InvalidUrl::BadHost { .. })
            }),
            (Mode::Single, "h/db", |e| {
                matches!(e, InvalidUrl::BadDatabase(_))
            }),
            (Mode::Single, "h?bogus=1", |e| {
                matches!(e, InvalidUrl::UnknownOption(_))
            }),
            (Mode::Single, "h?timeout=soon", |e| {
                matches!(e, InvalidUrl::BadValue { .. })
            }),
            (Mode::Single, "h?timeout=0", |e| {
                matches!(e, InvalidUrl::BadValue { .. })
            }),
            (Mode::Single, "h?prefix=a&prefix=b", |e| {
                matches!(e, InvalidUrl::Repeated(_))
            }),
            (Mode::Single, "h?prefix=%zz", |e| {
                matches!(e, InvalidUrl::BadEncoding(_))
            }),
            (Mode::Single, "h#x", |e| matches!(e, InvalidUrl::Fragment)),
            (Mode::Redlock, "h:1,H:1,h:2", |e| {
                matches!(e, InvalidUrl::DuplicateHost(_))
            }),
        ];
        for (mode, rest, check) in cases {
            match parse(*mode, rest) {
                Ok(c) => panic!("{rest:?} parsed: {c:?}"),
                Err(e) => assert!(check(&e), "{rest:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("timeout", "1m").unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_duration("timeout", "750").unwrap(),
            Duration::from_millis(750)
        );
        assert!(parse_duration("timeout", "2h").is_err());
    }
}

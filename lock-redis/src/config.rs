//! URL parsing: `redis://[user[:password]@]host[:port][/db][?options]`,
//! `redlock://[user[:password]@]h1[:p1],h2[:p2],…[/db][?options]` and
//! `redis+sentinel://[user[:password]@]s1[:p1],s2[:p2],…/master[/db][?options]`, and over
//! TLS `rediss://…` and Redlock with `rediss://` members or `?tls=on`.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use lock_core::{ConnectUrl, Error, ErrorKind, Operation};
use redis::RedisConnectionInfo;

use crate::tls::TlsWanted;

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "dlock:";
/// The default time to wait for a connection or a reply.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;
const OPTIONS: &str =
    "prefix, timeout, fencing (redis://), ca (alias cacert), cert, key, tls (redlock)";

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
    /// Redlock members where some speak TLS and some do not.
    #[error(
        "Redlock members mix TLS and plain text: every member sees the lock's tokens, so one \
         plain-text member would show them to anyone on its network; make every member \
         rediss:// (or use ?tls=on) or none"
    )]
    MixedTls,
    /// `ca=`, `cert=` or `key=` on a connection without TLS.
    #[error(
        "option {0} applies to TLS connections only: use rediss://host:port (Redlock: rediss:// \
         members or ?tls=on)"
    )]
    TlsOptionWithoutTls(&'static str),
    /// `cert=` without `key=` or the reverse.
    #[error("a client certificate needs both cert= and key=")]
    CertWithoutKey,
    /// TLS through Sentinel is not implemented.
    #[error(
        "TLS through Sentinel (to the Sentinels and the master) is not supported yet; \
         redis+sentinel:// speaks plain text only"
    )]
    TlsThroughSentinel,
    /// `fencing=` on a Redlock URL.
    #[error(
        "option fencing applies to redis://, rediss:// and redis+sentinel:// only: Redlock has \
         no fencing tokens (independent counters on N servers give no single order)"
    )]
    FencingOnRedlock,
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
    /// TLS on every connection (the server's certificate must name `host`).
    pub tls: Option<crate::tls::Connector>,
    /// What the TLS settings were, for `Debug` (paths, never key material).
    pub tls_wanted: Option<TlsWanted>,
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
            .field("tls", &self.tls_wanted.as_ref().map(TlsWanted::describe))
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
    /// Whether the acquire script also counts a fencing token (`fencing=on`, the default).
    pub fencing: bool,
}

impl Config {
    /// Parses `url` (scheme `redis`, `rediss`, `redlock` or `redis+sentinel`) and, for TLS,
    /// reads the certificate files it names.
    pub fn from_url(url: &ConnectUrl, backend: &'static str) -> Result<Config, Error> {
        let mode = match url.scheme() {
            "redlock" => Mode::Redlock,
            "redis+sentinel" => Mode::Sentinel,
            _ => Mode::Single,
        };
        let mut config = parse(mode, url.scheme() == "rediss", url.rest()).map_err(|e| {
            let kind = match e {
                InvalidUrl::TlsThroughSentinel => ErrorKind::Unsupported,
                _ => ErrorKind::InvalidUrl,
            };
            Error::new(
                kind,
                backend,
                Operation::Connect,
                format!("{e} (URL {url})"),
            )
            .with_source(e)
        })?;
        if let Some(wanted) = config.endpoints[0].tls_wanted.clone() {
            let connector = crate::tls::Connector::new(&wanted).map_err(|(kind, why)| {
                Error::new(
                    kind,
                    backend,
                    Operation::Connect,
                    format!("{why} (URL {url})"),
                )
            })?;
            for e in &mut config.endpoints {
                e.tls = Some(connector.clone());
            }
        }
        Ok(config)
    }
}

/// Redlock members may be written `rediss://host:port` (or `redis://host:port`): strips
/// those schemes, counting (TLS members, explicitly plain members).
fn member_schemes(mode: Mode, rest: &str) -> (String, usize, usize) {
    if mode != Mode::Redlock {
        return (rest.to_string(), 0, 0);
    }
    let (head, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (mut tls, mut plain) = (0, 0);
    let mut members = Vec::new();
    for piece in head.split(',') {
        let at = piece.rfind('@').map_or(0, |i| i + 1);
        let (before, member) = piece.split_at(at);
        let member = if let Some(m) = member.strip_prefix("rediss://") {
            tls += 1;
            m
        } else if let Some(m) = member.strip_prefix("redis://") {
            plain += 1;
            m
        } else {
            member
        };
        members.push(format!("{before}{member}"));
    }
    let mut out = members.join(",");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    (out, tls, plain)
}

fn parse(mode: Mode, tls_scheme: bool, rest: &str) -> Result<Config, InvalidUrl> {
    if rest.contains('#') {
        return Err(InvalidUrl::Fragment);
    }
    let (rest, tls_members, plain_members) = member_schemes(mode, rest);
    let rest = rest.as_str();
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
    let mut fencing: Option<bool> = None;
    let mut tls_files = TlsOptions::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if tls_files.take(key, value)? {
            continue;
        }
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
            "fencing" => {
                if mode == Mode::Redlock {
                    return Err(InvalidUrl::FencingOnRedlock);
                }
                if fencing.is_some() {
                    return Err(InvalidUrl::Repeated("fencing"));
                }
                fencing = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(InvalidUrl::BadValue {
                            option: "fencing",
                            value: value.to_string(),
                            reason: "expected on or off",
                        });
                    }
                });
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
            tls: None,
            tls_wanted: None,
        });
    }
    if mode == Mode::Single && endpoints.len() > 1 {
        return Err(InvalidUrl::SeveralHosts);
    }
    let tls = tls_files.decide(
        mode,
        tls_scheme,
        endpoints.len(),
        tls_members,
        plain_members,
    )?;
    for e in &mut endpoints {
        e.tls_wanted = tls.clone();
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
        fencing: fencing.unwrap_or(mode != Mode::Redlock),
    })
}

/// The TLS query options as given.
#[derive(Default)]
struct TlsOptions {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    on: Option<bool>,
}

impl TlsOptions {
    /// Takes `key=value` if it is a TLS option (`ca`, its redis-cli name `cacert`, `cert`,
    /// `key`, `tls`).
    fn take(&mut self, key: &str, value: &str) -> Result<bool, InvalidUrl> {
        let (slot, name) = match key {
            "ca" | "cacert" => (&mut self.ca, "ca"),
            "cert" => (&mut self.cert, "cert"),
            "key" => (&mut self.key, "key"),
            "tls" => {
                if self.on.is_some() {
                    return Err(InvalidUrl::Repeated("tls"));
                }
                self.on = Some(match value {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => {
                        return Err(InvalidUrl::BadValue {
                            option: "tls",
                            value: value.to_string(),
                            reason: "expected on or off",
                        });
                    }
                });
                return Ok(true);
            }
            _ => return Ok(false),
        };
        if slot.is_some() {
            return Err(InvalidUrl::Repeated(name));
        }
        let path = percent_decode_with(value, true)?;
        if path.is_empty() {
            return Err(InvalidUrl::BadValue {
                option: name,
                value: String::new(),
                reason: "expected a file path",
            });
        }
        *slot = Some(path);
        Ok(true)
    }

    /// Whether the connections use TLS, and with what.
    fn decide(
        self,
        mode: Mode,
        tls_scheme: bool,
        members: usize,
        tls_members: usize,
        plain_members: usize,
    ) -> Result<Option<TlsWanted>, InvalidUrl> {
        let tls = match mode {
            Mode::Single => {
                if self.on.is_some() {
                    return Err(InvalidUrl::UnknownOption("tls".to_string()));
                }
                tls_scheme
            }
            Mode::Sentinel => {
                if self.on == Some(true) || self.ca.is_some() || self.cert.is_some() {
                    return Err(InvalidUrl::TlsThroughSentinel);
                }
                false
            }
            Mode::Redlock => {
                let unmarked = members - tls_members - plain_members;
                match self.on {
                    Some(true) if plain_members > 0 => return Err(InvalidUrl::MixedTls),
                    Some(false) if tls_members > 0 => return Err(InvalidUrl::MixedTls),
                    Some(on) => on,
                    None if tls_members > 0 && tls_members < members => {
                        return Err(InvalidUrl::MixedTls);
                    }
                    None => tls_members > 0 && unmarked == 0,
                }
            }
        };
        let path = |b: Vec<u8>, what| utf8(b, what).map(std::path::PathBuf::from);
        if !tls {
            for (set, name) in [
                (self.ca.is_some(), "ca"),
                (self.cert.is_some(), "cert"),
                (self.key.is_some(), "key"),
            ] {
                if set {
                    return Err(InvalidUrl::TlsOptionWithoutTls(name));
                }
            }
            return Ok(None);
        }
        let client = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((path(c, "cert")?, path(k, "key")?)),
            (None, None) => None,
            _ => return Err(InvalidUrl::CertWithoutKey),
        };
        Ok(Some(TlsWanted {
            ca: self.ca.map(|c| path(c, "ca")).transpose()?,
            client,
        }))
    }
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
mod tests;

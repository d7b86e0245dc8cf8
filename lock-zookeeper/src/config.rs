//! `zk://[user:password@]h:p[,h:p…][/chroot][?base=…&session_timeout=…]` parsing.

use std::fmt;
use std::time::Duration;

use lock_core::{ConnectUrl, Error, LockName};

use crate::NAME;
use crate::layout;

/// Where locks live when the URL has no `base`.
pub(crate) const DEFAULT_BASE: &str = "/dlock/locks";
/// The session timeout asked for when the URL has no `session_timeout`.
pub(crate) const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_PORT: u16 = 2181;
const OPTIONS: &str = "base, session_timeout";

/// What is wrong with a `zk://` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidUrl {
    #[error("no ZooKeeper host given (expected zk://host:port[,host:port…])")]
    NoHosts,
    #[error("empty host in the host list {0:?}")]
    EmptyHost(String),
    #[error("bad port in {0:?}: expected a number from 1 to 65535")]
    BadPort(String),
    #[error("bad {what} {path:?}: {reason}")]
    BadPath {
        what: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("unknown option {0:?}; known options: {OPTIONS}")]
    UnknownOption(String),
    #[error("option {0:?} given twice")]
    DuplicateOption(String),
    #[error("option {key:?} has no value (expected {key}=…)")]
    MissingValue { key: String },
    #[error("bad percent-escape in {0:?}")]
    BadEscape(String),
    #[error(
        "session_timeout {value:?} is not a duration (write 10s, 2500ms, or a plain number of \
         milliseconds)"
    )]
    BadDuration { value: String },
    #[error(
        "session_timeout {value:?} is out of range: dlock accepts {MIN_SESSION_TIMEOUT:?} to \
         {MAX_SESSION_TIMEOUT:?}, and the server further clamps it to its own bounds (by default \
         2 to 20 times its tickTime)"
    )]
    TimeoutOutOfRange { value: String },
    #[error("URL fragments (#…) mean nothing here")]
    Fragment,
    #[error(
        "writers={0:?}: write `mutex` (Curator's InterProcessMutex nodes, the default) or \
         `rwlock` (the write lock of Curator's InterProcessReadWriteLock)"
    )]
    BadWriters(String),
}

/// A parsed `zk://` URL. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// `host:port` entries, in URL order.
    pub hosts: Vec<String>,
    /// The chroot and the base joined: the absolute path every lock lives under; empty for
    /// the root of the ZooKeeper tree.
    pub root: String,
    /// The session timeout to ask the server for.
    pub session_timeout: Duration,
    /// `user:password` for ZooKeeper's `digest` scheme.
    auth: Option<(String, String)>,
    /// `writers=rwlock`: the exclusive lock's node is Curator's write-lock node
    /// (`__WRIT__`) instead of its mutex node (`lock-`).
    pub rwlock_writers: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("hosts", &self.hosts)
            .field("root", &self.root)
            .field("session_timeout", &self.session_timeout)
            .field(
                "auth",
                &self.auth.as_ref().map(|(user, _)| format!("{user}:***")),
            )
            .finish()
    }
}

impl Config {
    /// Parses a `zk://` URL into a typed error for lock-core.
    pub fn from_url(url: &ConnectUrl) -> Result<Config, Error> {
        Config::parse(url.rest()).map_err(|e| {
            Error::invalid_url(NAME, format!("bad ZooKeeper URL {url}")).with_source(e)
        })
    }

    /// Parses what follows `zk://`.
    pub fn parse(rest: &str) -> Result<Config, InvalidUrl> {
        if rest.contains('#') {
            return Err(InvalidUrl::Fragment);
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, chroot) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((decode(user)?, decode(password)?)), hosts)
            }
            None => (None, authority),
        };
        let hosts = parse_hosts(hosts)?;
        let chroot = normalize_path("chroot", chroot)?;

        let mut base: Option<String> = None;
        let mut session_timeout: Option<Duration> = None;
        let mut writers: Option<bool> = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = match pair.split_once('=') {
                Some((k, v)) => (k, decode(v)?),
                None => {
                    return Err(InvalidUrl::MissingValue {
                        key: pair.to_string(),
                    });
                }
            };
            match key {
                "base" => set_once(&mut base, key, normalize_path("base", &value)?)?,
                "session_timeout" => set_once(&mut session_timeout, key, parse_timeout(&value)?)?,
                "writers" => {
                    let rw = match value.as_str() {
                        "mutex" => false,
                        "rwlock" => true,
                        _ => return Err(InvalidUrl::BadWriters(value)),
                    };
                    set_once(&mut writers, key, rw)?
                }
                other => return Err(InvalidUrl::UnknownOption(other.to_string())),
            }
        }
        let base = match base {
            Some(b) => b,
            None => DEFAULT_BASE.to_string(),
        };
        let root = format!("{chroot}{base}");
        if root == "/zookeeper" || root.starts_with("/zookeeper/") {
            return Err(InvalidUrl::BadPath {
                what: "chroot/base",
                path: root,
                reason: "/zookeeper is reserved for the server's own use",
            });
        }
        Ok(Config {
            hosts,
            root,
            session_timeout: session_timeout.unwrap_or(DEFAULT_SESSION_TIMEOUT),
            auth,
            rwlock_writers: writers.unwrap_or(false),
        })
    }

    /// The connect string for the client: `h1:p1,h2:p2` (the chroot is applied by dlock).
    pub fn connect_string(&self) -> String {
        self.hosts.join(",")
    }

    /// `user:password` for the `digest` scheme, if the URL had credentials.
    pub fn digest_auth(&self) -> Option<String> {
        self.auth.as_ref().map(|(u, p)| format!("{u}:{p}"))
    }

    /// The znode path of lock `name`: `<root>/<escaped name>`.
    pub fn lock_path(&self, name: &LockName) -> String {
        let at_zk_root = self.root.is_empty();
        format!(
            "{}/{}",
            self.root,
            layout::encode_name(name.as_str(), at_zk_root)
        )
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), InvalidUrl> {
    if slot.is_some() {
        return Err(InvalidUrl::DuplicateOption(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_hosts(list: &str) -> Result<Vec<String>, InvalidUrl> {
    if list.is_empty() {
        return Err(InvalidUrl::NoHosts);
    }
    list.split(',')
        .map(|entry| {
            if entry.is_empty() {
                return Err(InvalidUrl::EmptyHost(list.to_string()));
            }
            // `[v6]:port`, `[v6]`, `host:port`, `host`.
            let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
                let close = rest
                    .find(']')
                    .ok_or_else(|| InvalidUrl::EmptyHost(entry.to_string()))?;
                let host = &entry[..close + 2];
                match &rest[close + 1..] {
                    "" => (host, None),
                    p => match p.strip_prefix(':') {
                        Some(p) => (host, Some(p)),
                        None => return Err(InvalidUrl::BadPort(entry.to_string())),
                    },
                }
            } else {
                match entry.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (entry, None),
                }
            };
            if host.is_empty() || host == "[]" {
                return Err(InvalidUrl::EmptyHost(list.to_string()));
            }
            let port = match port {
                None => DEFAULT_PORT,
                Some(p) => p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| InvalidUrl::BadPort(entry.to_string()))?,
            };
            Ok(format!("{host}:{port}"))
        })
        .collect()
}

/// Validates an absolute znode path and drops a trailing `/`; `""` and `/` become `""`.
fn normalize_path(what: &'static str, path: &str) -> Result<String, InvalidUrl> {
    let bad = |reason| InvalidUrl::BadPath {
        what,
        path: path.to_string(),
        reason,
    };
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let Some(rest) = trimmed.strip_prefix('/') else {
        return Err(bad("a znode path must start with /"));
    };
    for component in rest.split('/') {
        if component.is_empty() {
            return Err(bad("empty path component (//)"));
        }
        if component == "." || component == ".." {
            return Err(bad("ZooKeeper does not allow . or .. as a node name"));
        }
        if component.chars().any(layout::is_forbidden_char) {
            return Err(bad(
                "contains a character ZooKeeper does not allow in node names",
            ));
        }
    }
    Ok(trimmed.to_string())
}

fn parse_timeout(value: &str) -> Result<Duration, InvalidUrl> {
    let d = match value.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(value).map_err(|_| InvalidUrl::BadDuration {
            value: value.to_string(),
        })?,
    };
    if !(MIN_SESSION_TIMEOUT..=MAX_SESSION_TIMEOUT).contains(&d) {
        return Err(InvalidUrl::TimeoutOutOfRange {
            value: value.to_string(),
        });
    }
    Ok(d)
}

/// Percent-decoding of URL parts (`%2F` → `/`).
fn decode(s: &str) -> Result<String, InvalidUrl> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| InvalidUrl::BadEscape(s.to_string()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| InvalidUrl::BadEscape(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rest: &str) -> Config {
        Config::parse(rest).unwrap_or_else(|e| panic!("{rest:?}: {e}"))
    }

    #[test]
    fn hosts_chroot_base_and_timeout() {
        let c = parse("a:1,b:2,[::1]:3,c/app?base=/locks&session_timeout=2s");
        assert_eq!(c.hosts, ["a:1", "b:2", "[::1]:3", "c:2181"]);
        assert_eq!(c.root, "/app/locks");
        assert_eq!(c.session_timeout, Duration::from_secs(2));
        assert_eq!(c.connect_string(), "a:1,b:2,[::1]:3,c:2181");

        let c = parse("h:2181");
        assert_eq!(c.root, DEFAULT_BASE);
        assert_eq!(c.session_timeout, DEFAULT_SESSION_TIMEOUT);

        let c = parse("h:2181/?base=/&session_timeout=1500");
        assert_eq!(c.root, "");
        assert_eq!(c.session_timeout, Duration::from_millis(1500));
        assert_eq!(parse("h/x/?base=%2Fy%2Fz%2F").root, "/x/y/z");
    }

    #[test]
    fn lock_paths_escape_names() {
        let c = parse("h?base=/locks");
        let path = |n: &str| c.lock_path(&LockName::new(n).unwrap());
        assert_eq!(path("job"), "/locks/job");
        assert_eq!(path("a/b"), "/locks/a%2Fb");
        assert_eq!(path("zookeeper"), "/locks/zookeeper");
        let root = parse("h?base=/");
        assert_eq!(
            root.lock_path(&LockName::new("zookeeper").unwrap()),
            "/%7Aookeeper"
        );
        assert_eq!(root.lock_path(&LockName::new("job").unwrap()), "/job");
    }

    #[test]
    fn writers_choose_the_exclusive_node() {
        assert!(!parse("h").rwlock_writers);
        assert!(!parse("h?writers=mutex").rwlock_writers);
        assert!(parse("h?writers=rwlock").rwlock_writers);
    }

    #[test]
    fn bad_urls_are_typed_errors() {
        type Expect = fn(&InvalidUrl) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("", |e| matches!(e, InvalidUrl::NoHosts)),
            ("/chroot", |e| matches!(e, InvalidUrl::NoHosts)),
            ("a:1,,b:2", |e| matches!(e, InvalidUrl::EmptyHost(_))),
            ("a:0", |e| matches!(e, InvalidUrl::BadPort(_))),
            ("a:x", |e| matches!(e, InvalidUrl::BadPort(_))),
            ("a:70000", |e| matches!(e, InvalidUrl::BadPort(_))),
            ("[::1]x", |e| matches!(e, InvalidUrl::BadPort(_))),
            ("a//x", |e| matches!(e, InvalidUrl::BadPath { .. })),
            ("a/x/../y", |e| matches!(e, InvalidUrl::BadPath { .. })),
            ("a?base=locks", |e| matches!(e, InvalidUrl::BadPath { .. })),
            ("a?base=/zookeeper/x", |e| {
                matches!(e, InvalidUrl::BadPath { .. })
            }),
            ("a/zookeeper", |e| matches!(e, InvalidUrl::BadPath { .. })),
            ("a?base=/a%01b", |e| matches!(e, InvalidUrl::BadPath { .. })),
            ("a?bsae=/x", |e| matches!(e, InvalidUrl::UnknownOption(_))),
            ("a?writers=rw", |e| matches!(e, InvalidUrl::BadWriters(_))),
            ("a?writers=mutex&writers=rwlock", |e| {
                matches!(e, InvalidUrl::DuplicateOption(_))
            }),
            ("a?base=/x&base=/y", |e| {
                matches!(e, InvalidUrl::DuplicateOption(_))
            }),
            ("a?base", |e| matches!(e, InvalidUrl::MissingValue { .. })),
            ("a?base=%zz", |e| matches!(e, InvalidUrl::BadEscape(_))),
            ("a?session_timeout=soon", |e| {
                matches!(e, InvalidUrl::BadDuration { .. })
            }),
            ("a?session_timeout=5ms", |e| {
                matches!(e, InvalidUrl::TimeoutOutOfRange { .. })
            }),
            ("a?session_timeout=2h", |e| {
                matches!(e, InvalidUrl::TimeoutOutOfRange { .. })
            }),
            ("a#frag", |e| matches!(e, InvalidUrl::Fragment)),
        ];
        for (rest, expected) in cases {
            match Config::parse(rest) {
                Ok(c) => panic!("{rest:?} parsed as {c:?}"),
                Err(e) => assert!(expected(&e), "{rest:?}: unexpected {e:?}"),
            }
        }
    }

    #[test]
    fn credentials_are_used_but_never_shown() {
        let c = parse("bob:s3cr%40t@h:1/app");
        assert_eq!(c.digest_auth().as_deref(), Some("bob:s3cr@t"));
        let shown = format!("{c:?}");
        assert!(
            shown.contains("bob:***") && !shown.contains("s3cr"),
            "{shown}"
        );
        let url = ConnectUrl::parse("zk://bob:s3cret@h:1?nope=1").unwrap();
        let err = Config::from_url(&url).unwrap_err();
        assert_eq!(err.kind(), lock_core::ErrorKind::InvalidUrl);
        let msg = err.to_string();
        assert!(msg.contains("unknown option \"nope\""), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }
}

//! URL → backend: the registry the facade fills according to its cargo features.

use std::fmt;
use std::sync::Arc;

use crate::backend::{Backend, BoxFuture, Capabilities};
use crate::error::{Error, ErrorKind, Operation, Result};

/// A lock-service URL split at `://`. Its `Display` and `Debug` hide credentials (the
/// password of `user:password@` and query values named like secrets), so it can go into
/// logs and errors as it is. Each backend parses [`rest`](ConnectUrl::rest) itself, because
/// several schemes (`redlock://h1:p1,h2:p2`, `etcd://h:p,h:p/prefix`) are not URLs a generic
/// parser accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    raw: String,
    scheme_end: usize,
}

impl ConnectUrl {
    /// Splits `url` into scheme and rest; the scheme is lowercased.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let Some(idx) = url.find("://") else {
            return Err(Error::invalid_url(
                "dlock",
                format!(
                    "{:?} is not a lock URL: expected SCHEME://…, for example memory://, \
                     postgres://user@host/db, redis://host:6379",
                    redact(url)
                ),
            ));
        };
        let scheme = &url[..idx];
        let valid = !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            return Err(Error::invalid_url(
                "dlock",
                format!("{:?} has an invalid scheme {scheme:?}", redact(url)),
            ));
        }
        let raw = format!("{}{}", scheme.to_ascii_lowercase(), &url[idx..]);
        Ok(ConnectUrl {
            raw,
            scheme_end: idx,
        })
    }

    /// The scheme, lowercase (`postgres`, `shedlock+redis`, …).
    pub fn scheme(&self) -> &str {
        &self.raw[..self.scheme_end]
    }

    /// Everything after `://`.
    pub fn rest(&self) -> &str {
        &self.raw[self.scheme_end + 3..]
    }

    /// The full URL, credentials included. Never log this; use `Display`.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectUrl({:?})", redact(&self.raw))
    }
}

const SECRET_KEYS: &[&str] = &["password", "pass", "pwd", "secret", "token", "auth"];

/// Hides the password in `scheme://user:password@host…` and the values of query parameters
/// named like secrets (`password`, `token`, …). Works on URL-like strings that a strict URL
/// parser would reject (host lists).
pub fn redact(url: &str) -> String {
    let (head, after) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The authority ends at the first `/`, `?` or `#` after the userinfo's `@`. A password
    // written without percent-encoding may itself contain `/`, `?`, `#` or `@`: when the text
    // before the first `@` has a `:` (user:password), everything up to that `@` is taken as
    // userinfo, even if that hides a host in an unusual URL (`h:1/db?mail=a@b`) — hiding too
    // much is better than printing a password.
    let delimiter = |s: &str| s.find(['/', '?', '#']);
    let auth_end = match after.find('@') {
        Some(at) if delimiter(&after[..at]).is_none() || after[..at].contains(':') => {
            at + delimiter(&after[at..]).unwrap_or(after.len() - at)
        }
        _ => delimiter(after).unwrap_or(after.len()),
    };
    let (authority, tail) = after.split_at(auth_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{hosts}", &userinfo[..colon]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()) => {
                        format!("{k}=***")
                    }
                    // A PEM given inline (a key, for clients that take one in the URL).
                    Some((k, v)) if v.starts_with("-----BEGIN") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}{}{fragment}", params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{head}{authority}{tail}")
}

/// How a scheme is served.
pub type ConnectFn = fn(ConnectUrl) -> BoxFuture<'static, Result<Arc<dyn Backend>>>;

#[derive(Clone)]
enum Entry {
    Available(ConnectFn, Capabilities),
    /// Known, but its cargo feature is not compiled in.
    Disabled {
        feature: &'static str,
    },
}

/// What [`Registry::schemes`] says about one scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeStatus {
    /// Connectable; the backend's capabilities.
    Available(Capabilities),
    /// Needs this cargo feature of the `dlock` crate.
    NeedsFeature(&'static str),
}

/// Maps URL schemes to backends. The facade (`dlock::registry()`) builds one with every
/// backend its features enable and every other known scheme marked with the feature that
/// would enable it.
#[derive(Clone, Default)]
pub struct Registry {
    entries: Vec<(&'static str, Entry)>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(s, e)| match e {
                Entry::Available(..) => format!("{s} (available)"),
                Entry::Disabled { feature } => format!("{s} (needs feature {feature:?})"),
            }))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `scheme` with `connect`, replacing any earlier entry. `capabilities` is what
    /// the backend offers (shown by `dlock backends` without connecting).
    pub fn register(
        &mut self,
        scheme: &'static str,
        capabilities: Capabilities,
        connect: ConnectFn,
    ) {
        self.set(scheme, Entry::Available(connect, capabilities));
    }

    /// Every known scheme with its status, in registration order.
    pub fn schemes(&self) -> Vec<(&'static str, SchemeStatus)> {
        self.entries
            .iter()
            .map(|(s, e)| {
                let status = match e {
                    Entry::Available(_, caps) => SchemeStatus::Available(*caps),
                    Entry::Disabled { feature } => SchemeStatus::NeedsFeature(feature),
                };
                (*s, status)
            })
            .collect()
    }

    /// Marks `scheme` as known but needing cargo feature `feature` of the `dlock` crate.
    pub fn register_disabled(&mut self, scheme: &'static str, feature: &'static str) {
        self.set(scheme, Entry::Disabled { feature });
    }

    fn set(&mut self, scheme: &'static str, entry: Entry) {
        match self.entries.iter_mut().find(|(s, _)| *s == scheme) {
            Some(slot) => slot.1 = entry,
            None => self.entries.push((scheme, entry)),
        }
    }

    /// The schemes that can be connected to.
    pub fn available(&self) -> Vec<&'static str> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Available(..)))
            .map(|(s, _)| *s)
            .collect()
    }

    /// The schemes known but not compiled in, with the feature each needs.
    pub fn disabled(&self) -> Vec<(&'static str, &'static str)> {
        self.entries
            .iter()
            .filter_map(|(s, e)| match e {
                Entry::Disabled { feature } => Some((*s, *feature)),
                Entry::Available(..) => None,
            })
            .collect()
    }

    /// Parses `url` and connects to the backend its scheme names.
    pub async fn connect(&self, url: &str) -> Result<Arc<dyn Backend>> {
        let url = ConnectUrl::parse(url)?;
        let entry = self
            .entries
            .iter()
            .find(|(s, _)| *s == url.scheme())
            .map(|(_, e)| e.clone());
        match entry {
            Some(Entry::Available(connect, _)) => {
                tracing::debug!(%url, "connecting");
                connect(url).await
            }
            Some(Entry::Disabled { feature }) => Err(Error::new(
                ErrorKind::Unsupported,
                "dlock",
                Operation::Connect,
                format!(
                    "the {:?} scheme needs the `{feature}` cargo feature of the dlock crate, \
                     which this build does not enable (URL {url})",
                    url.scheme()
                ),
            )),
            None => {
                let known: Vec<&str> = self.entries.iter().map(|(s, _)| *s).collect();
                Err(Error::invalid_url(
                    "dlock",
                    format!(
                        "unknown URL scheme {:?} in {url}; known schemes: {}",
                        url.scheme(),
                        known.join(", ")
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_and_secret_query_values() {
        assert_eq!(
            redact("postgres://app:s3cr3t@db:5432/prod?sslmode=require&password=x"),
            "postgres://app:***@db:5432/prod?sslmode=require&password=***"
        );
        assert_eq!(
            redact("redlock://:pw@h1:1,h2:2"),
            "redlock://:***@h1:1,h2:2"
        );
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact("postgres://h/db?sslkey=-----BEGIN%20PRIVATE%20KEY-----abc&sslcert=/c.pem"),
            "postgres://h/db?sslkey=***&sslcert=/c.pem"
        );
        // Passwords written without percent-encoding.
        for (url, shown) in [
            ("postgres://u:pa/ss@h/db?x=1", "postgres://u:***@h/db?x=1"),
            ("postgres://u:pa?ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pa#ss@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:pa@ss@h/db", "postgres://u:***@h/db"),
            ("redlock://:a/b?c#d@h1:1,h2:2", "redlock://:***@h1:1,h2:2"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        // An `@` outside the userinfo is left alone.
        assert_eq!(
            redact("postgres://u:pw@h/db?mail=a@b"),
            "postgres://u:***@h/db?mail=a@b"
        );
        assert_eq!(
            redact("postgres://h/db?mail=a@b&password=x"),
            "postgres://h/db?mail=a@b&password=***"
        );
        assert_eq!(redact("etcd://user@h:2379"), "etcd://user@h:2379");
        let url = ConnectUrl::parse("Postgres://u:hunter2@h/db").unwrap();
        assert_eq!(url.scheme(), "postgres");
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "postgres://u:hunter2@h/db");
    }

    #[test]
    fn malformed_urls_are_invalid_url_errors() {
        for bad in ["", "no-scheme", "://x", "1abc://x", "a b://x"] {
            let err = ConnectUrl::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{bad:?}: {err}");
        }
    }

    #[tokio::test]
    async fn unknown_and_disabled_schemes_say_what_to_do() {
        let mut reg = Registry::new();
        reg.register_disabled("postgres", "postgres");
        let err = reg.connect("nosuchscheme://x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidUrl);
        assert!(err.to_string().contains("unknown URL scheme"), "{err}");
        let err = reg.connect("postgres://u:pw@h/db").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        let msg = err.to_string();
        assert!(msg.contains("`postgres` cargo feature"), "{msg}");
        assert!(!msg.contains("pw@"), "{msg}");
    }
}

//! `etcd://h:p[,h:p…][/prefix][?options]` → a typed configuration.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lock_core::{ConnectUrl, Error, Result};

use crate::NAME;

/// The port etcd clients use when the URL names none.
const DEFAULT_PORT: u16 = 2379;

/// Query options of an `etcd://` URL, with their defaults.
pub(crate) const OPTIONS: &[(&str, &str)] = &[
    (
        "connect_timeout",
        "5s: how long connecting (and the first request) may take",
    ),
    (
        "request_timeout",
        "5s: how long one request may take before it counts as failed",
    ),
    (
        "writers",
        "mutex: the exclusive lock writes concurrency.Mutex's NAME/<lease hex>; rwmutex: the \
         write key of Go's recipes.RWMutex, NAME/write/<UnixNano>, which the recipe's readers wait for",
    ),
    (
        "tls",
        "on when ca= is given, else off: on = https:// endpoints, the server's certificate \
         verified against ca= and the URL's host",
    ),
    (
        "ca",
        "PEM file of the CA that signed the server's certificate (alias: cacert, etcdctl's name)",
    ),
    (
        "cert",
        "PEM client certificate for mutual TLS (etcd's --client-cert-auth), with key=",
    ),
    (
        "key",
        "PEM private key of cert= (the file is read, never printed)",
    ),
];

/// Where the TLS material lives: paths, read at connect (never printed beyond the path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The CA to verify the server with.
    pub ca: PathBuf,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What an `etcd://` URL says.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// `http://host:port`, in the order of the URL.
    pub endpoints: Vec<String>,
    /// Prepended to every lock name: empty, or ending with `/`.
    pub prefix: String,
    /// `user:password@` (etcd authentication).
    pub credentials: Option<(String, String)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// TLS, when the URL asks for it (`endpoints` are then `https://`).
    pub tls: Option<TlsFiles>,
    /// `writers=rwmutex`: the exclusive lock writes the recipe RWMutex's writer key.
    pub rwmutex_writers: bool,
    /// The URL with its password hidden, for messages.
    pub display: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("password", &self.credentials.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A malformed `etcd://` URL: what is wrong, with the URL (password hidden).
fn invalid(url: &ConnectUrl, what: impl fmt::Display) -> Error {
    Error::invalid_url(
        NAME,
        format!("{what} in {url}; expected etcd://HOST:PORT[,HOST:PORT…][/PREFIX][?OPTION=VALUE…]"),
    )
}

impl Config {
    /// Parses `url` (scheme `etcd`).
    pub fn parse(url: &ConnectUrl) -> Result<Config> {
        let rest = url.rest().to_string();
        if rest.contains('#') {
            return Err(invalid(url, "a fragment (#…) is not allowed"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest.as_str(), None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
            None => (before_query, None),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user)
                    .ok_or_else(|| invalid(url, "bad %-escape in the user name"))?;
                let password = percent_decode(password)
                    .ok_or_else(|| invalid(url, "bad %-escape in the password"))?;
                if user.is_empty() {
                    return Err(invalid(url, "an empty user name"));
                }
                Some((user, password))
            }
        };
        if hosts.is_empty() {
            return Err(invalid(url, "no host"));
        }
        let endpoints = hosts
            .split(',')
            .map(|h| endpoint(h).map_err(|what| invalid(url, what)))
            .collect::<Result<Vec<_>>>()?;
        let prefix = match path {
            None | Some("") => String::new(),
            Some(p) if p.ends_with('/') => p.to_string(),
            Some(p) => format!("{p}/"),
        };
        let mut config = Config {
            endpoints,
            prefix,
            credentials,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            tls: None,
            rwmutex_writers: false,
            display: url.to_string(),
        };
        let mut writers_seen = false;
        let mut tls = TlsOptions::default();
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "connect_timeout" => &mut config.connect_timeout,
                "request_timeout" => &mut config.request_timeout,
                "tls" | "ca" | "cacert" | "cert" | "key" => {
                    tls.set(key, value).map_err(|what| invalid(url, what))?;
                    continue;
                }
                "writers" => {
                    if std::mem::replace(&mut writers_seen, true) {
                        return Err(invalid(url, "option writers given twice"));
                    }
                    config.rwmutex_writers = match value {
                        "mutex" => false,
                        "rwmutex" => true,
                        _ => {
                            return Err(invalid(
                                url,
                                format!("option writers: {value:?} is not mutex or rwmutex"),
                            ));
                        }
                    };
                    continue;
                }
                _ => {
                    let known: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
                    return Err(invalid(
                        url,
                        format!("unknown option {key:?} (known: {})", known.join(", ")),
                    ));
                }
            };
            *slot = parse_timeout(value)
                .map_err(|what| invalid(url, format!("option {key}: {what}")))?;
        }
        config.tls = tls.finish().map_err(|what| invalid(url, what))?;
        if config.tls.is_some() {
            for endpoint in &mut config.endpoints {
                endpoint.replace_range(..HTTP.len(), HTTPS);
            }
        }
        Ok(config)
    }
}

const HTTP: &str = "http://";
const HTTPS: &str = "https://";

/// The TLS options as the query gives them, before they are checked together.
#[derive(Default)]
struct TlsOptions {
    on: Option<bool>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsOptions {
    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let twice = || format!("option {key} given twice (ca and cacert are one option)");
        if key == "tls" {
            let on = match value {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err(format!("option tls: {value:?} is not on or off")),
            };
            return match self.on.replace(on) {
                Some(_) => Err(twice()),
                None => Ok(()),
            };
        }
        let path = percent_decode(value)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("option {key}: expected a file path"))?;
        let slot = match key {
            "ca" | "cacert" => &mut self.ca,
            "cert" => &mut self.cert,
            _ => &mut self.key,
        };
        match slot.replace(PathBuf::from(path)) {
            Some(_) => Err(twice()),
            None => Ok(()),
        }
    }

    fn finish(self) -> std::result::Result<Option<TlsFiles>, String> {
        let any_file = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        if !self.on.unwrap_or(any_file) {
            if any_file {
                return Err("tls=off with ca=, cert= or key=: drop tls=off to use TLS".into());
            }
            return Ok(None);
        }
        let ca = self.ca.ok_or(
            "TLS needs ca=FILE (the PEM of the CA that signed the server's certificate; \
             this build trusts no system roots)",
        )?;
        let identity = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("cert= and key= go together (mutual TLS needs both)".into()),
        };
        Ok(Some(TlsFiles { ca, identity }))
    }
}

/// `host:port`, `host` (port 2379) or `[v6]:port` → `http://…`.
fn endpoint(hostport: &str) -> std::result::Result<String, String> {
    let hostport = hostport.trim();
    if hostport.is_empty() {
        return Err("an empty host in the host list".into());
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed [ in host {hostport:?}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("bad host {hostport:?}"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let bad_char =
        |c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if host.is_empty() || host == "[]" || host.contains(bad_char) {
        return Err(format!("bad host {hostport:?}"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("bad port {p:?} in {hostport:?}")),
        },
    };
    Ok(format!("http://{host}:{port}"))
}

fn parse_timeout(value: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(value)
        .map_err(|e| format!("{value:?} is not a duration like 500ms or 5s ({e})"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{value:?} is outside 10ms..1h"));
    }
    Ok(d)
}

/// `%XX` escapes → bytes → UTF-8; `None` for a broken escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::ErrorKind;

    fn parse(url: &str) -> Result<Config> {
        Config::parse(&ConnectUrl::parse(url).unwrap())
    }

    #[test]
    fn hosts_prefix_and_defaults() {
        let c = parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.prefix, "");
        assert_eq!(c.request_timeout, Duration::from_secs(5));

        let c =
            parse("etcd://a:1,b,[::1]:3/locks?request_timeout=250ms&connect_timeout=2s").unwrap();
        assert_eq!(
            c.endpoints,
            ["http://a:1", "http://b:2379", "http://[::1]:3"]
        );
        assert_eq!(c.prefix, "locks/");
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.connect_timeout, Duration::from_secs(2));

        assert_eq!(parse("etcd://h:1/").unwrap().prefix, "");
        assert_eq!(parse("etcd://h:1/a/b/").unwrap().prefix, "a/b/");
        // A leading slash in the keys: one more slash in the URL.
        assert_eq!(parse("etcd://h:1//locks").unwrap().prefix, "/locks/");
    }

    #[test]
    fn writers_choose_the_exclusive_key() {
        assert!(!parse("etcd://h:1").unwrap().rwmutex_writers);
        assert!(!parse("etcd://h:1?writers=mutex").unwrap().rwmutex_writers);
        assert!(parse("etcd://h:1?writers=rwmutex").unwrap().rwmutex_writers);
        for bad in [
            "etcd://h:1?writers=rw",
            "etcd://h:1?writers=mutex&writers=mutex",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_are_decoded_and_hidden() {
        let c = parse("etcd://root:p%40ss@h:1").unwrap();
        assert_eq!(c.credentials, Some(("root".into(), "p@ss".into())));
        let shown = format!("{c:?} {}", c.display);
        assert!(
            !shown.contains("p@ss") && !shown.contains("p%40ss"),
            "{shown}"
        );
    }

    #[test]
    fn tls_options_switch_to_https_and_keep_the_files() {
        let c =
            parse("etcd://a:1,b:2/p?ca=/pki/ca.crt&cert=/pki/c.crt&key=/pki/c%20k.key").unwrap();
        assert_eq!(c.endpoints, ["https://a:1", "https://b:2"]);
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca, PathBuf::from("/pki/ca.crt"));
        assert_eq!(
            tls.identity,
            Some(("/pki/c.crt".into(), "/pki/c k.key".into()))
        );
        // etcdctl's name for the CA; tls=on is implied by it and may be said.
        let c = parse("etcd://h:1?tls=on&cacert=/ca").unwrap();
        assert_eq!(c.endpoints, ["https://h:1"]);
        assert_eq!(c.tls.unwrap().identity, None);
        assert!(parse("etcd://h:1?tls=off").unwrap().tls.is_none());
    }

    #[test]
    fn inconsistent_tls_options_are_invalid_url_errors() {
        let cases = [
            ("etcd://h:1?tls=on", "needs ca="),
            ("etcd://h:1?tls=off&ca=/ca", "tls=off with ca="),
            ("etcd://h:1?ca=/ca&cert=/c", "go together"),
            ("etcd://h:1?ca=/ca&cacert=/ca", "given twice"),
            ("etcd://h:1?tls=maybe", "not on or off"),
            ("etcd://h:1?ca=", "file path"),
        ];
        for (url, needle) in cases {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn malformed_urls_are_invalid_url_errors_that_say_why() {
        let cases = [
            ("etcd://", "no host"),
            ("etcd://h:1,,h:2", "empty host"),
            ("etcd://h:0", "bad port"),
            ("etcd://h:99999", "bad port"),
            ("etcd://h:x", "bad port"),
            ("etcd://h h:1", "bad host"),
            ("etcd://[::1:1", "unclosed"),
            ("etcd://h:1?ttl=5s", "unknown option \"ttl\""),
            ("etcd://h:1?request_timeout=soon", "not a duration"),
            ("etcd://h:1?request_timeout=1ms", "outside"),
            ("etcd://h:1#frag", "fragment"),
            ("etcd://:pw@h:1", "empty user"),
            ("etcd://u:%zz@h:1", "%-escape"),
        ];
        for (url, needle) in cases {
            let err = parse(url).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidUrl, "{url}: {err}");
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
        let err = parse("etcd://u:secret@h:1?bogus=1").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

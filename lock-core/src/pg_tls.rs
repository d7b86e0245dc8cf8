//! libpq's TLS options and connection refusals, shared by the PostgreSQL backends (advisory
//! locks, the ShedLock table): `sslmode`, `sslrootcert`, `sslcert`, `sslkey` with libpq's
//! meaning, the aliases every dlock backend takes (`ca=`, `cert=`, `key=`), and what a failed
//! connection attempt says about TLS or authentication, as an [`ErrorKind`] and a sentence.
//! No TLS library is linked here except, with the `tls` feature, rustls's error type, read
//! to name the cause of a refused certificate.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::ErrorKind;

/// libpq's `sslmode`. `allow` is not offered (sqlx never retries with TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate; plain text otherwise
    /// (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked (with `sslrootcert` given: as
    /// `VerifyCa`, as in libpq).
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host of the URL.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, String> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (plain text first, TLS only if \
                            refused): use prefer, or require"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "sslmode={v:?}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Every spelling of each option: libpq's name first, then dlock's alias, then sqlx's.
const SPELLINGS: [&[&str]; 4] = [
    &["sslmode", "ssl-mode"],
    &["sslrootcert", "ca", "ssl-root-cert", "ssl-ca"],
    &["sslcert", "cert", "ssl-cert"],
    &["sslkey", "key", "ssl-key"],
];

/// The option names [`PgTlsOptions::take`] consumes (each spelling).
pub const OPTION_NAMES: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ca",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "cert",
    "ssl-cert",
    "sslkey",
    "key",
    "ssl-key",
];

/// Whether a `key=` value names a file (has a `/` or a `.`), as opposed to a word such as the
/// advisory-lock backend's key schemes (`key=hashtext`).
pub fn names_a_file(value: &str) -> bool {
    value.contains(['/', '.'])
}

/// The TLS settings of a PostgreSQL URL, resolved.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PgTls {
    /// What is checked.
    pub mode: SslMode,
    /// The CA certificates to trust (PEM file); `None`: the system's root certificates.
    pub root_cert: Option<PathBuf>,
    /// A client certificate (PEM) and its private key (PEM, unencrypted), for servers that
    /// ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Paths, never contents: key material is only ever read by the TLS library.
        f.debug_struct("PgTls")
            .field("sslmode", &self.mode.as_str())
            .field("sslrootcert", &self.root_cert)
            .field("sslcert", &self.client.as_ref().map(|c| &c.0))
            .finish()
    }
}

impl PgTls {
    /// The settings as libpq's query options, which sqlx reads the same way (with
    /// `sslmode=require` already turned into `verify-ca` where libpq would).
    pub fn libpq_options(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![("sslmode", self.mode.as_str().to_string())];
        let path = |p: &Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &self.root_cert {
            o.push(("sslrootcert", path(ca)));
        }
        if let Some((cert, key)) = &self.client {
            o.push(("sslcert", path(cert)));
            o.push(("sslkey", path(key)));
        }
        o
    }
}

/// Collects the TLS options of a URL in any spelling, then [`finish`](Self::finish)es them.
#[derive(Default)]
pub struct PgTlsOptions {
    given: [Option<(String, String)>; 4],
}

impl PgTlsOptions {
    /// Takes `name=value` when `name` is a TLS option (`Ok(true)`). Two spellings of one
    /// option with different values are refused (the message names the spellings).
    pub fn take(&mut self, name: &str, value: &str) -> Result<bool, String> {
        let Some(i) = SPELLINGS.iter().position(|s| s.contains(&name)) else {
            return Ok(false);
        };
        match &self.given[i] {
            Some((other, v)) if v != value => Err(format!(
                "options {other} and {name} disagree: they mean the same ({}), give one",
                SPELLINGS[i][0]
            )),
            Some(_) => Ok(true),
            None => {
                self.given[i] = Some((name.to_string(), value.to_string()));
                Ok(true)
            }
        }
    }

    /// Resolves the options with libpq's rules. `tls_compiled`: whether the caller was built
    /// with TLS; without it any mode that needs TLS is [`ErrorKind::Unsupported`]. Other
    /// refusals are [`ErrorKind::InvalidUrl`].
    pub fn finish(self, tls_compiled: bool) -> Result<PgTls, (ErrorKind, String)> {
        let bad = |m: String| (ErrorKind::InvalidUrl, m);
        let [mode, root, cert, key] = self.given;
        let mode_given = match &mode {
            Some((_, v)) => Some(SslMode::parse(v).map_err(bad)?),
            None => None,
        };
        let mut tls = PgTls {
            mode: mode_given.unwrap_or_default(),
            ..PgTls::default()
        };
        if let Some((name, v)) = root {
            if v == "system" {
                // libpq 16: the system's roots, and nothing weaker than verify-full.
                match mode_given {
                    None => tls.mode = SslMode::VerifyFull,
                    Some(SslMode::VerifyFull) => {}
                    Some(m) => {
                        return Err(bad(format!(
                            "{name}=system needs sslmode=verify-full (libpq refuses the weaker \
                             sslmode={})",
                            m.as_str()
                        )));
                    }
                }
            } else {
                tls.root_cert = Some(existing(&name, &v).map_err(bad)?);
                // libpq: with a root certificate, require checks the chain (as verify-ca).
                if tls.mode == SslMode::Require {
                    tls.mode = SslMode::VerifyCa;
                }
            }
        }
        tls.client = match (cert, key) {
            (None, None) => None,
            (Some((c, cv)), Some((k, kv))) => {
                if kv.trim_start().starts_with("-----BEGIN") {
                    return Err(bad(format!(
                        "{k}: name a key file; key material in a URL ends up in process lists \
                         and logs"
                    )));
                }
                Some((
                    existing(&c, &cv).map_err(bad)?,
                    existing(&k, &kv).map_err(bad)?,
                ))
            }
            (Some((name, _)), None) | (None, Some((name, _))) => {
                return Err(bad(format!(
                    "{name} given alone: a client certificate needs both sslcert (cert=) and \
                     sslkey (key=)"
                )));
            }
        };
        if !tls_compiled && tls.mode > SslMode::Prefer {
            return Err((
                ErrorKind::Unsupported,
                format!(
                    "sslmode={} needs TLS, which this build lacks: enable the `tls` feature \
                     (dlock's, on by default; or lock-postgres/lock-shedlock's)",
                    tls.mode.as_str()
                ),
            ));
        }
        Ok(tls)
    }
}

fn existing(name: &str, path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if path.trim_start().starts_with("-----BEGIN") {
        // A PEM given inline (sqlx reads it so); certificates are not secret.
        return Ok(p.to_path_buf());
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(p.to_path_buf()),
        Ok(_) => Err(format!("{name}={path}: not a file")),
        Err(e) => Err(format!("{name}={path}: {e}")),
    }
}

/// What a failed connection attempt was refused for, when that is TLS or authentication: the
/// kind to report and the cause in words. `database`: the server's SQLSTATE and message when
/// the server answered with an error; `err`: the client library's error.
pub fn classify(
    database: Option<(Option<&str>, &str)>,
    err: &(dyn StdError + 'static),
) -> Option<(ErrorKind, String)> {
    match database {
        Some((code, message)) => refusal(code?, message),
        None => handshake_cause(err).map(|m| (ErrorKind::Tls, m)),
    }
}

/// `err` as the kind its chain's first TLS or authentication refusal says (found by
/// `classify`, which looks at one link: the client library's error), with that cause in front
/// of its message; unchanged when there is none.
pub fn reclassify(
    err: crate::Error,
    classify: impl Fn(&(dyn StdError + 'static)) -> Option<(ErrorKind, String)>,
) -> crate::Error {
    let mut next = StdError::source(&err);
    while let Some(e) = next {
        if let Some((kind, cause)) = classify(e) {
            return err.reclassified(kind, cause);
        }
        next = e.source();
    }
    err
}

/// What the server's refusal of a connection says, from its SQLSTATE and message: a server
/// that accepts only TLS refused plain text ([`ErrorKind::Tls`]), or a password or
/// authorization failure ([`ErrorKind::Auth`]). `None`: neither.
pub fn refusal(sqlstate: &str, message: &str) -> Option<(ErrorKind, String)> {
    match sqlstate {
        "28000" if message.contains("no encryption") || message.contains("SSL off") => Some((
            ErrorKind::Tls,
            format!(
                "the server requires TLS and refused a plain-text connection ({message}): \
                 add sslmode=require, or verify-full with sslrootcert= (ca=)"
            ),
        )),
        "28P01" => Some((ErrorKind::Auth, format!("authentication failed: {message}"))),
        "28000" => Some((ErrorKind::Auth, format!("not authorized: {message}"))),
        _ => None,
    }
}

/// The cause of a failed TLS handshake, found anywhere in `err`'s chain (also inside an
/// `io::Error`): a certificate refused (which check failed), the client's certificate refused
/// by the server, or a server that does not offer TLS. `None`: not a TLS failure.
pub fn handshake_cause(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(cause) = describe(e) {
            return Some(cause);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(cause) = describe(inner) {
                return Some(cause);
            }
        }
        next = e.source();
    }
    None
}

fn describe(e: &(dyn StdError + 'static)) -> Option<String> {
    #[cfg(feature = "tls")]
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(rustls_cause(r));
    }
    let text = e.to_string();
    (text == "server does not support TLS").then(|| {
        "the server does not support TLS (it declined the TLS request): turn ssl on at the \
         server, or use sslmode=prefer or disable"
            .to_string()
    })
}

#[cfg(feature = "tls")]
fn rustls_cause(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by a trusted CA \
                                 (unknown issuer): name its CA with sslrootcert= (ca=)"
                .to_string(),
            C::NotValidForName => {
                "the server's certificate is not valid for the host name of the URL".to_string()
            }
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "the server's certificate is not valid for the host name {:?} of the URL: it \
                 names {}",
                expected.to_str(),
                presented.join(", ")
            ),
            C::Expired | C::ExpiredContext { .. } => {
                format!("the server's certificate has expired ({c:?})")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("the server's certificate is not valid yet ({c:?})")
            }
            other => format!("the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): it did not accept our client \
             certificate (sslcert=, cert=) or our TLS settings"
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(pairs: &[(&str, &str)], compiled: bool) -> Result<PgTls, (ErrorKind, String)> {
        let mut o = PgTlsOptions::default();
        for (k, v) in pairs {
            o.take(k, v).map_err(|e| (ErrorKind::InvalidUrl, e))?;
        }
        o.finish(compiled)
    }

    #[test]
    fn libpq_defaults_and_rules() {
        let file = std::env::current_exe().unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(finish(&[], true).unwrap().mode, SslMode::Prefer);
        let t = finish(&[("sslmode", "require"), ("ca", f)], true).unwrap();
        assert_eq!(
            t.mode,
            SslMode::VerifyCa,
            "require + a root cert checks the chain"
        );
        assert_eq!(t.root_cert.as_deref(), Some(file.as_path()));
        let t = finish(&[("sslrootcert", "system")], true).unwrap();
        assert_eq!((t.mode, t.root_cert), (SslMode::VerifyFull, None));
        let t = finish(
            &[("cert", f), ("sslkey", f), ("sslmode", "verify-full")],
            true,
        )
        .unwrap();
        assert!(t.client.is_some());
        assert!(!format!("{t:?}").contains("sslkey"));
        // Same value in two spellings is fine.
        finish(&[("sslrootcert", f), ("ca", f)], true).unwrap();
        // Without TLS compiled in, only what needs no TLS.
        assert_eq!(
            finish(&[("sslmode", "prefer")], false).unwrap().mode,
            SslMode::Prefer
        );
        let (kind, msg) = finish(&[("sslmode", "verify-full")], false).unwrap_err();
        assert_eq!(kind, ErrorKind::Unsupported);
        assert!(msg.contains("`tls` feature"), "{msg}");
    }

    #[test]
    fn bad_combinations_are_invalid_url() {
        let f = std::env::current_exe().unwrap();
        let f = f.to_str().unwrap();
        for pairs in [
            &[("sslmode", "allow")][..],
            &[("sslmode", "verify")],
            &[("sslrootcert", "system"), ("sslmode", "require")],
            &[("sslrootcert", "/nonexistent/ca.pem")],
            &[("sslcert", f)],
            &[("key", f)],
            &[("sslcert", f), ("key", "-----BEGIN PRIVATE KEY-----x")],
            &[("sslrootcert", f), ("ca", "/etc/other.pem")],
            &[("sslmode", "require"), ("ssl-mode", "disable")],
        ] {
            let (kind, msg) = finish(pairs, true).unwrap_err();
            assert_eq!(kind, ErrorKind::InvalidUrl, "{pairs:?}: {msg}");
            assert!(!msg.contains("BEGIN"), "{msg}");
        }
    }

    #[test]
    fn refusals_name_the_cause() {
        let (k, m) = refusal(
            "28000",
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\", no encryption",
        )
        .unwrap();
        assert_eq!(k, ErrorKind::Tls);
        assert!(
            m.contains("requires TLS") && m.contains("sslmode=require"),
            "{m}"
        );
        assert_eq!(
            refusal("28P01", "password authentication failed for user \"u\"")
                .unwrap()
                .0,
            ErrorKind::Auth
        );
        assert_eq!(
            refusal("28000", "role \"x\" does not exist").unwrap().0,
            ErrorKind::Auth
        );
        assert!(refusal("57P03", "the database system is starting up").is_none());
        let plain = std::io::Error::other("server does not support TLS");
        assert!(
            handshake_cause(&plain)
                .unwrap()
                .contains("does not support TLS")
        );
        assert!(handshake_cause(&std::io::Error::other("reset")).is_none());
    }
}

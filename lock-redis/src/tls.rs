//! `rediss://` and TLS Redlock members: the TCP stream each connection opens (see
//! `node::dial`) wrapped in rustls, with the **ring** provider configured explicitly
//! (no process-wide default, no aws-lc-rs, no OpenSSL). redis-rs's own TLS support is not
//! used: it only applies to the connections redis-rs opens itself, and every connection here
//! is opened by this crate (Nagle off, Sentinel lookups) and handed to redis-rs ready-made.
//!
//! Trust: with `ca=FILE` only the certificates in that file; without it the system's root
//! certificates (rustls-native-certs: `SSL_CERT_FILE` / `SSL_CERT_DIR` or the distribution's
//! bundle). The server's certificate must name the host of the URL (a DNS name, or an IP
//! address SAN for `127.0.0.1`); there is no option to skip that.
//!
//! Public so that other Redis-speaking backends (lock-shedlock's `shedlock+rediss://`) use
//! the same trust rules, provider and refusal messages instead of a second copy.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connection's byte stream: plain TCP or TLS over it.
pub type Stream = Box<dyn Io>;

/// What redis-rs needs of a stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What the URL asked for: paths only (the files are read by [`Connector::new`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsWanted {
    /// `ca=`: trust only the certificates in this PEM file.
    pub ca: Option<PathBuf>,
    /// `cert=` and `key=`: a client certificate and its private key (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl TlsWanted {
    /// For `Debug` and messages: where trust comes from (paths are not secrets; key contents
    /// are never read into a message).
    pub fn describe(&self) -> String {
        let roots = match &self.ca {
            Some(ca) => format!("ca={}", ca.display()),
            None => "system roots".to_string(),
        };
        match &self.client {
            Some((cert, _)) => format!("{roots}, client cert={}", cert.display()),
            None => roots,
        }
    }
}

#[cfg(feature = "tls")]
pub use imp::{Connector, cause};

#[cfg(not(feature = "tls"))]
pub use off::{Connector, cause};

#[cfg(not(feature = "tls"))]
mod off {
    use super::TlsWanted;

    /// Never built without the `tls` feature.
    #[derive(Clone)]
    pub struct Connector(std::convert::Infallible);

    impl Connector {
        /// Always refuses: this build has no TLS.
        pub fn new(_: &TlsWanted) -> Result<Connector, (lock_core::ErrorKind, String)> {
            Err((
                lock_core::ErrorKind::Unsupported,
                "Redis over TLS needs lock-redis's `tls` feature (the dlock facade's `tls`, on \
                 by default), which this build lacks"
                    .to_string(),
            ))
        }

        /// Never called: no `Connector` exists without the `tls` feature.
        pub async fn wrap(
            &self,
            _: &str,
            _: tokio::net::TcpStream,
        ) -> std::io::Result<super::Stream> {
            match self.0 {}
        }
    }

    /// No TLS, no TLS failures.
    pub fn cause(_: &(dyn std::error::Error + 'static)) -> Option<String> {
        None
    }
}

#[cfg(feature = "tls")]
mod imp {
    use std::sync::Arc;

    use lock_core::ErrorKind;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{AlertDescription, CertificateError, RootCertStore};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    use super::TlsWanted;

    /// A client configuration built once per URL and shared by every connection.
    #[derive(Clone)]
    pub struct Connector {
        inner: TlsConnector,
    }

    impl Connector {
        /// Reads the files named by the URL and builds the rustls configuration. A file that
        /// cannot be read or parsed is a `Tls` error naming the file (never its contents).
        pub fn new(wanted: &TlsWanted) -> Result<Connector, (ErrorKind, String)> {
            let bad = |what: String| (ErrorKind::Tls, what);
            let mut roots = RootCertStore::empty();
            match &wanted.ca {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            bad(format!("cannot read the CA file {}: {e}", path.display()))
                        })?;
                    if certs.is_empty() {
                        return Err(bad(format!(
                            "the CA file {} holds no PEM certificate",
                            path.display()
                        )));
                    }
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| bad(format!("the CA file {}: {e}", path.display())))?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err(bad(
                            "no system root certificates found (name the server's CA with ca=FILE)"
                                .to_string(),
                        ));
                    }
                }
            }
            // ring only (no aws-lc-rs): rustls 0.23.48 deprecates this provider for lacking
            // post-quantum key exchange, which is aws-lc-rs-only there.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(format!("TLS setup: {e}")))?
                .with_root_certificates(roots);
            let config = match &wanted.client {
                None => builder.with_no_client_auth(),
                Some((cert, key)) => {
                    let chain = CertificateDer::pem_file_iter(cert)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            bad(format!(
                                "cannot read the client certificate {}: {e}",
                                cert.display()
                            ))
                        })?;
                    // The key's parse error says what kind of failure, never the key.
                    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                        bad(format!("cannot read the client key {}: {e}", key.display()))
                    })?;
                    builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                        bad(format!(
                            "the client certificate {} and key {} do not make a usable pair: {e}",
                            cert.display(),
                            key.display()
                        ))
                    })?
                }
            };
            Ok(Connector {
                inner: TlsConnector::from(Arc::new(config)),
            })
        }

        /// The TLS handshake over `tcp`, verifying the server's certificate for `host`.
        pub async fn wrap(&self, host: &str, tcp: TcpStream) -> std::io::Result<super::Stream> {
            let name = ServerName::try_from(host.to_string()).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{host:?} is not a host name TLS can verify: {e}"),
                )
            })?;
            let stream = self.inner.connect(name, tcp).await?;
            Ok(Box::new(stream))
        }
    }

    /// What went wrong at the TLS layer, in words, if `err` (or an error it wraps, including
    /// inside an `io::Error`) is a rustls error.
    pub fn cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
        type Shared = Arc<dyn std::error::Error + Send + Sync>;
        let mut next = Some(err);
        while let Some(e) = next {
            // redis-rs keeps an I/O error as an `Arc<dyn Error>`, whose `source()` skips the
            // `io::Error` itself (and so the rustls error inside it): look through the Arc.
            let e: &(dyn std::error::Error + 'static) = match e.downcast_ref::<Shared>() {
                Some(shared) => &**shared,
                None => e,
            };
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(explain(r));
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Some(explain(r));
                }
            }
            next = e.source();
        }
        None
    }

    fn explain(e: &rustls::Error) -> String {
        use rustls::Error as E;
        let what = match e {
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => {
                    "the server's certificate is not signed by a trusted CA (unknown issuer): \
                     check ca="
                        .to_string()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "the server's certificate is not valid for the host name in the URL \
                     (not valid for name)"
                        .to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the server's certificate is not valid yet".to_string()
                }
                other => format!("the server's certificate was refused: {other:?}"),
            },
            E::AlertReceived(AlertDescription::CertificateRequired)
            | E::AlertReceived(AlertDescription::HandshakeFailure)
            | E::AlertReceived(AlertDescription::BadCertificate)
            | E::AlertReceived(AlertDescription::UnknownCA) => format!(
                "the server refused the connection ({e}): it may require a client certificate \
                 trusted by it (cert= and key=)"
            ),
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => format!(
                "the server does not speak TLS on this port ({e}): use redis:// if it is a \
                 plain-text port"
            ),
            other => other.to_string(),
        };
        format!("TLS: {what}")
    }
}

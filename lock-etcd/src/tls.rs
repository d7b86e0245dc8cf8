//! TLS for `etcd://…?ca=…`: the client configuration from the URL's files, and why a
//! handshake failed, read from the error chain.
//!
//! The files are read at connect. Their contents never reach a message: errors name the path
//! and what the operating system or the PEM parser said about it.

use std::error::Error as StdError;

use etcd_client::ConnectOptions;
use lock_core::{Error, ErrorKind, Operation, Result};

use crate::NAME;
use crate::config::TlsFiles;

/// A TLS error at connect.
#[cfg(feature = "tls")]
fn tls_error(message: String) -> Error {
    Error::new(ErrorKind::Tls, NAME, Operation::Connect, message)
}

/// `options` with TLS from `files`: the CA to trust, and the client identity for mutual TLS.
/// The server name checked is the URL's host (an IP address against the certificate's IP
/// SANs, a name against its DNS SANs).
#[cfg(feature = "tls")]
pub(crate) fn with_tls(options: ConnectOptions, files: &TlsFiles) -> Result<ConnectOptions> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            tls_error(format!(
                "cannot read the {what} file {} ({e})",
                path.display()
            ))
        })
    };
    let ca = read("CA (ca=)", &files.ca)?;
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &files.identity {
        let cert = read("client certificate (cert=)", cert)?;
        let key = read("client key (key=)", key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(options.with_tls(tls))
}

/// Without the `tls` feature: an error that says which feature to enable.
#[cfg(not(feature = "tls"))]
pub(crate) fn with_tls(_options: ConnectOptions, _files: &TlsFiles) -> Result<ConnectOptions> {
    Err(Error::new(
        ErrorKind::Unsupported,
        NAME,
        Operation::Connect,
        "this build of lock-etcd has no TLS: enable its `tls` feature (on by default in the \
         dlock facade)",
    ))
}

/// How the client connected: plain, TLS, or TLS with a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spoke {
    Plain,
    Tls,
    MutualTls,
}

impl Spoke {
    pub fn of(files: Option<&TlsFiles>) -> Spoke {
        match files {
            None => Spoke::Plain,
            Some(f) if f.identity.is_some() => Spoke::MutualTls,
            Some(_) => Spoke::Tls,
        }
    }
}

/// Why a connection failed, when TLS is the reason: a sentence for the error message.
pub(crate) fn cause(error: &(dyn StdError + 'static), spoke: Spoke) -> Option<&'static str> {
    let text = chain_text(error);
    let has = |needle: &str| text.contains(needle);
    if spoke != Spoke::Plain {
        if has("unknownissuer") || has("unknown issuer") || has("badsignature") {
            return Some(
                "the server's certificate is not signed by the CA given in ca= (unknown issuer)",
            );
        }
        if has("notvalidforname") || has("not valid for name") {
            return Some(
                "the server's certificate is not valid for the host name in the URL \
                 (host name mismatch)",
            );
        }
        if has("expired") {
            return Some("the server's certificate has expired");
        }
        if has("notvalidyet") || has("not valid yet") {
            return Some("the server's certificate is not valid yet");
        }
        if has("certificaterequired") || has("certificate required") || has("badcertificate") {
            return Some(
                "the server requires a client certificate it trusts (mutual TLS: give cert= and \
                 key=, signed by a CA the server trusts)",
            );
        }
        if has("invalidcontenttype") || has("corrupt message") || has("invalidmessage") {
            return Some("the server does not speak TLS on this port (drop tls/ca?)");
        }
        if has("invalid peer certificate") || has("handshake") || has("alert") {
            return Some("the TLS handshake failed");
        }
        // TLS 1.3: the server checks the client's certificate after the client considers the
        // handshake done; etcd (Go) then closes the connection without an alert rustls reports
        // (seen as a closed connection, a cancelled operation, or — when the client was still
        // writing — a broken pipe or a reset).
        if spoke == Spoke::Tls
            && (has("connection closed")
                || has("operation was canceled")
                || has("broken pipe")
                || has("connection reset"))
        {
            return Some(
                "the server closed the connection right after the TLS handshake: it requires a \
                 client certificate (mutual TLS: give cert= and key=)",
            );
        }
        return None;
    }
    // A TLS-only etcd answers a plain HTTP/2 preface with an HTTP/1.x 400 ("client sent an
    // HTTP request to an HTTPS server"), which the HTTP/2 client sees as a broken frame.
    if has("http request to an https server")
        || has("invalid http version")
        || has("frame with invalid size")
        || has("framesize")
    {
        return Some("the server requires TLS (add ca=FILE to the URL)");
    }
    None
}

/// The error and all its sources as one lowercase text, looking inside `io::Error`s (whose
/// `source()` skips the error they wrap).
fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        text.push_str(&e.to_string().to_lowercase());
        text.push_str(" | ");
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            text.push_str(&format!("{inner:?}").to_lowercase());
            text.push_str(" | ");
        }
        next = e.source();
    }
    text
}

/// Whether the server at `endpoint` (`http://host:port`) answers as a TLS server: sent the
/// start of a TLS handshake (a record holding an empty ClientHello), a TLS server answers
/// with an alert record (content type 21, version 3.x). A plain gRPC client talking to a
/// TLS-only etcd only sees the connection close, which says nothing; this one exchange says
/// why.
pub(crate) async fn answers_as_tls_server(endpoint: &str, within: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const EMPTY_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00];
    let addr = endpoint.trim_start_matches("http://").to_string();
    let ask = async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(EMPTY_CLIENT_HELLO).await.ok()?;
        let mut answer = [0u8; 2];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer == [21, 3])
    };
    matches!(tokio::time::timeout(within, ask).await, Ok(Some(true)))
}

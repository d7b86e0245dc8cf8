//! What the Redis TLS tests share (`redis_tls.rs`, `shedlock_redis_tls.rs`): a Redis whose
//! second port speaks TLS only, URLs for it, the refusal check and one lock round.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use dlock::{ErrorKind, LockOptions};
use dlock_fixtures::{self as fixtures, CertKey, RedisOptions, RedisTls, Server, TestPki};

/// A Redis whose second port speaks TLS only, with `cert` as its certificate and `users` as
/// its ACL users.
pub async fn tls_redis(
    pki: &TestPki,
    cert: &CertKey,
    require_client_cert: bool,
    users: Vec<String>,
) -> Result<Server> {
    fixtures::managed_redis(RedisOptions {
        tls: Some(RedisTls {
            server: cert.clone(),
            ca: pki.ca.clone(),
            require_client_cert,
        }),
        users,
        ..Default::default()
    })
    .await
}

/// The TLS-only port.
pub fn tls_port(server: &Server) -> u16 {
    server.ports()[1]
}

/// `SCHEME://[userinfo@]host:TLS_PORT?ca=CA[&extra]`.
pub fn tls_url(
    scheme: &str,
    server: &Server,
    userinfo: &str,
    host: &str,
    ca: &Path,
    extra: &str,
) -> String {
    format!(
        "{scheme}://{userinfo}{host}:{}?ca={}{extra}",
        tls_port(server),
        ca.display()
    )
}

/// Connecting must fail with one of `kinds` and a message containing `says`, without
/// `password` in it.
pub async fn refused_as(
    url: &str,
    kinds: &[ErrorKind],
    says: &str,
    password: &str,
) -> Result<String> {
    match dlock::connect(url).await {
        Ok(_) => bail!("{} connected", dlock::redact(url)),
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(
                kinds.contains(&e.kind()),
                "expected {kinds:?}, got {:?}: {msg}",
                e.kind()
            );
            ensure!(msg.contains(says), "message lacks {says:?}: {msg}");
            ensure!(!msg.contains(password), "the password leaked: {msg}");
            eprintln!("{:?}: {msg}", e.kind());
            Ok(msg)
        }
    }
}

/// One acquisition and release; returns the fencing token.
pub async fn lock_once(url: &str) -> Result<Option<u64>> {
    let backend = dlock::connect(url)
        .await
        .with_context(|| format!("connecting to {}", dlock::redact(url)))?;
    let guard = backend
        .acquire(
            &super::unique("tls"),
            &LockOptions::new().with_ttl(Duration::from_secs(5)),
        )
        .await?;
    let token = guard.token().map(|t| t.get());
    ensure!(guard.release().await?, "the release found the lock gone");
    Ok(token)
}

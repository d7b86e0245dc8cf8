//! ShedLock's Redis keys over TLS (`shedlock+rediss://`) and with Redis ACL users (issue #25),
//! against real `redis-server`s whose second port speaks TLS only, with certificates made at
//! test time ([`TestPki`]). Each test starts its own servers, so the tests run in parallel.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::redis_tls::{self, lock_once, tls_port};
use common::secrets::{assert_no_secrets, dlock_cli, secret_lines};
use dlock::{ErrorKind, LockOptions};
use dlock_fixtures::{CertKey, Server, TestPki};

const PASSWORD: &str = "s3cret-Shed-Pa55word";

/// ACL users: `locker` may use ShedLock's keys, `minimal` only the commands the README lists
/// on them, `outsider` only `other:*`.
fn users() -> Vec<String> {
    vec![
        format!("locker on >{PASSWORD} ~job-lock:* +@all"),
        format!(
            "minimal on >{PASSWORD} ~job-lock:* -@all +set +pttl +evalsha +script|load +get \
             +pexpire +del +hexists +hincrby +time"
        ),
        format!("outsider on >{PASSWORD} ~other:* +@all"),
    ]
}

/// A Redis whose second port speaks TLS only, with `cert` as its certificate.
async fn tls_redis(pki: &TestPki, cert: &CertKey, require_client_cert: bool) -> Result<Server> {
    redis_tls::tls_redis(pki, cert, require_client_cert, users()).await
}

/// `shedlock+rediss://[userinfo@]host:TLS_PORT?ca=CA[&extra]`.
fn url(server: &Server, userinfo: &str, host: &str, ca: &std::path::Path, extra: &str) -> String {
    redis_tls::tls_url("shedlock+rediss", server, userinfo, host, ca, extra)
}

/// Connecting must fail with one of `kinds` and a message containing `says`.
async fn refused(url: &str, kinds: &[ErrorKind], says: &str) -> Result<String> {
    redis_tls::refused_as(url, kinds, says, PASSWORD).await
}

#[tokio::test]
async fn the_right_ca_works_and_fencing_counts_over_tls() -> Result<()> {
    let pki = TestPki::new()?;
    let server = tls_redis(&pki, &pki.server, false).await?;
    for host in ["localhost", "127.0.0.1"] {
        let plain = url(&server, "", host, &pki.ca, "");
        ensure!(
            lock_once(&plain).await?.is_none(),
            "a token without fencing"
        );
        // `cacert=` is `ca=` under redis-cli's name.
        let alias = plain.replace("?ca=", "?cacert=");
        ensure!(
            lock_once(&alias).await?.is_none(),
            "a token without fencing"
        );
    }
    // ShedLock's key, seen through the plain-text port while the TLS client holds it.
    let fenced = url(&server, "", "localhost", &pki.ca, "&fencing=on");
    let backend = dlock::connect(&fenced).await?;
    let name = common::unique("shed-tls-fence");
    let opts = LockOptions::new().with_ttl(Duration::from_secs(5));
    let g1 = backend.acquire(&name, &opts).await?;
    let t1 = g1.token().context("no fencing token with fencing=on")?;
    let mut plain = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("job-lock:default:{}", name.as_str());
    let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut plain).await?;
    let value = value.with_context(|| format!("{key} is not set while held over TLS"))?;
    ensure!(value.starts_with("ADDED:"), "not ShedLock's value: {value}");
    ensure!(g1.release().await?, "release");
    // Tokens keep increasing across connections.
    let again = dlock::connect(&fenced).await?;
    let g2 = again.acquire(&name, &opts).await?;
    ensure!(g2.token().context("token")? > t1, "tokens did not increase");
    ensure!(g2.release().await?, "release");
    Ok(())
}

#[tokio::test]
async fn a_foreign_ca_a_wrong_host_and_an_expired_certificate_are_tls_errors() -> Result<()> {
    let pki = TestPki::new()?;
    let (good, wrong_host, expired) = tokio::try_join!(
        tls_redis(&pki, &pki.server, false),
        tls_redis(&pki, &pki.wrong_host, false),
        tls_redis(&pki, &pki.expired, false),
    )?;
    let tls = &[ErrorKind::Tls];
    let foreign = url(&good, "", "localhost", &pki.other_ca, "");
    refused(&foreign, tls, "unknown issuer").await?;
    let host = url(&wrong_host, "", "localhost", &pki.ca, "");
    refused(&host, tls, "not valid for name").await?;
    let old = url(&expired, "", "localhost", &pki.ca, "");
    refused(&old, tls, "expired").await?;
    // Without ca= the system roots, which do not know this run's CA.
    let system = format!("shedlock+rediss://localhost:{}", tls_port(&good));
    refused(&system, tls, "unknown issuer").await?;
    Ok(())
}

#[tokio::test]
async fn plain_text_to_the_tls_only_port_and_tls_options_without_tls_say_so() -> Result<()> {
    let pki = TestPki::new()?;
    let server = tls_redis(&pki, &pki.server, false).await?;
    // Redis's TLS port either closes the connection (`Tls`) or waits for a handshake that
    // never comes (`Connection` after the timeout); both messages say the port may want TLS.
    let plain = format!(
        "shedlock+redis://127.0.0.1:{}?timeout=500ms",
        tls_port(&server)
    );
    let either = &[ErrorKind::Tls, ErrorKind::Connection];
    for _ in 0..3 {
        refused(&plain, either, "may accept only TLS").await?;
    }
    // And the reverse: TLS to the plain-text port.
    let reverse = format!(
        "shedlock+rediss://127.0.0.1:{}?ca={}&timeout=500ms",
        server.ports()[0],
        pki.ca.display()
    );
    refused(&reverse, either, "does not speak TLS").await?;
    // TLS options on a plain-text URL mean nothing: refused before connecting.
    let ca = pki.ca.display();
    let invalid = &[ErrorKind::InvalidUrl];
    let on_plain = format!("shedlock+redis://127.0.0.1:{}?ca={ca}", server.ports()[0]);
    refused(&on_plain, invalid, "TLS connections only").await?;
    let half = format!(
        "{}&cert={}",
        url(&server, "", "localhost", &pki.ca, ""),
        pki.client.cert.display()
    );
    refused(&half, invalid, "both cert= and key=").await?;
    let insecure = format!(
        "{}&insecure=true",
        url(&server, "", "localhost", &pki.ca, "")
    );
    refused(&insecure, invalid, "no switch").await?;
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_and_a_user_without_shedlock_keys_are_auth_errors() -> Result<()> {
    let pki = TestPki::new()?;
    let server = tls_redis(&pki, &pki.server, false).await?;
    let user = |name: &str| format!("{name}:{PASSWORD}@");
    let ok = url(
        &server,
        &user("locker"),
        "localhost",
        &pki.ca,
        "&fencing=on",
    );
    lock_once(&ok).await?.context("no token")?;
    // The commands the NOPERM message lists are enough.
    let minimal = url(
        &server,
        &user("minimal"),
        "localhost",
        &pki.ca,
        "&fencing=on",
    );
    lock_once(&minimal).await?.context("no token")?;
    let wrong = url(&server, "locker:not-it@", "localhost", &pki.ca, "");
    refused(&wrong, &[ErrorKind::Auth], "WRONGPASS").await?;
    // `outsider` connects (AUTH needs no key) but may not touch `job-lock:*`.
    let outsider = url(&server, &user("outsider"), "localhost", &pki.ca, "");
    let backend = dlock::connect(&outsider).await?;
    let err = backend
        .acquire(
            &common::unique("forbidden"),
            &LockOptions::new().with_ttl(Duration::from_secs(5)),
        )
        .await
        .err()
        .context("an ACL user without ShedLock's keys acquired a lock")?;
    let msg = format!("{err:#}");
    ensure!(err.kind() == ErrorKind::Auth, "{:?}: {msg}", err.kind());
    ensure!(
        msg.contains("NOPERM") && msg.contains("~job-lock:*") && msg.contains("EVALSHA"),
        "{msg}"
    );
    ensure!(!msg.contains(PASSWORD), "{msg}");
    // Debug of the backend hides the password.
    let dbg = format!("{backend:?}");
    ensure!(!dbg.contains(PASSWORD), "Debug shows the password: {dbg}");
    Ok(())
}

#[tokio::test]
async fn the_cli_reaches_the_tls_server_and_keeps_secrets_out_of_its_output() -> Result<()> {
    let pki = TestPki::new()?;
    // A client certificate required, so the URL names a key file.
    let server = tls_redis(&pki, &pki.server, true).await?;
    let certs = format!(
        "&cert={}&key={}&fencing=on",
        pki.client.cert.display(),
        pki.client.key.display()
    );
    let good = url(
        &server,
        &format!("locker:{PASSWORD}@"),
        "localhost",
        &pki.ca,
        &certs,
    );
    let bad = url(
        &server,
        "locker:wrong-password@",
        "localhost",
        &pki.ca,
        &certs,
    );
    let mut secrets = vec![PASSWORD.to_string(), "wrong-password".to_string()];
    secrets.extend(secret_lines(&pki.client.key));
    let trace = &[("RUST_LOG", "trace")];
    let outputs = [
        dlock_cli(&["run", &good, "tls-job", "--", "true"], trace).expect_code(0),
        dlock_cli(&["run", &bad, "tls-job", "--", "true"], trace).expect_code(77),
        dlock_cli(&["backends", "--json"], trace).expect_code(0),
    ];
    assert_no_secrets(&outputs, &secrets);
    let doc: serde_json::Value = serde_json::from_str(&outputs[2].stdout)?;
    let rediss = doc["schemes"]
        .as_array()
        .context("no schemes")?
        .iter()
        .find(|s| s["scheme"] == "shedlock+rediss")
        .context("shedlock+rediss is not listed")?;
    ensure!(rediss["status"] == "available", "{rediss}");
    // Without the client certificate the server refuses the handshake: a TLS error.
    let no_cert = url(
        &server,
        &format!("locker:{PASSWORD}@"),
        "localhost",
        &pki.ca,
        "",
    );
    refused(&no_cert, &[ErrorKind::Tls], "client certificate").await?;
    Ok(())
}

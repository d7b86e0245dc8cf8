//! etcd over TLS and with authentication, against real etcd servers whose certificates are
//! made at test time ([`TestPki`]): verify-full with the right CA (IP and DNS names), mutual
//! TLS, each way a TLS connection is refused (a wrong CA, a wrong host name, an expired
//! certificate, plain text to a TLS-only server, no client certificate), etcd's users and
//! roles (a wrong password, a role without rights on the prefix), the CLI's exit code 77, and
//! that passwords and key material never show.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::secrets::{assert_no_secrets, dlock_cli, secret_lines};
use dlock::etcd::EtcdBackend;
use dlock::{Backend, ErrorKind, LockName, LockOptions};
use dlock_fixtures::etcd::{EtcdUsers, enable_auth};
use dlock_fixtures::{CertKey, EtcdOptions, EtcdTls, Server, TestPki};

/// A managed etcd whose client port speaks TLS only, with `server` as its certificate.
async fn tls_etcd(pki: &TestPki, server: &CertKey, client_cert_auth: bool) -> Result<Server> {
    let mut tls = EtcdTls::from_pki(pki, client_cert_auth);
    tls.server = server.clone();
    let options = EtcdOptions {
        tls: Some(tls),
        ..EtcdOptions::default()
    };
    dlock_fixtures::managed_etcd(options).await
}

/// `etcd://127.0.0.1:P` of `server`, without its query.
fn base(server: &Server) -> String {
    server
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn query_for(pki: &TestPki, ca: &std::path::Path, client: bool) -> String {
    let mut q = format!("ca={}", ca.display());
    if client {
        q.push_str(&format!(
            "&cert={}&key={}",
            pki.client.cert.display(),
            pki.client.key.display()
        ));
    }
    q
}

/// One acquire and release of `name` through `url`.
async fn lock_once(url: &str, name: &str) -> dlock::Result<()> {
    let backend = dlock::connect(url).await?;
    let guard = backend
        .acquire(&LockName::new(name)?, &LockOptions::new())
        .await?;
    guard.release().await?;
    backend.close().await;
    Ok(())
}

/// The error of connecting to `url`, which must fail with `kind` and say `needle`.
async fn refused(url: &str, kind: ErrorKind, needle: &str) -> Result<dlock::Error> {
    let err = match lock_once(url, "tls-refused").await {
        Ok(()) => anyhow::bail!("{url} should have been refused"),
        Err(e) => e,
    };
    ensure!(err.kind() == kind, "{url}: expected {kind:?}, got {err:?}");
    ensure!(
        err.to_string().contains(needle),
        "{url}: expected the message to say {needle:?}: {err}"
    );
    Ok(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_right_ca_works_by_ip_and_by_name() -> Result<()> {
    let pki = TestPki::new()?;
    let etcd = tls_etcd(&pki, &pki.server, true).await?;
    // The fixture's URL: 127.0.0.1 (verified against the certificate's IP SAN).
    lock_once(etcd.url(), "tls-by-ip").await?;
    // localhost (its DNS SAN), with etcdctl's name for the CA.
    let by_name = format!(
        "{}?{}",
        base(&etcd).replace("127.0.0.1", "localhost"),
        query_for(&pki, &pki.ca, true).replacen("ca=", "cacert=", 1)
    );
    lock_once(&by_name, "tls-by-name").await?;
    // A URL with TLS has https endpoints; the guard's renewals run over it.
    let backend = EtcdBackend::connect(etcd.url()).await?;
    let guard = backend
        .acquire(
            &LockName::new("tls-renewed")?,
            &LockOptions::new().with_ttl(Duration::from_secs(2)),
        )
        .await?;
    // Past one ttl the guard is still held: its keepalives went over TLS.
    let left = tokio::time::timeout(Duration::from_millis(2500), guard.not_held()).await;
    ensure!(left.is_err(), "the guard left Held: {left:?}");
    ensure!(guard.release().await?, "the renewed lock was still ours");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_no_client_certificate_is_a_tls_error_that_says_which() -> Result<()> {
    let pki = TestPki::new()?;
    let etcd = tls_etcd(&pki, &pki.server, true).await?;
    let wrong_ca = format!("{}?{}", base(&etcd), query_for(&pki, &pki.other_ca, true));
    refused(&wrong_ca, ErrorKind::Tls, "unknown issuer").await?;
    let no_client = format!("{}?{}", base(&etcd), query_for(&pki, &pki.ca, false));
    refused(&no_client, ErrorKind::Tls, "requires a client certificate").await?;
    // Plain text to the TLS-only port.
    refused(&base(&etcd), ErrorKind::Tls, "requires TLS").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_host_name_or_an_expired_certificate_is_a_tls_error_that_says_which() -> Result<()>
{
    let pki = TestPki::new()?;
    let (wrong_host, expired) = tokio::try_join!(
        tls_etcd(&pki, &pki.wrong_host, false),
        tls_etcd(&pki, &pki.expired, false)
    )?;
    let url = |s: &Server| format!("{}?{}", base(s), query_for(&pki, &pki.ca, false));
    refused(&url(&wrong_host), ErrorKind::Tls, "host name").await?;
    refused(&url(&expired), ErrorKind::Tls, "expired").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_a_wrong_password_and_a_forbidden_prefix_are_auth_errors() -> Result<()> {
    let pki = TestPki::new()?;
    let tls = EtcdTls::from_pki(&pki, true);
    let etcd = tls_etcd(&pki, &pki.server, true).await?;
    let users = enable_auth(&etcd, &tls).await?;
    let with = |user: &str, password: &str, prefix: &str| {
        format!(
            "etcd://{user}:{password}@{}/{prefix}?{}",
            base(&etcd).trim_start_matches("etcd://"),
            tls.url_query()
        )
    };
    let ok = with("dlock", &users.dlock_password, EtcdUsers::DLOCK_PREFIX);
    lock_once(&ok, "auth-ok").await?;

    let wrong = with("dlock", "not-the-password", EtcdUsers::DLOCK_PREFIX);
    let err = refused(&wrong, ErrorKind::Auth, "authentication failed").await?;
    ensure!(
        !format!("{err} {err:?}").contains("not-the-password"),
        "{err:?}"
    );

    // User `other` may only touch `other/`.
    let forbidden = with("other", &users.other_password, EtcdUsers::DLOCK_PREFIX);
    let err = refused(&forbidden, ErrorKind::Auth, "permission denied").await?;
    ensure!(
        err.to_string().contains(EtcdUsers::DLOCK_PREFIX),
        "the message names the prefix: {err}"
    );
    let allowed = with("other", &users.other_password, EtcdUsers::OTHER_PREFIX);
    lock_once(&allowed, "auth-other").await?;

    // Debug of the backend and of the error never shows the password.
    let backend = EtcdBackend::connect(&ok).await?;
    let shown = format!("{backend:?}");
    ensure!(!shown.contains(&users.dlock_password), "{shown}");
    ensure!(shown.contains("***"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlock_run_reaches_the_tls_server_by_url_alone_and_exits_77_on_a_wrong_password()
-> Result<()> {
    let pki = TestPki::new()?;
    let tls = EtcdTls::from_pki(&pki, true);
    let etcd = tls_etcd(&pki, &pki.server, true).await?;
    let users = enable_auth(&etcd, &tls).await?;
    let url = |password: &str| {
        format!(
            "etcd://dlock:{password}@{}/{}?{}",
            base(&etcd).trim_start_matches("etcd://"),
            EtcdUsers::DLOCK_PREFIX,
            tls.url_query()
        )
    };
    let debug = &[("RUST_LOG", "debug")];
    let good = url(&users.dlock_password);
    let ran = dlock_cli(
        &["-vv", "run", &good, "cli-job", "--", "echo", "ran"],
        debug,
    );
    let ran = ran.expect_code(0);
    ensure!(ran.stdout.contains("ran"));

    let wrong_password = format!("{}-wrong", users.dlock_password);
    let wrong = url(&wrong_password);
    let bad = dlock_cli(&["-vv", "run", &wrong, "cli-job", "--", "true"], debug).expect_code(77);
    let backends = dlock_cli(&["backends", "--json"], debug).expect_code(0);

    // Every secret that must not show: the passwords and each line of each key file.
    let mut secrets = vec![users.dlock_password.clone(), wrong_password];
    secrets.extend(secret_lines(&pki.client.key));
    secrets.extend(secret_lines(&pki.server.key));
    assert_no_secrets([&ran, &bad, &backends], &secrets);
    Ok(())
}

/// The price of TLS: uncontended acquire + release through one etcd that listens both ways
/// (mutual TLS, and plain text), alternating, 500 samples each after a warm-up. Prints the
/// p50s and their ratio (lock-etcd's README, Measured). Run on demand:
/// `cargo test -p dlock-server-tests --test etcd_tls -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_acquire_release_p50_over_tls_and_plain() -> Result<()> {
    let pki = TestPki::new()?;
    let mut tls = EtcdTls::from_pki(&pki, true);
    tls.also_plain = true;
    let etcd = dlock_fixtures::managed_etcd(EtcdOptions {
        tls: Some(tls),
        ..EtcdOptions::default()
    })
    .await?;
    let plain_url = format!("etcd://127.0.0.1:{}", etcd.ports()[3]);
    let over_tls = EtcdBackend::connect(etcd.url()).await?;
    let plain = EtcdBackend::connect(&plain_url).await?;
    let name = LockName::new("tls-price")?;
    let opts = LockOptions::new().with_ttl(Duration::from_secs(10));
    let once = |b: &EtcdBackend| {
        let (b, name, opts) = (b.clone(), name.clone(), opts.clone());
        async move {
            let start = tokio::time::Instant::now();
            let g = b.acquire(&name, &opts).await?;
            g.release().await?;
            anyhow::Ok(start.elapsed())
        }
    };
    for _ in 0..50 {
        once(&over_tls).await?;
        once(&plain).await?;
    }
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        t.push(once(&over_tls).await?);
        p.push(once(&plain).await?);
    }
    t.sort();
    p.sort();
    let ms = |v: &[Duration], q: usize| v[v.len() * q / 100].as_secs_f64() * 1e3;
    println!(
        "TLS p10/p50/p90 {:.3}/{:.3}/{:.3} ms; plain {:.3}/{:.3}/{:.3} ms; p50 ratio {:.3}",
        ms(&t, 10),
        ms(&t, 50),
        ms(&t, 90),
        ms(&p, 10),
        ms(&p, 50),
        ms(&p, 90),
        ms(&t, 50) / ms(&p, 50)
    );
    over_tls.close().await;
    plain.close().await;
    Ok(())
}

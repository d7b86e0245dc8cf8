//! lock-mysql against a TLS-only MariaDB (`require_secure_transport`, passwords, a user bound
//! to a client certificate): verified connections lock; plain text, an unknown CA, a wrong
//! password and a missing client certificate are refused with the error kind that says why
//! (MariaDB answers plain text with the same "Access denied" as a wrong password, so that one
//! is `Auth` with a hint naming TLS);
//! `dlock run` exits 77 on the wrong password; the password appears in no error.

mod common;

use std::sync::Arc;

use common::{dlock, unique};
use dlock::{Backend, ErrorKind, LockOptions};
use dlock_fixtures as fixtures;
use fixtures::{MariaDbOptions, MariaDbTls, TestPki};

const PASSWORD: &str = "tls-secret-7d1e";
const CERT_USER: &str = "dlock-client";

async fn tls_server(pki: &TestPki) -> fixtures::Server {
    fixtures::managed_mariadb_with(MariaDbOptions {
        tls: Some(MariaDbTls {
            server: pki.server.clone(),
            ca: pki.ca.clone(),
            password: PASSWORD.into(),
            client_cert_user: CERT_USER.into(),
        }),
    })
    .await
    .unwrap()
}

async fn lock_once(url: &str) -> dlock::Result<()> {
    let b: Arc<dyn Backend> = dlock::connect(url).await?;
    let g = b.acquire(&unique("tls"), &LockOptions::new()).await?;
    assert!(g.release().await?);
    Ok(())
}

fn port(s: &fixtures::Server) -> u16 {
    s.port().unwrap()
}

#[tokio::test]
async fn verified_tls_locks_and_every_refusal_says_why() {
    let pki = TestPki::new().unwrap();
    let db = tls_server(&pki).await;
    let p = port(&db);
    let ca = pki.ca.display().to_string();
    // The fixture's URL: root, VERIFY_IDENTITY against the run's CA.
    lock_once(db.url()).await.expect("verified TLS");
    // The names every backend takes: ca= alone means verify the server and its name.
    lock_once(&format!(
        "mariadb://root:{PASSWORD}@127.0.0.1:{p}/dlock?ca={ca}"
    ))
    .await
    .expect("ca= alone");

    let refused = |url: String, kind: ErrorKind, why: &'static str| async move {
        let e = lock_once(&url).await.expect_err(why);
        let text = format!("{e} {e:?}");
        assert_eq!(e.kind(), kind, "{why}: {text}");
        assert!(!text.contains(PASSWORD), "{why}: the password in {text}");
        e
    };
    let e = refused(
        format!("mariadb://root:{PASSWORD}@127.0.0.1:{p}/dlock?ssl-mode=DISABLED"),
        ErrorKind::Auth,
        "plain text to a TLS-only server",
    )
    .await;
    assert!(e.to_string().contains("require_secure_transport"), "{e}");
    refused(
        format!(
            "mariadb://root:{PASSWORD}@127.0.0.1:{p}/dlock?ca={}",
            pki.other_ca.display()
        ),
        ErrorKind::Tls,
        "a CA that did not sign the server's certificate",
    )
    .await;
    refused(
        format!("mariadb://root:wrong-{PASSWORD}@127.0.0.1:{p}/dlock?ca={ca}"),
        ErrorKind::Auth,
        "a wrong password",
    )
    .await;
    // The certificate-bound user: refused without its certificate, let in with it.
    refused(
        format!("mariadb://{CERT_USER}:{PASSWORD}@127.0.0.1:{p}/dlock?ca={ca}"),
        ErrorKind::Auth,
        "no client certificate for a REQUIRE SUBJECT user",
    )
    .await;
    lock_once(&format!(
        "mariadb://{CERT_USER}:{PASSWORD}@127.0.0.1:{p}/dlock?ca={ca}&cert={}&key={}",
        pki.client.cert.display(),
        pki.client.key.display()
    ))
    .await
    .expect("the client certificate");
}

#[tokio::test]
async fn dlock_run_exits_77_on_a_wrong_password() {
    let pki = TestPki::new().unwrap();
    let db = tls_server(&pki).await;
    let url = format!(
        "mariadb://root:wrong-{PASSWORD}@127.0.0.1:{}/dlock?ca={}",
        port(&db),
        pki.ca.display()
    );
    let (code, stderr) =
        tokio::task::spawn_blocking(move || dlock(&["run", &url, "tls-job", "--", "true"]))
            .await
            .unwrap();
    assert_eq!(code, Some(77), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let ok = db.url().to_string();
    let (code, stderr) =
        tokio::task::spawn_blocking(move || dlock(&["run", &ok, "tls-job", "--", "true"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
}

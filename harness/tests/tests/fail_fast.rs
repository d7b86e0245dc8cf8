//! Fail fast, with the cause: a server that refuses the connection is reported within one
//! connect attempt on every backend, as a `Connection` error that names the refusal, not as a
//! pool's or a retry loop's timeout.

use std::time::{Duration, Instant};

use dlock::ErrorKind;

/// One connect attempt to a closed loopback port is answered by an RST at once; this bound
/// only leaves room for a slow machine, far below the 10 s of a pool's acquire timeout.
const BOUND: Duration = Duration::from_secs(3);

/// A loopback port nobody listens on (bound, then closed again).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn refused(url_of: impl Fn(u16) -> String) {
    let url = url_of(closed_port());
    let started = Instant::now();
    let err = match dlock::connect(&url).await {
        Ok(_) => panic!("{url}: connected to a closed port"),
        Err(e) => e,
    };
    let took = started.elapsed();
    let text = format!("{err}");
    eprintln!("{url}: reported after {took:?}: {text}");
    assert_eq!(err.kind(), ErrorKind::Connection, "{url}: {text}");
    assert!(
        took < BOUND,
        "{url}: the refusal took {took:?} to report (bound {BOUND:?}): {text}"
    );
    assert!(
        text.to_lowercase().contains("refused"),
        "{url}: the error must name the cause (connection refused): {text}"
    );
}

#[tokio::test]
async fn postgres_refused_fails_fast() {
    refused(|p| format!("postgres://postgres@127.0.0.1:{p}/postgres")).await;
}

#[tokio::test]
async fn shedlock_postgres_refused_fails_fast() {
    refused(|p| format!("shedlock+postgres://postgres@127.0.0.1:{p}/postgres")).await;
}

#[tokio::test]
async fn redis_refused_fails_fast() {
    refused(|p| format!("redis://127.0.0.1:{p}")).await;
}

#[tokio::test]
async fn shedlock_redis_refused_fails_fast() {
    refused(|p| format!("shedlock+redis://127.0.0.1:{p}")).await;
}

#[tokio::test]
async fn redlock_refused_fails_fast() {
    refused(|_| {
        let ports: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", closed_port()))
            .collect();
        format!("redlock://{}", ports.join(","))
    })
    .await;
}

#[tokio::test]
async fn etcd_refused_fails_fast() {
    refused(|p| format!("etcd://127.0.0.1:{p}")).await;
}

#[tokio::test]
async fn zookeeper_refused_fails_fast() {
    refused(|p| format!("zk://127.0.0.1:{p}")).await;
}

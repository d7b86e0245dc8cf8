//! `examples/idempotent_service.rs` end to end over HTTP, against real PostgreSQL and Redis:
//! replays byte for byte, racing retries charge once, a changed body and bad input are
//! refused, a service killed mid-request leaves a claim that a second instance recovers once,
//! and clicks inside the window are dropped and counted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

struct Service {
    child: Child,
    addr: SocketAddr,
}

async fn start(pg: &str, redis: &str) -> Service {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dlock-under-test"));
    let example = bin
        .parent()
        .unwrap()
        .join("examples")
        .join("idempotent_service");
    assert!(
        example.is_file(),
        "{} is missing: `cargo test -p dlock-server-tests` builds it",
        example.display()
    );
    let mut child = Command::new(&example)
        .args([
            "--postgres",
            pg,
            "--redis",
            redis,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--lease-ms", "1000", "--allow-delay"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the example");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the service said where it listens within 60 s")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Service { child, addr }
}

/// A PostgreSQL and a Redis for the service, or a failure naming the install step.
async fn servers() -> (dlock_fixtures::Server, dlock_fixtures::Server) {
    let pg = dlock_fixtures::postgres()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e:#} (scripts/install-servers installs it)"));
    let redis = dlock_fixtures::redis()
        .await
        .unwrap_or_else(|e| panic!("Redis: {e:#} (scripts/install-servers installs it)"));
    (pg, redis)
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), read to the end.
async fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let method = if path == "/stats" { "GET" } else { "POST" };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn payments(pool: &sqlx::PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_and_clicks_over_http() {
    let (pg, redis) = servers().await;
    let svc = start(pg.url(), redis.url()).await;
    let addr = svc.addr;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let body = br#"{"amount_cents":1999}"#;

    // First, then 20 retries at once: one payment, the same bytes every time.
    let first = http(addr, "/payments", &[("Idempotency-Key", "pay-a")], body).await;
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let mut retries = Vec::new();
    for _ in 0..20 {
        retries.push(tokio::spawn(async move {
            http(addr, "/payments", &[("Idempotency-Key", "pay-a")], body).await
        }));
    }
    for r in retries {
        let r = r.await.unwrap();
        assert_eq!((r.status, &r.body), (201, &first.body));
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(payments(&pool, "pay-a").await, 1);

    // 30 racing first attempts of a new key: one payment; each answer is the payment or 409.
    let mut racing = Vec::new();
    for _ in 0..30 {
        racing.push(tokio::spawn(async move {
            http(addr, "/payments", &[("Idempotency-Key", "pay-b")], body).await
        }));
    }
    let mut created = Vec::new();
    for r in racing {
        let r = r.await.unwrap();
        match r.status {
            201 => created.push(r.body),
            409 => assert!(r.header("retry-after").is_some()),
            other => panic!("racing retry answered {other}"),
        }
    }
    assert!(!created.is_empty() && created.iter().all(|b| *b == created[0]));
    assert_eq!(payments(&pool, "pay-b").await, 1);

    // Refusals: another body, no key, a bad key, a body too large; a bad amount is an answer
    // that is itself replayed.
    let other = http(
        addr,
        "/payments",
        &[("Idempotency-Key", "pay-a")],
        br#"{"amount_cents":1}"#,
    )
    .await;
    assert_eq!(other.status, 422);
    assert_eq!(http(addr, "/payments", &[], body).await.status, 400);
    assert_eq!(
        http(addr, "/payments", &[("Idempotency-Key", "a b")], body)
            .await
            .status,
        400
    );
    let huge = vec![b' '; 65 * 1024];
    assert_eq!(
        http(addr, "/payments", &[("Idempotency-Key", "pay-c")], &huge)
            .await
            .status,
        413
    );
    let bad = http(addr, "/payments", &[("Idempotency-Key", "pay-d")], b"{}").await;
    let again = http(addr, "/payments", &[("Idempotency-Key", "pay-d")], b"{}").await;
    assert_eq!(
        (bad.status, again.status, &again.body),
        (400, 400, &bad.body)
    );
    assert_eq!(payments(&pool, "pay-d").await, 0);

    // Clicks: the first counts, duplicates are dropped and counted.
    let c = http(addr, "/ad/click", &[("Idempotency-Key", "click-1")], b"").await;
    assert_eq!(c.status, 202);
    for _ in 0..5 {
        let d = http(addr, "/ad/click", &[("Idempotency-Key", "click-1")], b"").await;
        assert_eq!((d.status, &d.body[..]), (200, &b"{\"counted\":false}"[..]));
    }
    let stats = http(addr, "/stats", &[], b"").await;
    let stats: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["clicks_dropped"], 5);
    assert_eq!(stats["payments"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_request_is_recovered_once_by_another_instance() {
    let (pg, redis) = servers().await;
    let mut first = start(pg.url(), redis.url()).await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let body = br#"{"amount_cents":500}"#;
    let addr = first.addr;
    // The request claims its key, then stalls (X-Delay-Ms) — and its process is killed.
    let stalled = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\nIdempotency-Key: pay-k\r\nX-Delay-Ms: 30000\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        rest
    });
    for i in 0.. {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM idempotency_keys WHERE key = 'pay-k'")
                .fetch_optional(&pool)
                .await
                .unwrap_or(None);
        if status.as_deref() == Some("in_progress") {
            break;
        }
        assert!(i < 1000, "the request never claimed its key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    assert!(
        stalled.await.unwrap().is_empty(),
        "the killed service answered"
    );

    // A second instance: retries get 409 while the dead claim's 1 s lease lasts, then one
    // recovers the key and pays; later retries replay that answer.
    let second = start(pg.url(), redis.url()).await;
    let mut conflicts = 0;
    let paid = loop {
        let r = http(
            second.addr,
            "/payments",
            &[("Idempotency-Key", "pay-k")],
            body,
        )
        .await;
        match r.status {
            201 => break r,
            409 => conflicts += 1,
            other => panic!(
                "retry answered {other}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
        assert!(conflicts < 200, "the dead claim was never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        paid.header("idempotent-replayed").is_none(),
        "the recovery ran the request"
    );
    let replay = http(
        second.addr,
        "/payments",
        &[("Idempotency-Key", "pay-k")],
        body,
    )
    .await;
    assert_eq!((replay.status, &replay.body), (201, &paid.body));
    assert_eq!(payments(&pool, "pay-k").await, 1, "paid once");
    let token: i64 = sqlx::query_scalar("SELECT token FROM idempotency_keys WHERE key = 'pay-k'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(token, 2, "recovered exactly once");
}

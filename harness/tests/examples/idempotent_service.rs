//! The seed's two idempotency grades behind HTTP: `POST /payments` (payment grade, on
//! PostgreSQL) and `POST /ad/click` (click grade, on Redis), each taking an
//! `Idempotency-Key` header.
//!
//! ```text
//! cargo run -p dlock-server-tests --example idempotent_service -- \
//!     [--postgres URL] [--redis URL] [--listen 127.0.0.1:8080] [--lease-ms 30000]
//! ```
//!
//! Without URLs it starts a throw-away PostgreSQL and Redis on loopback ports. It prints
//! `listening on http://ADDR` once it serves.
//!
//! | request | answer |
//! |---|---|
//! | `POST /payments`, JSON `{"amount_cents": N}`, first with its key | `201` `{"payment_id":…,"amount_cents":N}` (one row in `payments`) |
//! | the same key and body again | the first answer, byte for byte, plus `Idempotent-Replayed: true` |
//! | the same key while the first runs | `409`, `Retry-After` |
//! | the same key, another body | `422` |
//! | no key, a bad key | `400`; a body over 64 KiB: `413` |
//! | `POST /ad/click` first with its key in 60 s | `202` `{"counted":true}`; later: `200` `{"counted":false}` |
//! | `GET /stats` | `{"payments":…,"clicks_dropped":…}` |
//!
//! With `--allow-delay`, a payment request's `X-Delay-Ms` header makes the handler wait that
//! long after claiming its key (the tests kill the process then, to leave a claim behind).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use idempotency::{
    Begin, Click, ClickDeduper, Error, IdempotencyStore, StoreConfig, StoredResponse,
};
use sqlx::postgres::PgPoolOptions;

struct App {
    payments: IdempotencyStore,
    clicks: ClickDeduper,
    pool: sqlx::PgPool,
    allow_delay: bool,
}

struct Args {
    postgres: Option<String>,
    redis: Option<String>,
    listen: SocketAddr,
    lease: Duration,
    allow_delay: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        postgres: None,
        redis: None,
        listen: "127.0.0.1:8080".parse()?,
        lease: Duration::from_secs(30),
        allow_delay: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--postgres" => a.postgres = Some(value()?),
            "--redis" => a.redis = Some(value()?),
            "--listen" => a.listen = value()?.parse()?,
            "--lease-ms" => a.lease = Duration::from_millis(value()?.parse()?),
            "--allow-delay" => a.allow_delay = true,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    // Servers of our own unless told where they are (kept until the process ends).
    let mut own = Vec::new();
    let pg_url = match args.postgres {
        Some(u) => u,
        None => {
            let pg = dlock_fixtures::postgres().await?;
            let u = pg.url().to_string();
            own.push(pg);
            u
        }
    };
    let redis_url = match args.redis {
        Some(u) => u,
        None => {
            let r = dlock_fixtures::redis().await?;
            let u = r.url().to_string();
            own.push(r);
            u
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&pg_url)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS payments (id bigserial PRIMARY KEY, idempotency_key text NOT NULL, amount_cents bigint NOT NULL)")
        .execute(&pool)
        .await?;
    let payments = IdempotencyStore::new(
        pool.clone(),
        StoreConfig {
            lease: args.lease,
            max_body: 64 * 1024,
            ..StoreConfig::default()
        },
    )?;
    payments.create_table().await?;
    let clicks = ClickDeduper::connect(&redis_url, "ads", Duration::from_secs(60)).await?;
    let app = Arc::new(App {
        payments,
        clicks,
        pool,
        allow_delay: args.allow_delay,
    });
    let router = Router::new()
        .route("/payments", post(payment))
        .route("/ad/click", post(click))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    drop(own);
    Ok(())
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// The answer to an error of the store, by kind.
fn refused(e: Error) -> Response {
    let status = match &e {
        Error::InvalidKey { .. } => StatusCode::BAD_REQUEST,
        Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::InProgress { lease_left, .. } => {
            let mut r = json(
                StatusCode::CONFLICT,
                format!("{{\"error\":{:?}}}", e.to_string()),
            );
            let secs = lease_left.as_secs().max(1).to_string();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_str(&secs).expect("digits"));
            return r;
        }
        // A late request whose claim was taken over: its writes were rolled back.
        Error::Fenced { .. } => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    json(status, format!("{{\"error\":{:?}}}", e.to_string()))
}

/// The request's key (a missing or non-ASCII header is a bad key: 400).
fn key_of(headers: &HeaderMap) -> Result<String, Error> {
    match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) => Ok(k.to_string()),
        Some(Err(_)) => Err(Error::InvalidKey {
            why: "not ASCII".into(),
        }),
        None => Err(Error::InvalidKey {
            why: "the Idempotency-Key header is required".into(),
        }),
    }
}

async fn payment(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match key_of(&headers) {
        Ok(k) => k,
        Err(e) => return refused(e),
    };
    let claim = match app.payments.begin(&key, &body).await {
        Ok(Begin::Replay(stored)) => {
            let mut r = stored_response(stored);
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Ok(Begin::Claimed(claim)) => claim,
        Err(e) => return refused(e),
    };
    let amount = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["amount_cents"].as_i64())
        .filter(|a| *a > 0);
    let Some(amount) = amount else {
        // A bad request is an answer too: every retry of it gets the same 400.
        let stored = StoredResponse {
            status: 400,
            content_type: Some("application/json".into()),
            body: b"{\"error\":\"amount_cents: a positive integer is required\"}".to_vec(),
        };
        return match app.payments.complete(&claim, &stored).await {
            Ok(()) => stored_response(stored),
            Err(e) => refused(e),
        };
    };
    if app.allow_delay {
        if let Some(ms) = headers
            .get("x-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
    }
    let result = async {
        let mut tx = app.payments.transaction(&claim).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO payments (idempotency_key, amount_cents) VALUES ($1, $2) RETURNING id",
        )
        .bind(&key)
        .bind(amount)
        .fetch_one(tx.conn())
        .await?;
        let stored = StoredResponse {
            status: 201,
            content_type: Some("application/json".into()),
            body: format!("{{\"payment_id\":{id},\"amount_cents\":{amount}}}").into_bytes(),
        };
        tx.complete(&stored).await?;
        Ok::<_, Error>(stored)
    }
    .await;
    match result {
        Ok(stored) => stored_response(stored),
        Err(e) => {
            // Nothing was written (the transaction rolled back): let a retry run it again.
            let _ = app.payments.fail(&claim).await;
            refused(e)
        }
    }
}

fn stored_response(s: StoredResponse) -> Response {
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, s.body).into_response();
    if let Some(ct) = s.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

async fn click(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let key = match key_of(&headers) {
        Ok(k) => k,
        Err(e) => return refused(e),
    };
    match app.clicks.first_seen(&key).await {
        Ok(Click::First) => json(StatusCode::ACCEPTED, "{\"counted\":true}".into()),
        Ok(Click::Duplicate) => json(StatusCode::OK, "{\"counted\":false}".into()),
        Err(e) => refused(e),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let payments: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&app.pool)
        .await;
    let dropped = app.clicks.dropped_total().await;
    match (payments, dropped) {
        (Ok(p), Ok(d)) => json(
            StatusCode::OK,
            format!("{{\"payments\":{p},\"clicks_dropped\":{d}}}"),
        ),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"error\":\"store unavailable\"}".into(),
        ),
    }
}

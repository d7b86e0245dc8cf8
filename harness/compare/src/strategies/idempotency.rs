//! The seed's idempotency table, measured: payment grade (`idempotency::IdempotencyStore` on
//! PostgreSQL) beside click grade (`idempotency::ClickDeduper` on Redis), each through the
//! same four situations — a duplicate request, a client that times out and retries while the
//! first request runs, a worker killed mid-request, and the server crashing mid-request — with
//! the number of times the request's effect happened counted, not assumed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use idempotency::{
    Begin, Claim, Click, ClickDeduper, IdempotencyStore, OnInProgress, StoreConfig, StoredResponse,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// The situations, in report order.
pub const SCENARIOS: [&str; 4] = [
    "duplicate requests",
    "client timeout, retry while the first runs",
    "worker killed mid-request",
    "server crash mid-request",
];

/// Duplicates sent after the first in the duplicate scenario.
const DUPLICATES: usize = 99;
/// The payment store's lease in these runs.
const LEASE: Duration = Duration::from_millis(500);
/// How long the first request takes in the client-timeout scenario, and when the retry comes.
const SLOW: Duration = Duration::from_millis(300);
const RETRY_AFTER: Duration = Duration::from_millis(50);
/// How often a retrying client asks again, and for how long at most.
const RETRY_EVERY: Duration = Duration::from_millis(25);
const RETRY_FOR: Duration = Duration::from_secs(15);

/// One measured situation.
#[derive(Debug, Clone)]
pub struct IdemOutcome {
    /// How many times the request's effect happened (charges written, clicks counted).
    pub executions: u64,
    /// What the clients saw, in words built from the counts.
    pub outcome: String,
    /// For recoveries: ms from the fault to the retry that succeeded.
    pub recovered_ms: Option<f64>,
}

async fn charge_and_answer(store: &IdempotencyStore, claim: &Claim) -> Result<StoredResponse> {
    let mut tx = store.transaction(claim).await?;
    sqlx::query("INSERT INTO charges (key) VALUES ($1)")
        .bind(&claim.key)
        .execute(tx.conn())
        .await?;
    let r = StoredResponse {
        status: 201,
        content_type: Some("application/json".into()),
        body: format!("{{\"charged\":true,\"token\":{}}}", claim.token).into_bytes(),
    };
    tx.complete(&r).await?;
    Ok(r)
}

async fn charges(pool: &PgPool, key: &str) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM charges WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

/// A client retrying `key` until it gets an answer (a claim it completes, or a replay).
async fn retry_until_answered(
    store: &IdempotencyStore,
    key: &str,
    body: &[u8],
) -> Result<(bool, StoredResponse)> {
    let until = Instant::now() + RETRY_FOR;
    loop {
        match store.begin(key, body).await {
            Ok(Begin::Claimed(c)) => return Ok((true, charge_and_answer(store, &c).await?)),
            Ok(Begin::Replay(r)) => return Ok((false, r)),
            Err(idempotency::Error::InProgress { .. }) => {}
            // The server is coming back.
            Err(idempotency::Error::Database(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > until {
            bail!("no answer for {key} within {RETRY_FOR:?}");
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// Payment grade through `scenario` on the PostgreSQL `pg` (killed and started again by the
/// crash scenario).
pub async fn payment(
    pg: &dlock_fixtures::Server,
    scenario: &str,
    run: usize,
) -> Result<IdemOutcome> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(pg.url())
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS charges (key text NOT NULL)")
        .execute(&pool)
        .await?;
    let store = IdempotencyStore::new(
        pool.clone(),
        StoreConfig {
            lease: LEASE,
            on_in_progress: OnInProgress::Reject,
            ..StoreConfig::default()
        },
    )?;
    store.create_table().await?;
    let key = format!(
        "pay-{}-{run}-{}",
        scenario.len(),
        dlock_peer_proto::mono_us()
    );
    let body = br#"{"amount_cents":1999}"#;
    let out = match scenario {
        "duplicate requests" => {
            let (_, first) = retry_until_answered(&store, &key, body).await?;
            let mut same = 0;
            for _ in 0..DUPLICATES {
                match store.begin(&key, body).await? {
                    Begin::Replay(r) if r == first => same += 1,
                    other => bail!("a duplicate got {other:?}"),
                }
            }
            let n = charges(&pool, &key).await?;
            IdemOutcome {
                executions: n,
                outcome: format!(
                    "{n} charge; {same} of {DUPLICATES} duplicates replayed the stored answer byte for byte"
                ),
                recovered_ms: None,
            }
        }
        "client timeout, retry while the first runs" => {
            let Begin::Claimed(claim) = store.begin(&key, body).await? else {
                bail!("the first request did not claim");
            };
            let first = {
                let store = store.clone();
                let claim = claim.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(SLOW).await;
                    charge_and_answer(&store, &claim).await
                })
            };
            tokio::time::sleep(RETRY_AFTER).await;
            let early = match store.begin(&key, body).await {
                Err(idempotency::Error::InProgress { .. }) => "409 in progress",
                Ok(Begin::Replay(_)) => "the stored answer",
                Ok(Begin::Claimed(_)) => bail!("the retry claimed a running request"),
                Err(e) => return Err(e.into()),
            };
            let answer = first.await??;
            let (ran, later) = retry_until_answered(&store, &key, body).await?;
            let n = charges(&pool, &key).await?;
            IdemOutcome {
                executions: n,
                outcome: format!(
                    "the retry during the request: {early}; the next one: {}; {n} charge",
                    if !ran && later == answer {
                        "the first answer, byte for byte"
                    } else {
                        "a different answer"
                    }
                ),
                recovered_ms: None,
            }
        }
        "worker killed mid-request" => {
            let Begin::Claimed(_dead) = store.begin(&key, body).await? else {
                bail!("the first request did not claim");
            };
            // The worker dies here: its claim is never completed or failed.
            let died = Instant::now();
            let (ran, _) = retry_until_answered(&store, &key, body).await?;
            let ms = died.elapsed().as_secs_f64() * 1000.0;
            let n = charges(&pool, &key).await?;
            IdemOutcome {
                executions: n,
                outcome: format!(
                    "retries got 409 until the {} ms lease ran out, then one {} and charged; {n} charge",
                    LEASE.as_millis(),
                    if ran {
                        "recovered the key"
                    } else {
                        "replayed (unexpected)"
                    }
                ),
                recovered_ms: Some(ms),
            }
        }
        "server crash mid-request" => {
            let Begin::Claimed(claim) = store.begin(&key, body).await? else {
                bail!("the first request did not claim");
            };
            let mut tx = store.transaction(&claim).await?;
            sqlx::query("INSERT INTO charges (key) VALUES ($1)")
                .bind(&claim.key)
                .execute(tx.conn())
                .await?;
            let crashed = Instant::now();
            pg.kill().await?;
            pg.start().await?;
            let lost = tx
                .complete(&StoredResponse {
                    status: 201,
                    content_type: None,
                    body: b"{}".to_vec(),
                })
                .await
                .is_err();
            // The request's error path, as the example service has it: give the key back.
            let gave_back = store.fail(&claim).await.is_ok();
            let (ran, _) = retry_until_answered(&store, &key, body).await?;
            let ms = crashed.elapsed().as_secs_f64() * 1000.0;
            let n = charges(&pool, &key).await?;
            IdemOutcome {
                executions: n,
                outcome: format!(
                    "the open transaction {} with the server (its charge rolled back); fail() {}; the retry {}; {n} charge",
                    if lost {
                        "died"
                    } else {
                        "survived (unexpected)"
                    },
                    if gave_back {
                        "gave the key back"
                    } else {
                        "failed, the lease had to run out"
                    },
                    if ran { "ran the request" } else { "replayed" }
                ),
                recovered_ms: Some(ms),
            }
        }
        other => bail!("unknown scenario {other}"),
    };
    pool.close().await;
    Ok(out)
}

/// Click grade through `scenario` on the Redis `redis` (no persistence; killed and started
/// again by the crash scenario).
pub async fn click(
    redis: &dlock_fixtures::Server,
    scenario: &str,
    run: usize,
) -> Result<IdemOutcome> {
    let window = Duration::from_secs(60);
    let prefix = format!("ads{run}-{}", dlock_peer_proto::mono_us());
    let clicks = ClickDeduper::connect(redis.url(), &prefix, window).await?;
    let key = "click-1";
    let mut counted = 0u64;
    let out = match scenario {
        "duplicate requests" => {
            for _ in 0..=DUPLICATES {
                if clicks.first_seen(key).await? == Click::First {
                    counted += 1;
                }
            }
            IdemOutcome {
                executions: counted,
                outcome: format!(
                    "{counted} counted; {} of {DUPLICATES} duplicates dropped and counted as dropped",
                    clicks.dropped_here()
                ),
                recovered_ms: None,
            }
        }
        "client timeout, retry while the first runs" => {
            // The first request passes the check, then takes SLOW to record the click; the
            // client's retry comes meanwhile.
            let first = clicks.first_seen(key).await? == Click::First;
            tokio::time::sleep(RETRY_AFTER).await;
            let retry = clicks.first_seen(key).await?;
            tokio::time::sleep(SLOW - RETRY_AFTER).await;
            counted += u64::from(first);
            counted += u64::from(retry == Click::First);
            IdemOutcome {
                executions: counted,
                outcome: format!(
                    "the retry was {}; {counted} counted (the first request's)",
                    if retry == Click::Duplicate {
                        "dropped"
                    } else {
                        "counted again"
                    }
                ),
                recovered_ms: None,
            }
        }
        "worker killed mid-request" => {
            // The worker passes the check and dies before recording the click.
            let _ = clicks.first_seen(key).await?;
            let mut dropped = 0;
            for _ in 0..5 {
                match clicks.first_seen(key).await? {
                    Click::First => counted += 1,
                    Click::Duplicate => dropped += 1,
                }
            }
            IdemOutcome {
                executions: counted,
                outcome: format!(
                    "{dropped} of 5 retries dropped as duplicates of the dead request: the click is lost until the {} s window ends ({counted} counted)",
                    window.as_secs()
                ),
                recovered_ms: None,
            }
        }
        "server crash mid-request" => {
            counted += u64::from(clicks.first_seen(key).await? == Click::First);
            let crashed = Instant::now();
            redis.kill().await?;
            redis.start().await?;
            // A restarted client connects again; Redis without persistence forgot the key.
            let again = ClickDeduper::connect(redis.url(), &prefix, window).await?;
            let retry = again.first_seen(key).await?;
            counted += u64::from(retry == Click::First);
            IdemOutcome {
                executions: counted,
                outcome: format!(
                    "the retry after the restart was {}: {counted} counted",
                    if retry == Click::First {
                        "counted again (the window died with the server)"
                    } else {
                        "dropped"
                    }
                ),
                recovered_ms: Some(crashed.elapsed().as_secs_f64() * 1000.0),
            }
        }
        other => bail!("unknown scenario {other}"),
    };
    Ok(out)
}

//! The idempotency crate against real servers: payment grade on PostgreSQL (1,000 racing
//! retries charge once; a changed body is refused; an abandoned request is recovered once and
//! its late completion fenced) and click grade on Redis (duplicates inside the window dropped
//! and counted).

use std::sync::Arc;
use std::time::Duration;

use idempotency::{
    Begin, Claim, Click, ClickDeduper, Error, IdempotencyStore, OnInProgress, StoreConfig,
    StoredResponse,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

async fn postgres(max: u32) -> (dlock_fixtures::Server, PgPool) {
    let pg = dlock_fixtures::postgres()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL: {e:#} (scripts/install-servers installs it)"));
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect(pg.url())
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE charges (key text NOT NULL, cents bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (pg, pool)
}

fn store(pool: &PgPool, cfg: StoreConfig) -> Arc<IdempotencyStore> {
    Arc::new(IdempotencyStore::new(pool.clone(), cfg).expect("config"))
}

fn waiting(lease: Duration) -> StoreConfig {
    StoreConfig {
        lease,
        on_in_progress: OnInProgress::Wait {
            max: Duration::from_secs(60),
            poll: Duration::from_millis(5),
        },
        ..StoreConfig::default()
    }
}

/// The request: charge `cents` inside the claim's transaction, answer with a body that
/// names the claim's token (so a replay of another claim's answer would show).
async fn charge(
    store: &IdempotencyStore,
    claim: &Claim,
    cents: i64,
) -> Result<StoredResponse, Error> {
    let mut tx = store.transaction(claim).await?;
    sqlx::query("INSERT INTO charges (key, cents) VALUES ($1, $2)")
        .bind(&claim.key)
        .bind(cents)
        .execute(tx.conn())
        .await?;
    let response = StoredResponse {
        status: 201,
        content_type: Some("application/json".into()),
        body: format!(
            "{{\"charged\":{cents},\"token\":{}}}\u{0}\u{ff}",
            claim.token
        )
        .into_bytes(),
    };
    tx.complete(&response).await?;
    Ok(response)
}

async fn charges(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM charges WHERE key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits (polling the server's clock, at most 10 s) until `key`'s lease is over.
async fn lease_over(pool: &PgPool, key: &str) {
    for _ in 0..500 {
        let over: bool =
            sqlx::query_scalar("SELECT lease_until < now() FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(pool)
                .await
                .unwrap();
        if over {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lease of {key} did not end within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_racing_retries_charge_once_and_get_the_same_bytes() {
    let (_pg, pool) = postgres(24).await;
    let store = store(&pool, waiting(Duration::from_secs(30)));
    store.create_table().await.unwrap();
    const RETRIES: usize = 1000;
    let body = br#"{"amount":1999,"currency":"eur"}"#;
    let mut tasks = Vec::new();
    for _ in 0..RETRIES {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            match store.begin("pay-1", body).await? {
                Begin::Claimed(claim) => {
                    assert!(!claim.recovered);
                    // Hold the claim a while so the others pile up behind it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Error>((true, charge(&store, &claim, 1999).await?))
                }
                Begin::Replay(r) => Ok((false, r)),
            }
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().expect("every retry answered"));
    }
    let claimed = answers.iter().filter(|(c, _)| *c).count();
    assert_eq!(claimed, 1, "exactly one retry ran the request");
    assert!(
        answers.iter().all(|(_, r)| *r == answers[0].1),
        "one answer, byte for byte"
    );
    assert_eq!(charges(&pool, "pay-1").await, 1, "charged once");
    // And a later retry, too.
    assert_eq!(
        store.begin("pay-1", body).await.unwrap(),
        Begin::Replay(answers[0].1.clone())
    );

    // The same key with another body: refused, nothing runs.
    match store
        .begin("pay-1", br#"{"amount":2999,"currency":"eur"}"#)
        .await
    {
        Err(Error::KeyReused { key }) => assert_eq!(key, "pay-1"),
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(charges(&pool, "pay-1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_is_recovered_once_and_its_late_completion_is_fenced() {
    let (_pg, pool) = postgres(24).await;
    let lease = Duration::from_millis(300);
    let store = store(&pool, waiting(lease));
    store.create_table().await.unwrap();
    let body = b"order 17";
    // The first request claims and dies (nothing finishes it).
    let Begin::Claimed(dead) = store.begin("pay-2", body).await.unwrap() else {
        panic!("the first request claims");
    };
    assert_eq!(dead.token, 1);
    lease_over(&pool, "pay-2").await;
    // 50 retries at once: one recovers and charges, the others wait and replay its answer.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            match store.begin("pay-2", body).await? {
                Begin::Claimed(claim) => {
                    let r = charge(&store, &claim, 500).await?;
                    Ok::<_, Error>((Some(claim), r))
                }
                Begin::Replay(r) => Ok((None, r)),
            }
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().expect("answered"));
    }
    let recovered: Vec<&Claim> = answers.iter().filter_map(|(c, _)| c.as_ref()).collect();
    assert_eq!(recovered.len(), 1, "recovered once");
    assert!(
        recovered[0].recovered && recovered[0].token == 2,
        "{:?}",
        recovered[0]
    );
    assert!(answers.iter().all(|(_, r)| *r == answers[0].1));
    // The dead request comes back late: it can neither charge nor answer.
    assert!(matches!(
        charge(&store, &dead, 500).await,
        Err(Error::Fenced { token: 1, .. })
    ));
    assert!(matches!(store.fail(&dead).await, Err(Error::Fenced { .. })));
    assert!(matches!(
        store.extend(&dead).await,
        Err(Error::Fenced { .. })
    ));
    assert_eq!(charges(&pool, "pay-2").await, 1, "charged once");

    // A slow original still inside its transaction when its lease ends is not overtaken:
    // the retry waits on the key row and replays the original's answer.
    let Begin::Claimed(slow) = store.begin("pay-3", body).await.unwrap() else {
        panic!("claims");
    };
    let mut tx = store.transaction(&slow).await.unwrap();
    sqlx::query("INSERT INTO charges (key, cents) VALUES ('pay-3', 700)")
        .execute(tx.conn())
        .await
        .unwrap();
    lease_over(&pool, "pay-3").await;
    let retry = {
        let store = store.clone();
        tokio::spawn(async move { store.begin("pay-3", body).await })
    };
    // The retry is blocked on the row lock: wait for it to show as a lock wait.
    for i in 0.. {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(i < 500, "the retry never waited on the key row");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answer = StoredResponse {
        status: 201,
        content_type: None,
        body: b"slow but first".to_vec(),
    };
    tx.complete(&answer).await.unwrap();
    assert_eq!(retry.await.unwrap().unwrap(), Begin::Replay(answer));
    assert_eq!(charges(&pool, "pay-3").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_failed_and_bad_input_are_typed() {
    let (_pg, pool) = postgres(4).await;
    let cfg = StoreConfig {
        max_body: 64,
        max_response: 16,
        ..StoreConfig::default()
    };
    let store = store(&pool, cfg);
    store.create_table().await.unwrap();
    let Begin::Claimed(first) = store.begin("k-1", b"x").await.unwrap() else {
        panic!("claims");
    };
    match store.begin("k-1", b"x").await {
        Err(Error::InProgress { lease_left, .. }) => {
            assert!(lease_left > Duration::ZERO && lease_left <= Duration::from_secs(30))
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
    // A failure that changed nothing gives the key back: the next retry claims it again.
    store.fail(&first).await.unwrap();
    let Begin::Claimed(second) = store.begin("k-1", b"x").await.unwrap() else {
        panic!("claims again after fail");
    };
    assert_eq!((second.token, second.recovered), (2, false));
    assert!(matches!(
        store.complete(&first, &small()).await,
        Err(Error::Fenced { .. })
    ));
    let big = StoredResponse {
        body: vec![0; 17],
        ..small()
    };
    assert!(matches!(
        store.complete(&second, &big).await,
        Err(Error::ResponseTooLarge { len: 17, max: 16 })
    ));
    store.complete(&second, &small()).await.unwrap();
    assert_eq!(
        store.begin("k-1", b"x").await.unwrap(),
        Begin::Replay(small())
    );

    for bad in ["", "has space", &"k".repeat(256)] {
        assert!(
            matches!(store.begin(bad, b"x").await, Err(Error::InvalidKey { .. })),
            "{bad:?}"
        );
    }
    assert!(matches!(
        store.begin("k-2", &[0; 65]).await,
        Err(Error::BodyTooLarge { len: 65, max: 64 })
    ));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "refused input wrote nothing");
    for cfg in [
        StoreConfig {
            table: "Bad-Name".into(),
            ..StoreConfig::default()
        },
        StoreConfig {
            lease: Duration::ZERO,
            ..StoreConfig::default()
        },
        StoreConfig {
            retention: Duration::from_secs(1),
            ..StoreConfig::default()
        },
        StoreConfig {
            max_body: 0,
            ..StoreConfig::default()
        },
        StoreConfig {
            on_in_progress: OnInProgress::Wait {
                max: Duration::from_millis(5),
                poll: Duration::from_secs(1),
            },
            ..StoreConfig::default()
        },
    ] {
        assert!(
            matches!(
                IdempotencyStore::new(pool.clone(), cfg.clone()),
                Err(Error::InvalidConfig(_))
            ),
            "{cfg:?}"
        );
    }
}

fn small() -> StoredResponse {
    StoredResponse {
        status: 200,
        content_type: Some("text/plain".into()),
        body: b"ok".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_inside_the_window_are_dropped_and_counted() {
    let redis = dlock_fixtures::redis()
        .await
        .unwrap_or_else(|e| panic!("Redis: {e:#} (scripts/install-servers installs it)"));
    let window = Duration::from_millis(500);
    let clicks = Arc::new(
        ClickDeduper::connect(redis.url(), "ads", window)
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let clicks = clicks.clone();
        tasks.push(tokio::spawn(async move {
            clicks.first_seen("click-1").await.unwrap()
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        firsts += usize::from(t.await.unwrap() == Click::First);
    }
    assert_eq!(firsts, 1, "one first click in the window");
    assert_eq!(clicks.dropped_here(), 99);
    assert_eq!(clicks.dropped_total().await.unwrap(), 99);
    // Once the key has expired (watched on the server, at most 10 s), the key counts again.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0.. {
        let exists: i64 = redis::cmd("EXISTS")
            .arg("ads:click:click-1")
            .query_async(&mut conn)
            .await
            .unwrap();
        if exists == 0 {
            break;
        }
        assert!(i < 1000, "the click key outlived its 500 ms window by 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(clicks.first_seen("click-1").await.unwrap(), Click::First);
    assert!(matches!(
        clicks.first_seen("").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        ClickDeduper::connect(redis.url(), "ads", Duration::ZERO).await,
        Err(Error::InvalidConfig(_))
    ));
}

//! Click grade: duplicate suppression inside a time window, on Redis.
//!
//! The first event with a key inside the window wins (`SET <prefix>:click:<key> 1 NX PX
//! <window>`); later ones are dropped and counted (`INCR <prefix>:dropped`), both in one
//! script, so a duplicate is never counted as a first.
//!
//! **At most once, not exactly once.** The key is set *before* the caller records the
//! event: if the caller dies between the two, the event is lost and its retries are dropped
//! as duplicates until the window ends. After the window, or after Redis loses the key (a
//! restart without persistence, an eviction, a failover to a replica that had not received
//! it), the same key counts again. That is the right trade for clicks and views — cheap,
//! and a lost or doubled click is noise — and the wrong one for money: use
//! [`crate::IdempotencyStore`] there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::{Error, check_key};

/// What [`ClickDeduper::first_seen`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Click {
    /// The first with this key in the window: record it.
    First,
    /// A duplicate inside the window: dropped (and counted).
    Duplicate,
}

/// The script: set the key if absent, else count the duplicate.
const SCRIPT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  return 1
end
redis.call('INCR', KEYS[2])
return 0
";

/// The longest window (a day: longer is a job for the payment store).
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Click-grade duplicate suppression on one Redis.
#[derive(Debug)]
pub struct ClickDeduper {
    conn: MultiplexedConnection,
    prefix: String,
    window: Duration,
    script: redis::Script,
    dropped: AtomicU64,
}

impl ClickDeduper {
    /// Connects to `url` (`redis://…`); keys are `<prefix>:click:<key>` and the shared
    /// duplicate counter `<prefix>:dropped`; `window` is 1 ms to [`MAX_WINDOW`].
    pub async fn connect(url: &str, prefix: &str, window: Duration) -> Result<ClickDeduper, Error> {
        if window < Duration::from_millis(1) || window > MAX_WINDOW {
            return Err(Error::InvalidConfig(format!(
                "window {window:?}: between 1 ms and {MAX_WINDOW:?}"
            )));
        }
        if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Error::InvalidConfig(format!(
                "prefix {prefix:?}: 1–64 printable ASCII characters"
            )));
        }
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(ClickDeduper {
            conn,
            prefix: prefix.into(),
            window,
            script: redis::Script::new(SCRIPT),
            dropped: AtomicU64::new(0),
        })
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether `key` is the first inside the window ([`Click::First`]) or a duplicate.
    pub async fn first_seen(&self, key: &str) -> Result<Click, Error> {
        check_key(key)?;
        let mut conn = self.conn.clone();
        let first: i64 = self
            .script
            .key(format!("{}:click:{key}", self.prefix))
            .key(format!("{}:dropped", self.prefix))
            .arg(self.window.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if first == 1 {
            Ok(Click::First)
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(Click::Duplicate)
        }
    }

    /// Duplicates this deduper dropped.
    pub fn dropped_here(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Duplicates every deduper with this prefix dropped (the Redis counter).
    pub async fn dropped_total(&self) -> Result<u64, Error> {
        let mut conn = self.conn.clone();
        let n: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:dropped", self.prefix))
            .query_async(&mut conn)
            .await?;
        Ok(n.unwrap_or(0))
    }
}

//! `shedlock+redis://`: ShedLock's Redis provider keys.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::{
    Backend, BoxFuture, Capabilities, ConnectUrl, Error, FencingToken, Grant, Guard, Lease,
    LeaseMonitor, LockName, LockOptions, Operation, PendingLease, Result, Supervisors, WaitPlan,
    lease_deadline,
};
use lock_redis::tls::Connector;
use tokio::time::Instant;

use crate::BACKEND_REDIS;
use crate::config::ShedRedisConfig;
use crate::owner::owner;
use crate::redis_link::{Link, Target};

/// Extends only our own value.
const EXTEND: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Deletes only our own value.
const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
/// `?fencing=on`: ShedLock's `SET key value NX PX ttl`, byte for byte, and only when it took
/// the key, the next fencing token of the name in the same script, so no other grant can come
/// between the two. KEYS[1] the lock key, KEYS[2] the fencing hash; ARGV[1] the value,
/// ARGV[2] the ttl in ms, ARGV[3] the name (the hash field). Returns the token, or nil when
/// the key is taken.
///
/// A name with no counter yet starts from the server clock in microseconds rather than from
/// 1: if Redis lost the hash (a restart without persistence) the count starts again above
/// every token handed out before, as long as the server clock has not gone back and the name
/// saw less than one grant per microsecond.
const ACQUIRE_FENCED: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return nil
end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  return redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
end
local clock = redis.call('TIME')
local micros = string.format('%.0f', clock[1] * 1000000 + clock[2])
return redis.call('HINCRBY', KEYS[2], ARGV[3], micros)
";
/// The scripts, hashed once (`Script::new` computes the SHA-1 that `EVALSHA` sends).
static EXTEND_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(EXTEND));
static RELEASE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RELEASE));
static ACQUIRE_FENCED_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ACQUIRE_FENCED));

/// ShedLock's Redis provider: key `job-lock:<env>:<name>`, value
/// `ADDED:<instant>@<owner>`, `SET NX PX`.
pub struct ShedRedisBackend {
    /// Starts the guards' renewal supervisors only when due.
    supervisors: Supervisors,
    display_url: String,
    prefix: String,
    /// The hash of fencing counters (`?fencing=on`), one field per name.
    fence_hash: Option<String>,
    link: Arc<Link>,
    timeout: Duration,
}

impl fmt::Debug for ShedRedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedRedisBackend")
            .field("url", &self.display_url)
            .field("prefix", &self.prefix)
            .field("fence_hash", &self.fence_hash)
            .finish()
    }
}

/// ShedLock's default `env` (the key's middle part).
pub(crate) const DEFAULT_ENV: &str = "default";
/// ShedLock's default key prefix.
pub(crate) const DEFAULT_KEY_PREFIX: &str = "job-lock";

/// What every key of `env` under `key_prefix` starts with: `<prefix>:<env>:` (ShedLock's
/// `job-lock:default:NAME` by default).
pub(crate) fn env_prefix(key_prefix: &str, env: &str) -> String {
    format!("{key_prefix}:{env}:")
}

/// The value of an acquisition: ShedLock's `ADDED:<creation time>@<owner>`.
pub(crate) fn lock_value(added: &str, owner: &str) -> String {
    format!("{added}@{owner}")
}

/// `ADDED:` + the current UTC time with milliseconds, as ShedLock writes it.
fn added_now() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    added_at(ms)
}

/// `ADDED:` + the UTC time `ms` milliseconds after the Unix epoch, as
/// `yyyy-MM-ddTHH:mm:ss.SSSZ`.
pub(crate) fn added_at(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "ADDED:{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's civil-from-days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl ShedRedisBackend {
    /// Capabilities without `?fencing=on`: a lease, renewable, `at_least` by shortening the
    /// expiry; no notification (ShedLock defines none). With it, `fencing` too.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: false,
        shared: false,
        semaphore: false,
        lease: true,
        renew: true,
        at_least: true,
        notify: false,
        persistent_tokens: false,
        min_ttl: Some(Duration::from_millis(10)),
    };

    /// Parses `shedlock+redis://[user:password@]host:port[/db]?env=default&prefix=job-lock&fencing=off`
    /// (or `shedlock+rediss://…?ca=…&cert=…&key=…`, over TLS) and connects.
    pub async fn connect(url: &ConnectUrl) -> Result<Self> {
        let cfg = ShedRedisConfig::from_url(url)?;
        let tls = match &cfg.tls {
            None => None,
            Some(wanted) => Some(Connector::new(wanted).map_err(|(kind, why)| {
                Error::new(
                    kind,
                    BACKEND_REDIS,
                    Operation::Connect,
                    format!("{why} (URL {url})"),
                )
            })?),
        };
        let link = Arc::new(Link::new(Target {
            host: cfg.host,
            port: cfg.port,
            info: cfg.info,
            tls,
            timeout: cfg.timeout,
            prefix: cfg.prefix,
            fencing: cfg.fence_hash.is_some(),
        }));
        link.open_first(format!("cannot connect to {url}")).await?;
        Ok(ShedRedisBackend {
            supervisors: Supervisors::new(),
            display_url: url.to_string(),
            prefix: cfg.key_prefix,
            fence_hash: cfg.fence_hash,
            link,
            timeout: cfg.timeout,
        })
    }

    fn key(&self, name: &LockName) -> String {
        format!("{}{}", self.prefix, name.as_str())
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        opts.check_for(BACKEND_REDIS, &self.capabilities())?;
        let key = self.key(name);
        let value = lock_value(&added_now(), &owner(200));
        let ttl_ms = opts.ttl().as_millis().max(1) as u64;
        let plan = WaitPlan::new(opts);
        let requested_at = plan.requested_at;
        let lease = Arc::new(ShedRedisLease {
            supervisors: self.supervisors.clone(),
            link: self.link.clone(),
            key: key.clone(),
            value: value.clone(),
        });
        loop {
            let sent = Instant::now();
            // Armed before the SET: a cancelled acquire releases (value-checked) in the background.
            let pending = PendingLease::new(lease.clone());
            let set = self.take(&key, &value, name, ttl_ms).await?;
            if let Some(token) = set {
                let monitor =
                    LeaseMonitor::new(name, BACKEND_REDIS, Some(lease_deadline(sent, opts.ttl())));
                return Ok(Guard::new(
                    Grant {
                        name: name.clone(),
                        backend: BACKEND_REDIS,
                        token,
                        lease: pending.into_lease(),
                        monitor,
                        requested_at,
                    },
                    opts,
                ));
            }
            pending.disarm();
            if plan.expired(Instant::now()) {
                return Err(plan.busy_error(BACKEND_REDIS, name, &format!(" (key {key} exists)")));
            }
            // ShedLock announces nothing: sleep until the key expires, but re-check at least
            // every 500 ms so an early release is noticed (bounded, not a busy loop).
            let pttl: i64 = self
                .link
                .run(Operation::Acquire, |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("PTTL").arg(&key).query_async(&mut c).await }
                })
                .await?;
            let until_expiry = Duration::from_millis(pttl.max(1) as u64);
            let nap = until_expiry.min(Duration::from_millis(500));
            tokio::time::sleep_until(plan.cap(Instant::now() + nap)).await;
        }
    }

    /// One attempt to take `key`: `None` when it is taken, else the grant's fencing token
    /// (`Some(None)` without `?fencing=on`, where the command is ShedLock's own `SET NX PX`).
    async fn take(
        &self,
        key: &str,
        value: &str,
        name: &LockName,
        ttl_ms: u64,
    ) -> Result<Option<Option<FencingToken>>> {
        let Some(hash) = &self.fence_hash else {
            let set: Option<String> = self
                .link
                .run(Operation::Acquire, |mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            return Ok(set.map(|_| None));
        };
        let token: Option<u64> = self
            .link
            .run(Operation::Acquire, |mut c| async move {
                ACQUIRE_FENCED_SCRIPT
                    .key(key)
                    .key(hash)
                    .arg(value)
                    .arg(ttl_ms)
                    .arg(name.as_str())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(token.map(|t| Some(FencingToken::new(t))))
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Backend for ShedRedisBackend {
    fn name(&self) -> &'static str {
        BACKEND_REDIS
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: self.fence_hash.is_some(),
            ..Self::CAPABILITIES
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(
            BACKEND_REDIS,
            name,
            opts,
            self.acquire_inner(name, opts),
        )
    }
}

struct ShedRedisLease {
    supervisors: Supervisors,
    link: Arc<Link>,
    key: String,
    value: String,
}

impl Lease for ShedRedisLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.supervisors)
    }

    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let n: i64 = self
                .link
                .run(Operation::Extend, |mut c| async move {
                    EXTEND_SCRIPT
                        .key(&self.key)
                        .arg(&self.value)
                        .arg(ttl.as_millis().max(1) as u64)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(n == 1)
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let n: i64 = self
                .link
                .run(Operation::Release, |mut c| async move {
                    RELEASE_SCRIPT
                        .key(&self.key)
                        .arg(&self.value)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(n == 1)
        })
    }
    // release_after: the default (shorten the expiry to what remains of at_least) is exactly
    // ShedLock's Redis unlock.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let v = added_now();
        assert!(
            v.starts_with("ADDED:20")
                && v.ends_with('Z')
                && v.len() == "ADDED:2026-11-26T05:10:00.123Z".len(),
            "{v}"
        );
    }
}

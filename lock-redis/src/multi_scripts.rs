//! The scripts of the reader–writer lock and the semaphore (single-instance Redis). Every
//! expiry is the server's clock (`TIME`, milliseconds); every step is one atomic script.
//!
//! Keys, for the lock key `K` = prefix ++ name (names never contain NUL, so no lock key
//! equals one of these):
//! - `K` itself while readers hold: the string [`SHARED_MARKER`] with the expiry of the last
//!   reader, so an exclusive `SET K … NX` (this version's or an older one's) fails while
//!   readers hold, and a reader finds a writer's token there while a writer holds.
//! - `K\0r`: the readers, a sorted set of tokens scored by their expiry.
//! - `K\0w`: the waiting writers, a sorted set of tokens scored by when their wish lapses
//!   (renewed while they wait); a reader is refused while it has a live member.
//! - The semaphore `S` = prefix ++ name ++ `\0s`: a sorted set of slots scored by expiry, and
//!   `S\0o`, a hash slot → the holder's token. A slot's fencing counter is field
//!   name ++ `\0` ++ slot of the prefix's counter hash (the lock's field is the name).

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use crate::node::{Link, Node, NodeError};

/// The value of `K` while readers hold it.
pub(crate) const SHARED_MARKER: &str = "dlock-shared";

/// A reader in: refused while a writer holds `K` (another value than the marker) or a writer
/// waits. KEYS: K, readers, waiting writers; ARGV: token, ttl ms, marker. Returns `{1, 0}`,
/// `{0, pttl}` (a writer holds) or `{0, -3}` (a writer waits).
pub(crate) const READ_ACQUIRE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[3] then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) > 0 then
  return {0, -3}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
redis.call('SET', KEYS[1], ARGV[3], 'PX', math.max(last - now, 1))
redis.call('PEXPIRE', KEYS[2], math.max(last - now, 1))
return {1, 0}
"#;
static READ_ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(READ_ACQUIRE_LUA));

/// A reader's renewal (ARGV[4] = '0') or release (ARGV[4] = '1'): nothing unless its token is
/// a live member. Renewal: the new expiry, and `K` lives as long as the last reader. Release:
/// the member goes; the last reader out deletes `K` and tells the waiters. KEYS: K, readers;
/// ARGV: token, ttl ms, marker, release. Returns 1 when it was ours, else 0.
pub(crate) const READ_TOUCH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score then
  return 0
end
local ours = tonumber(score) > now
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif ours then
  redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[2]), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) == 0 then
  if redis.call('GET', KEYS[1]) == ARGV[3] then
    redis.call('DEL', KEYS[1])
  end
  redis.call('PUBLISH', KEYS[1], 'released')
else
  local last = tonumber(redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2])
  if redis.call('GET', KEYS[1]) == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], math.max(last - now, 1))
  end
  redis.call('PEXPIRE', KEYS[2], math.max(last - now, 1))
end
if ours then
  return 1
end
return 0
"#;
static READ_TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(READ_TOUCH_LUA));

/// A writer says it waits (ARGV[2] > 0: for that many ms more) or no longer does (0: the
/// readers waiting behind it are told, on the lock's channel). KEYS: waiting writers (`K\0w`);
/// ARGV: token, ms.
pub(crate) const WRITER_WAITS_LUA: &str = r#"
local ms = tonumber(ARGV[2])
if ms == 0 then
  local n = redis.call('ZREM', KEYS[1], ARGV[1])
  if n == 1 then
    redis.call('PUBLISH', string.sub(KEYS[1], 1, -3), 'released')
  end
  return n
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ms, ARGV[1])
local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIRE', KEYS[1], math.max(last - now, 1))
return 1
"#;
static WRITER_WAITS: LazyLock<Script> = LazyLock::new(|| Script::new(WRITER_WAITS_LUA));

/// A permit: expired slots freed; with fewer than ARGV[3] (the caller's limit) held, the
/// lowest free slot below it, and with KEYS[3] its fencing token (seeded from the server
/// clock as the lock's counter is). KEYS: slots, owners, counter hash (optional); ARGV:
/// token, ttl ms, limit, counter field prefix. Returns `{1, slot, fence}` or
/// `{0, -1, ms until the first slot expires}`.
pub(crate) const PERMIT_ACQUIRE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, s in ipairs(gone) do
  redis.call('HDEL', KEYS[2], s)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) < limit then
  for s = 0, limit - 1 do
    if not redis.call('ZSCORE', KEYS[1], s) then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), s)
      redis.call('HSET', KEYS[2], s, ARGV[1])
      local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
      redis.call('PEXPIRE', KEYS[1], math.max(last - now, 1))
      redis.call('PEXPIRE', KEYS[2], math.max(last - now, 1))
      local n = 0
      if KEYS[3] then
        local field = ARGV[4] .. s
        n = redis.call('HINCRBY', KEYS[3], field, 1)
        if n == 1 then
          redis.call('HSET', KEYS[3], field, t[1] .. string.format('%06d', tonumber(t[2])))
          n = redis.call('HINCRBY', KEYS[3], field, 1)
        end
      end
      return {1, s, n}
    end
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  return {0, -1, tonumber(first[2]) - now}
end
return {0, -1, -1}
"#;
static PERMIT_ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(PERMIT_ACQUIRE_LUA));

/// A permit's renewal (ARGV[4] = '0') or release ('1'), when slot ARGV[2] still holds token
/// ARGV[1] (ARGV[2] = '': the slot holding ARGV[1], for an acquisition given up before its
/// reply). A release tells the waiters. KEYS: slots, owners; ARGV: token, slot, ttl ms,
/// release. Returns 1 when it was ours and live, else 0.
pub(crate) const PERMIT_TOUCH_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = ARGV[2]
if slot == '' then
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if all[i + 1] == ARGV[1] then
      slot = all[i]
    end
  end
  if slot == '' then
    return 0
  end
end
if redis.call('HGET', KEYS[2], slot) ~= ARGV[1] then
  return 0
end
local score = redis.call('ZSCORE', KEYS[1], slot)
local ours = score and tonumber(score) > now
if ARGV[4] == '1' or not ours then
  redis.call('ZREM', KEYS[1], slot)
  redis.call('HDEL', KEYS[2], slot)
  redis.call('PUBLISH', KEYS[1], 'released')
else
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), slot)
  local last = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  redis.call('PEXPIRE', KEYS[1], math.max(last - now, 1))
  redis.call('PEXPIRE', KEYS[2], math.max(last - now, 1))
end
if ours then
  return 1
end
return 0
"#;
static PERMIT_TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(PERMIT_TOUCH_LUA));

/// The scripts of this module, for `SCRIPT LOAD` on each new connection.
pub(crate) const ALL: [&str; 5] = [
    READ_ACQUIRE_LUA,
    READ_TOUCH_LUA,
    WRITER_WAITS_LUA,
    PERMIT_ACQUIRE_LUA,
    PERMIT_TOUCH_LUA,
];

/// `K` ++ `\0` ++ `suffix`.
pub(crate) fn sub_key(key: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1 + suffix.len());
    k.extend_from_slice(key);
    k.push(0);
    k.extend_from_slice(suffix);
    k
}

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u128::from(u64::MAX)) as u64).max(1)
}

/// What a reader's or a permit's attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    /// In; the permit's slot and fencing token (0: none asked for).
    Granted { slot: u32, fence: u64 },
    /// Held (ms until the blocker may expire; negative: unknown), or (reader) a writer waits.
    Busy { pttl_ms: i64, writer_waits: bool },
}

/// Runs the reader's acquire script on `link`.
pub(crate) async fn read_acquire(
    node: &Node,
    link: &Link,
    key: &[u8],
    token: &str,
    ttl: Duration,
    timeout: Duration,
) -> Result<Got, NodeError> {
    let mut inv = READ_ACQUIRE.key(key);
    inv.key(sub_key(key, b"r"))
        .key(sub_key(key, b"w"))
        .arg(token)
        .arg(millis(ttl))
        .arg(SHARED_MARKER);
    let (ok, n): (i64, i64) = node.eval_on(link, &inv, timeout).await?;
    Ok(match (ok, n) {
        (1, _) => Got::Granted { slot: 0, fence: 0 },
        (_, -3) => Got::Busy {
            pttl_ms: -1,
            writer_waits: true,
        },
        (_, pttl_ms) => Got::Busy {
            pttl_ms,
            writer_waits: false,
        },
    })
}

/// Renews (`release` false) or releases a reader; `link`: the connection the acquisition went
/// on, for one given up before its reply.
pub(crate) async fn read_touch(
    node: &Node,
    link: Option<&Link>,
    key: &[u8],
    token: &str,
    ttl: Duration,
    release: bool,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let mut inv = READ_TOUCH.key(key);
    inv.key(sub_key(key, b"r"))
        .arg(token)
        .arg(millis(ttl))
        .arg(SHARED_MARKER)
        .arg(if release { "1" } else { "0" });
    let n: i64 = match link {
        Some(link) => node.eval_on(link, &inv, timeout).await?,
        None => node.eval(&inv, timeout).await?,
    };
    Ok(n == 1)
}

/// Marks (`for_ms` > 0) or unmarks (0) a waiting writer of lock key `key`.
pub(crate) async fn writer_waits(
    node: &Node,
    key: &[u8],
    token: &str,
    for_ms: u64,
    timeout: Duration,
) -> Result<(), NodeError> {
    let mut inv = WRITER_WAITS.key(sub_key(key, b"w"));
    inv.arg(token).arg(for_ms);
    let _: i64 = node.eval(&inv, timeout).await?;
    Ok(())
}

/// Runs the permit script on `link` for semaphore key `sem`; `fence`: the counter hash and
/// the field prefix.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn permit_acquire(
    node: &Node,
    link: &Link,
    sem: &[u8],
    fence: Option<(&[u8], &[u8])>,
    token: &str,
    ttl: Duration,
    limit: u32,
    timeout: Duration,
) -> Result<Got, NodeError> {
    let mut inv = PERMIT_ACQUIRE.key(sem);
    inv.key(sub_key(sem, b"o"))
        .arg(token)
        .arg(millis(ttl))
        .arg(limit);
    match fence {
        Some((hash, field)) => {
            inv.key(hash).arg(field);
        }
        None => {
            inv.arg("");
        }
    }
    let (ok, slot, n): (i64, i64, i64) = node.eval_on(link, &inv, timeout).await?;
    Ok(if ok == 1 {
        Got::Granted {
            slot: slot.max(0) as u32,
            fence: n.max(0) as u64,
        }
    } else {
        Got::Busy {
            pttl_ms: n,
            writer_waits: false,
        }
    })
}

/// Renews or releases a permit (`slot` `None`: whichever slot holds `token`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn permit_touch(
    node: &Node,
    link: Option<&Link>,
    sem: &[u8],
    token: &str,
    slot: Option<u32>,
    ttl: Duration,
    release: bool,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let mut inv = PERMIT_TOUCH.key(sem);
    inv.key(sub_key(sem, b"o"))
        .arg(token)
        .arg(slot.map(|s| s.to_string()).unwrap_or_default())
        .arg(millis(ttl))
        .arg(if release { "1" } else { "0" });
    let n: i64 = match link {
        Some(link) => node.eval_on(link, &inv, timeout).await?,
        None => node.eval(&inv, timeout).await?,
    };
    Ok(n == 1)
}

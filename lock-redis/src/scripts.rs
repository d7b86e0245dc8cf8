//! The Lua scripts: each lock operation is one atomic script, so the check ("is the stored
//! value still my token?") and the action can never be split by another client.

use std::sync::LazyLock;
use std::time::Duration;

use lock_core::LockName;
use redis::Script;

use crate::node::{Link, Node, NodeError};

/// Sets the lock if it is free and, when a counter hash is given, hands out the next fencing
/// token in the same step. A missing counter (first grant of the name, or a server that lost
/// its data) is seeded from the server clock in microseconds, so tokens keep increasing
/// across a restart without persistence as long as the server clock does not go back.
///
/// KEYS[1] lock key, KEYS[2] counter hash (optional); ARGV[1] token, ARGV[2] ttl in ms,
/// ARGV[3] counter field. Returns `{1, fence}` (fence 0 without a counter) or `{0, pttl}`.
pub(crate) const ACQUIRE_LUA: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[2] == nil then
    return {1, 0}
  end
  local n = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  if n == 1 then
    local t = redis.call('TIME')
    redis.call('HSET', KEYS[2], ARGV[3], t[1] .. string.format('%06d', tonumber(t[2])))
    n = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  end
  return {1, n}
end
return {0, redis.call('PTTL', KEYS[1])}
"#;
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE_LUA));

/// Sets the lock's expiry to ARGV[2] ms from now if it still holds our token ARGV[1]; with
/// ARGV[3] = '1' also tells waiters (used when releasing with `at_least` time left, which
/// shortens the lease). Returns 1 when it was ours, else 0.
pub(crate) const TOUCH_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if ARGV[3] == '1' then
    redis.call('PUBLISH', KEYS[1], 'released')
  end
  return 1
end
return 0
"#;
static TOUCH: LazyLock<Script> = LazyLock::new(|| Script::new(TOUCH_LUA));

/// Deletes the lock if it still holds our token ARGV[1] and publishes on the channel named
/// like the key, which wakes the waiters. Returns 1 when it was ours, else 0.
pub(crate) const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], 'released')
  return 1
end
return 0
"#;
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// `SCRIPT LOAD` of every script, sent on each new connection so that the first request of
/// an acquisition is a plain `EVALSHA` (and a dropped acquisition never leaves a half-done
/// `NOSCRIPT` retry behind).
pub(crate) fn load_all() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for code in [ACQUIRE_LUA, TOUCH_LUA, RELEASE_LUA]
        .into_iter()
        .chain(crate::multi_scripts::ALL)
    {
        pipe.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
    }
    pipe
}

/// Where the fencing counter of a name lives: a hash key and a field.
#[derive(Clone, Copy)]
pub(crate) struct FenceSlot<'a> {
    pub hash: &'a [u8],
    pub field: &'a [u8],
}

impl<'a> FenceSlot<'a> {
    /// The counter of lock `name` under key prefix `prefix`: field `name` of the hash named
    /// by the prefix itself (no lock key equals it, since names are never empty).
    pub(crate) fn of(prefix: &'a [u8], name: &'a LockName) -> FenceSlot<'a> {
        FenceSlot {
            hash: prefix,
            field: name.as_bytes(),
        }
    }
}

/// What an acquisition attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Ours; the fencing token when a counter was asked for.
    Granted { fence: Option<u64> },
    /// Held by someone else; the lock's remaining time in ms (-1: no expiry).
    Busy { pttl_ms: i64 },
}

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u128::from(u64::MAX)) as u64).max(1)
}

/// Runs the acquire script on `link`.
pub(crate) async fn acquire(
    node: &Node,
    link: &Link,
    key: &[u8],
    fence: Option<FenceSlot<'_>>,
    token: &str,
    ttl: Duration,
    timeout: Duration,
) -> Result<Attempt, NodeError> {
    let mut inv = ACQUIRE.key(key);
    inv.arg(token).arg(millis(ttl));
    if let Some(slot) = fence {
        inv.key(slot.hash).arg(slot.field);
    }
    let reply: (i64, i64) = node.eval_on(link, &inv, timeout).await?;
    Ok(match reply {
        (1, n) if fence.is_some() => Attempt::Granted {
            fence: Some(n.max(0) as u64),
        },
        (1, _) => Attempt::Granted { fence: None },
        (_, pttl_ms) => Attempt::Busy { pttl_ms },
    })
}

/// Runs the touch script (extend, or shorten-and-notify).
pub(crate) async fn touch(
    node: &Node,
    key: &[u8],
    token: &str,
    ttl: Duration,
    notify: bool,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let mut inv = TOUCH.key(key);
    inv.arg(token)
        .arg(millis(ttl))
        .arg(if notify { "1" } else { "0" });
    let n: i64 = node.eval(&inv, timeout).await?;
    Ok(n == 1)
}

/// Runs the release script on `link` (or the current connection).
pub(crate) async fn release(
    node: &Node,
    link: Option<&Link>,
    key: &[u8],
    token: &str,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let mut inv = RELEASE.key(key);
    inv.arg(token);
    let n: i64 = match link {
        Some(link) => node.eval_on(link, &inv, timeout).await?,
        None => node.eval(&inv, timeout).await?,
    };
    Ok(n == 1)
}

//! Owner values: unique per acquisition, beginning with the hostname for readability.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// This machine's hostname (what ShedLock writes as `locked_by` by default).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// 128 random-enough bits as hex: a per-process random seed (from the standard library's
/// hash keys) mixed with a counter and the time. Unguessable is not needed; unique is.
pub fn unique_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut parts = [0u64; 2];
    for (i, p) in parts.iter_mut().enumerate() {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        *p = h.finish();
    }
    format!("{:016x}{:016x}", parts[0], parts[1])
}

/// `locked_by` for one acquisition: `<hostname>:<pid>:<unique>`, at most `max` characters
/// (the hostname is shortened if needed, never the unique part).
pub fn owner(max: usize) -> String {
    let tail = format!(":{}:{}", std::process::id(), unique_hex());
    let host = hostname();
    let room = max.saturating_sub(tail.len());
    let host: String = host.chars().take(room).collect();
    format!("{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_unique_and_start_with_the_hostname() {
        let a = owner(255);
        let b = owner(255);
        assert_ne!(a, b);
        assert!(a.starts_with(&hostname()), "{a}");
        assert!(owner(40).len() <= 40);
    }
}

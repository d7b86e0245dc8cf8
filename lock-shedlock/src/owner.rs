//! Owner values: unique per acquisition, beginning with the hostname for readability.

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

/// `locked_by` for one acquisition: `<hostname>:<pid>:<unique>`, at most `max` characters
/// (the hostname is shortened if needed, never the unique part).
pub fn owner(max: usize) -> String {
    let tail = format!(":{}:{}", std::process::id(), lock_core::unique_hex());
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

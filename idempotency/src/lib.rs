#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod click;
pub mod payment;

pub use click::{Click, ClickDeduper};
pub use payment::{
    Begin, Claim, ClaimTx, IdempotencyStore, OnInProgress, StoreConfig, StoredResponse,
};

use std::time::Duration;

use sha2::{Digest, Sha256};

/// What went wrong, one variant per outcome a caller answers differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The idempotency key is empty, too long or has characters outside printable ASCII.
    #[error("invalid idempotency key: {why}")]
    InvalidKey {
        /// Why.
        why: String,
    },
    /// The request body is larger than the store takes.
    #[error("request body of {len} bytes is larger than the {max} bytes allowed")]
    BodyTooLarge {
        /// Its length.
        len: usize,
        /// The limit ([`StoreConfig::max_body`]).
        max: usize,
    },
    /// The response to store is larger than the store keeps.
    #[error("response body of {len} bytes is larger than the {max} bytes kept")]
    ResponseTooLarge {
        /// Its length.
        len: usize,
        /// The limit ([`StoreConfig::max_response`]).
        max: usize,
    },
    /// The key was first used with a different request body: refused (HTTP 422 in the
    /// example service), nothing is run.
    #[error("idempotency key {key:?} was used with a different request")]
    KeyReused {
        /// The key.
        key: String,
    },
    /// The first request with this key is still running (its lease is live): retry later
    /// (HTTP 409 in the example service).
    #[error(
        "a request with idempotency key {key:?} is still in progress (lease ends in {lease_left:?})"
    )]
    InProgress {
        /// The key.
        key: String,
        /// How long its lease still runs, by the server's clock.
        lease_left: Duration,
    },
    /// This claim is no longer the key's: its lease ran out and a retry recovered the key.
    /// What the late request did in its [`ClaimTx`] is rolled back; it must not answer as if
    /// it had succeeded.
    #[error("the claim on idempotency key {key:?} was taken over (token {token} is stale)")]
    Fenced {
        /// The key.
        key: String,
        /// The stale claim's token.
        token: i64,
    },
    /// A duration, table name or limit out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The longest idempotency key (Stripe's limit).
pub const MAX_KEY_LEN: usize = 255;

/// Checks a key: 1 to [`MAX_KEY_LEN`] bytes of printable ASCII without spaces (UUIDs, ULIDs,
/// client-made tokens).
pub fn check_key(key: &str) -> Result<(), Error> {
    let why = if key.is_empty() {
        "empty".to_string()
    } else if key.len() > MAX_KEY_LEN {
        format!("{} bytes, at most {MAX_KEY_LEN}", key.len())
    } else if let Some(c) = key.chars().find(|c| !c.is_ascii_graphic()) {
        format!("{c:?} is not printable ASCII (0x21–0x7e)")
    } else {
        return Ok(());
    };
    Err(Error::InvalidKey { why })
}

/// A request's fingerprint: SHA-256 of its parts, each prefixed by its length so that
/// `("ab", "c")` and `("a", "bc")` differ. The payment store keeps it with the key and refuses
/// the key with any other fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a body alone.
    pub fn of_body(body: &[u8]) -> Fingerprint {
        Fingerprint::of_parts(&[body])
    }

    /// The fingerprint of several parts (method, path, body…), in order.
    pub fn of_parts(parts: &[&[u8]]) -> Fingerprint {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Fingerprint(h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("9b2f6f0e-3c1d-4a57-9a53-0f6f5d3b8c21").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "a b", "ключ", "a\n"] {
            assert!(
                matches!(check_key(bad), Err(Error::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check_key(&"k".repeat(MAX_KEY_LEN + 1)),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(
            Fingerprint::of_parts(&[b"ab", b"c"]),
            Fingerprint::of_parts(&[b"a", b"bc"])
        );
        assert_eq!(Fingerprint::of_body(b"x"), Fingerprint::of_parts(&[b"x"]));
        assert_ne!(Fingerprint::of_body(b"x"), Fingerprint::of_body(b"y"));
    }
}

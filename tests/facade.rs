//! The facade: `dlock::connect` picks backends by URL and says which feature a scheme needs.

use dlock::{ErrorKind, KNOWN_SCHEMES, LockName, LockOptions};

#[tokio::test]
async fn memory_is_always_available() {
    let backend = dlock::connect("memory://facade-test").await.unwrap();
    assert_eq!(backend.name(), "memory");
    let g = backend
        .acquire(&LockName::new("job").unwrap(), &LockOptions::new())
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
}

#[tokio::test]
async fn every_known_scheme_is_served_or_names_its_feature() {
    let disabled: Vec<(&str, &str)> = dlock::registry().disabled();
    for (scheme, feature) in KNOWN_SCHEMES {
        let url = format!("{scheme}://user:hunter2@127.0.0.1:1/x");
        let err = match dlock::connect(&url).await {
            Ok(_) => continue,
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        if disabled.contains(&(*scheme, *feature)) {
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{msg}");
            assert!(msg.contains(&format!("`{feature}` cargo feature")), "{msg}");
        } else {
            // Served: the backend may still reject this made-up URL, but not as unknown.
            assert!(
                !msg.contains("unknown URL scheme"),
                "{scheme} must be known: {msg}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_scheme_is_an_invalid_url() {
    let err = dlock::connect("nosuchscheme://x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUrl);
    assert!(err.to_string().contains("known schemes"), "{err}");
}

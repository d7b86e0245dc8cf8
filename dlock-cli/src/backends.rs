//! `dlock backends [--json]`: the URL schemes this build knows.
//!
//! The JSON document is a stable format (dlock-cli's README lists its fields and what may
//! change): scripts and other tools read it to learn what a given `dlock` binary can reach.

use dlock::{Capabilities, Registry, SchemeStatus};
use serde_json::{Value, json};

use super::EXIT_OK;
use super::opt::BackendsArgs;

pub(super) fn backends(args: BackendsArgs) -> i32 {
    let registry = dlock::registry();
    if args.json {
        println!("{:#}", document(&registry));
    } else {
        print!("{}", table(&registry));
    }
    EXIT_OK
}

/// The cargo feature of the `dlock` crate that provides `scheme`; `None` for schemes every
/// build has (`memory`).
fn feature_of(scheme: &str) -> Option<&'static str> {
    dlock::KNOWN_SCHEMES
        .iter()
        .find(|(s, _)| *s == scheme)
        .map(|(_, feature)| *feature)
}

/// The `--json` document: `{"dlock_version": "…", "schemes": [{…}, …]}`.
pub(crate) fn document(registry: &Registry) -> Value {
    let schemes: Vec<Value> = registry
        .schemes()
        .into_iter()
        .map(|(scheme, status)| match status {
            SchemeStatus::Available(caps) => json!({
                "scheme": scheme,
                "status": "available",
                "feature": feature_of(scheme),
                "capabilities": capabilities(&caps),
            }),
            SchemeStatus::NeedsFeature(feature) => json!({
                "scheme": scheme,
                "status": "needs-feature",
                "feature": feature,
                "capabilities": null,
            }),
        })
        .collect();
    json!({
        "dlock_version": env!("CARGO_PKG_VERSION"),
        "schemes": schemes,
    })
}

/// Every capability as its own field, so a reader tests `.capabilities.fencing` instead of
/// parsing the table's words.
fn capabilities(caps: &Capabilities) -> Value {
    json!({
        "fencing": caps.fencing,
        "shared": caps.shared,
        "semaphore": caps.semaphore,
        "lease": caps.lease,
        "renew": caps.renew,
        "at_least": caps.at_least,
        "notify": caps.notify,
        "persistent_tokens": caps.persistent_tokens,
        "min_ttl_ms": caps.min_ttl.map(|d| d.as_millis() as u64),
    })
}

/// The human-readable table (not a stable format).
fn table(registry: &Registry) -> String {
    let mut out = format!("{:<20} CAPABILITIES\n", "SCHEME");
    for (scheme, status) in registry.schemes() {
        let what = match status {
            SchemeStatus::Available(caps) => {
                let text = caps.to_string();
                if text.is_empty() {
                    "(none)".to_string()
                } else {
                    text
                }
            }
            SchemeStatus::NeedsFeature(f) => {
                format!("(not compiled in: enable cargo feature `{f}`)")
            }
        };
        out.push_str(&format!("{scheme:<20} {what}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The documented shape, field by field: a reader written against the README must keep
    /// working.
    #[test]
    fn json_document_has_the_documented_fields() {
        let mut registry = Registry::new();
        dlock::register_memory(&mut registry);
        registry.register_disabled("etcd", "etcd");
        let doc = document(&registry);
        assert_eq!(doc["dlock_version"], env!("CARGO_PKG_VERSION"));
        let schemes = doc["schemes"].as_array().unwrap();
        assert_eq!(schemes.len(), 2);

        let memory = &schemes[0];
        assert_eq!(memory["scheme"], "memory");
        assert_eq!(memory["status"], "available");
        assert_eq!(memory["feature"], Value::Null);
        let caps = memory["capabilities"].as_object().unwrap();
        let mut keys: Vec<&str> = caps.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "at_least",
                "fencing",
                "lease",
                "min_ttl_ms",
                "notify",
                "persistent_tokens",
                "renew",
                "semaphore",
                "shared"
            ]
        );
        assert!(
            caps.values()
                .all(|v| v.is_boolean() || v.is_number() || v.is_null())
        );

        assert_eq!(
            schemes[1],
            json!({"scheme": "etcd", "status": "needs-feature", "feature": "etcd", "capabilities": null})
        );
    }

    #[test]
    fn min_ttl_is_whole_milliseconds() {
        let caps = Capabilities {
            min_ttl: Some(Duration::from_secs(2)),
            ..Capabilities::default()
        };
        assert_eq!(capabilities(&caps)["min_ttl_ms"], 2000);
    }

    /// Every known scheme is listed, compiled in or not, and an available one names the
    /// feature that brought it.
    #[test]
    fn every_known_scheme_is_in_the_document() {
        let doc = document(&dlock::registry());
        let listed: Vec<&str> = doc["schemes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["scheme"].as_str().unwrap())
            .collect();
        for (scheme, _) in dlock::KNOWN_SCHEMES {
            assert!(listed.contains(scheme), "{scheme} missing from {listed:?}");
        }
        for s in doc["schemes"].as_array().unwrap() {
            if s["scheme"] != "memory" {
                assert!(s["feature"].is_string(), "{s}");
            }
        }
        assert!(table(&dlock::registry()).starts_with("SCHEME"));
    }
}

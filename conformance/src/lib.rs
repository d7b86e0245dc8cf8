#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod behavior;
pub mod faults;
pub mod multi;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lock_core::{Backend, Capabilities, LockName, Registry};

/// A boxed test future.
pub type TestFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// One property of the contract.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// `behavior::test_…`, for filtering.
    pub name: &'static str,
    /// One line: "X should Y".
    pub doc: &'static str,
    /// `Some(reason)` when the backend cannot be asked this (missing capability).
    pub skip: fn(&Capabilities) -> Option<&'static str>,
    /// The test.
    pub run: for<'a> fn(&'a Ctx) -> TestFuture<'a>,
}

/// Opens a new client of the service under test.
/// Opens a new client of the service under test at a URL: the URL under test, or a rewritten
/// one (the connection-loss behaviour reaches the server through a fault proxy).
pub type Connector = Arc<
    dyn Fn(&str) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Backend>>> + Send>> + Send + Sync,
>;

/// A connector that opens URLs through `registry` (the facade's `dlock::registry()`, or a
/// registry holding only the backend under test, so a backend author needs nothing else).
pub fn registry_connector(registry: Arc<Registry>) -> Connector {
    Arc::new(move |url: &str| {
        let (registry, url) = (registry.clone(), url.to_string());
        Box::pin(async move {
            registry
                .connect(&url)
                .await
                .with_context(|| format!("connect {}", lock_core::redact(&url)))
        })
    })
}

/// What a test sees: the backend under test, a way to open more clients, and a namespace.
pub struct Ctx {
    /// The URL under test (empty for backends built in code, such as the mutants).
    pub url: String,
    /// The first client.
    pub backend: Arc<dyn Backend>,
    /// Its capabilities.
    pub caps: Capabilities,
    connect: Connector,
    ns: String,
}

impl Ctx {
    /// Connects the first client and picks a fresh namespace.
    pub async fn new(url: &str, connect: Connector) -> Result<Ctx> {
        let backend = connect(url).await?;
        let caps = backend.capabilities();
        Ok(Ctx {
            url: url.to_string(),
            backend,
            caps,
            connect,
            ns: namespace(),
        })
    }

    /// `suffix` inside this test's namespace.
    pub fn name(&self, suffix: &str) -> LockName {
        LockName::new(format!("{}{suffix}", self.ns)).expect("valid test name")
    }

    /// Another, independent client of the same service (as another process would have).
    pub async fn client(&self) -> Result<Arc<dyn Backend>> {
        (self.connect)(&self.url).await
    }

    /// A client of the same kind at another URL (the same service through a proxy).
    pub async fn client_at(&self, url: &str) -> Result<Arc<dyn Backend>> {
        (self.connect)(url).await
    }

    /// A short lease the backend accepts, for expiry tests.
    pub fn short_ttl(&self) -> Duration {
        self.caps
            .min_ttl
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    }
}

/// A namespace no other run uses: `c<12 hex>-` (short, so 64-character name columns fit).
fn namespace() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("c{:012x}-", h.finish() & 0xffff_ffff_ffff)
}

/// Every behaviour, in a stable order.
pub fn all() -> Vec<Behaviour> {
    let mut all = behavior::all();
    all.extend(multi::all());
    all
}

/// Why `b` does not apply to a backend with `caps` at `url`, if it does not.
pub fn skip_reason(b: &Behaviour, caps: &Capabilities, url: &str) -> Option<String> {
    if let Some(reason) = (b.skip)(caps) {
        return Some(reason.to_string());
    }
    if b.name == "behavior::test_connection_loss_leaves_held" {
        if url.is_empty() || url.starts_with("memory://") {
            return Some("in-process backend: no connection to cut".into());
        }
        if let Err(reason) = behavior::proxied(url) {
            return Some(reason);
        }
    }
    None
}

/// Returned (as the error) by a test that finds at run time that it cannot apply.
#[derive(Debug)]
pub struct SkipTest(pub String);

impl std::fmt::Display for SkipTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped: {}", self.0)
    }
}

impl std::error::Error for SkipTest {}

/// How one behaviour went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It held.
    Passed,
    /// It did not; why.
    Failed(String),
    /// Not applicable to this backend; why.
    Skipped(String),
}

/// The longest a single behaviour may run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs one behaviour against the clients `connect` opens (`url` only for display and the
/// URL-based gates; empty for backends built in code).
pub async fn run_with(b: &Behaviour, url: &str, connect: Connector) -> Outcome {
    let ctx = match Ctx::new(url, connect).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("{e:#}")),
    };
    if let Some(reason) = skip_reason(b, &ctx.caps, url) {
        return Outcome::Skipped(reason);
    }
    match tokio::time::timeout(TEST_TIMEOUT, (b.run)(&ctx)).await {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(e)) => match e.downcast_ref::<SkipTest>() {
            Some(SkipTest(reason)) => Outcome::Skipped(reason.clone()),
            None => Outcome::Failed(format!("{e:#}")),
        },
        Err(_) => Outcome::Failed(format!("did not finish within {TEST_TIMEOUT:?}")),
    }
}

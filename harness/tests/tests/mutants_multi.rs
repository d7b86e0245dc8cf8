//! Mutants of the shared lock and the semaphore: the reference model (`memory://`) with one
//! rule broken, which the behaviour suite must catch. The unbroken model passes every
//! behaviour (`behavior.rs`, variant `memory`).

use std::sync::Arc;

use conformance::{Connector, Outcome};
use dlock::MemoryBackend;
use dlock::{Backend, BoxFuture, Capabilities, Guard, LockMode, LockName, LockOptions};

/// What is wrong.
#[derive(Debug, Clone, Copy)]
enum Bug {
    /// Shared requests go to a table of their own: a reader is admitted beside a writer.
    ReaderBesideWriter,
    /// A permit request with limit `n` is served with limit `n + 1`: a fourth permit of 3.
    OnePermitTooMany,
}

#[derive(Debug)]
struct Mutant {
    bug: Bug,
    model: MemoryBackend,
    /// Where `ReaderBesideWriter` sends the readers.
    readers: MemoryBackend,
}

impl Backend for Mutant {
    fn name(&self) -> &'static str {
        "memory-mutant"
    }

    fn capabilities(&self) -> Capabilities {
        MemoryBackend::CAPABILITIES
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, dlock::Result<Guard>> {
        Box::pin(async move {
            match (self.bug, opts.mode(), opts.permits()) {
                (Bug::ReaderBesideWriter, LockMode::Shared, _) => {
                    self.readers.acquire(name, opts).await
                }
                (Bug::OnePermitTooMany, _, Some(n)) if n < LockOptions::MAX_PERMITS => {
                    let wider = opts.clone().with_permits(n + 1);
                    self.model.acquire(name, &wider).await
                }
                _ => self.model.acquire(name, opts).await,
            }
        })
    }
}

/// Every client of the mutant shares its tables, as clients of one server would.
fn mutant(bug: Bug) -> Connector {
    let b: Arc<dyn Backend> = Arc::new(Mutant {
        bug,
        model: MemoryBackend::new(),
        readers: MemoryBackend::new(),
    });
    Arc::new(move |_: &str| {
        let b = b.clone();
        Box::pin(async move { Ok(b) })
    })
}

async fn assert_caught(connect: Connector, by: &str) {
    let b = conformance::all()
        .into_iter()
        .find(|b| b.name == by)
        .unwrap_or_else(|| panic!("no behaviour {by}"));
    match conformance::run_with(&b, "", connect).await {
        Outcome::Failed(why) => eprintln!("{by} caught the mutant: {why}"),
        other => panic!("expected {by} to fail on the mutant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_beside_a_writer_is_caught() {
    let m = mutant(Bug::ReaderBesideWriter);
    assert_caught(m.clone(), "behavior::test_shared_mode").await;
    assert_caught(m, "behavior::test_waiting_writer_is_not_starved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_permit_is_caught() {
    assert_caught(
        mutant(Bug::OnePermitTooMany),
        "behavior::test_semaphore_limit",
    )
    .await;
}

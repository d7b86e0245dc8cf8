//! ZooKeeper's part of issue 25 (TLS and authentication), against a real ZooKeeper.
//!
//! TLS: not supported, and so not tested here. zookeeper-client 0.11.2 has a `tls` feature,
//! but it depends on rustls 0.23 and futures-rustls 0.26 with their default features, which
//! compile aws-lc-rs (this workspace builds rustls with ring only), and builds its client
//! configuration with `ClientConfig::builder()`, the process-wide default provider, which is
//! ambiguous — a panic — in a process that also links ring (the facade with etcd, Redis or
//! PostgreSQL). lock-zookeeper's README says what would be needed.
//!
//! Authentication: `zk://user:password@…` adds the session's `digest` credentials, and every
//! node dlock creates gets the ACL "all permissions for the creator's identity, read for
//! anyone". Tested: the ACL as ZooKeeper stores it; a client with the wrong password (another
//! digest identity) or none cannot queue on, or delete from, such a lock (`ErrorKind::Auth`,
//! CLI exit 77) but can see its queue; the password shows nowhere.

mod common;

use anyhow::{Context, Result, ensure};
use common::secrets::{assert_no_secrets, dlock_cli};
use dlock::{ErrorKind, LockName, LockOptions};
use zookeeper_client::{Client, Error as ZkError, Permission};

/// `zk://user:password@HOST:PORT?base=BASE` for the fixture's server.
fn with_user(server_url: &str, user: &str, password: &str, base: &str) -> String {
    let rest = server_url.trim_start_matches("zk://");
    common::with_query(
        &format!("zk://{user}:{password}@{rest}"),
        &format!("base={base}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_made_with_credentials_belong_to_their_creator_and_are_readable_by_anyone()
-> Result<()> {
    let server = dlock_fixtures::zookeeper().await?;
    let base = format!("/{}", common::unique("acl"));
    let alice = with_user(server.url(), "alice", "alice-secret", &base);
    let owner = dlock::connect(&alice).await?;
    let job = LockName::new("job")?;
    let guard = owner.acquire(&job, &LockOptions::new()).await?;

    // The lock node and our contender node, as ZooKeeper stores their ACLs.
    let addr = server.url().trim_start_matches("zk://").to_string();
    let raw = Client::connect(&addr).await.context("raw client")?;
    let lock_path = format!("{base}/job");
    let children = raw.list_children(&lock_path).await?;
    ensure!(children.len() == 1, "{children:?}");
    let node = format!("{lock_path}/{}", children[0]);
    for path in [base.as_str(), lock_path.as_str(), node.as_str()] {
        let (acls, _) = raw.get_acl(path).await?;
        let shown: Vec<String> = acls
            .iter()
            .map(|a| format!("{}:{} {:?}", a.scheme(), a.id(), a.permission()))
            .collect();
        ensure!(acls.len() == 2, "{path}: {shown:?}");
        let creator = acls.iter().find(|a| a.scheme() == "digest");
        ensure!(
            creator
                .is_some_and(|a| a.id().starts_with("alice:") && a.permission() == Permission::ALL),
            "{path}: {shown:?}"
        );
        let world = acls.iter().find(|a| a.scheme() == "world");
        ensure!(
            world.is_some_and(|a| a.id() == "anyone" && a.permission() == Permission::READ),
            "{path}: {shown:?}"
        );
    }
    // Anyone can read the queue; nobody else can delete from it.
    match raw.delete(&node, None).await {
        Err(ZkError::NoAuth) => {}
        other => anyhow::bail!("an anonymous delete of {node} should be NoAuth: {other:?}"),
    }

    // The wrong password is another identity: no queueing on alice's lock.
    for url in [
        with_user(server.url(), "alice", "not-alices", &base),
        common::with_query(server.url(), &format!("base={base}")),
    ] {
        let other = dlock::connect(&url).await?;
        let err = other
            .acquire(&job, &LockOptions::new().with_wait(dlock::Wait::No))
            .await
            .err()
            .context("a second identity acquired alice's lock")?;
        ensure!(err.kind() == ErrorKind::Auth, "{err:?}");
        let text = format!("{err} {err:?}");
        ensure!(text.contains("ACL"), "{text}");
        ensure!(
            !text.contains("not-alices") && !text.contains("alice-secret"),
            "{text}"
        );
    }
    ensure!(guard.release().await?, "alice's guard was still hers");
    let shown = format!("{owner:?}");
    ensure!(!shown.contains("alice-secret"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlock_run_exits_77_when_its_password_does_not_match_the_locks_acl() -> Result<()> {
    let server = dlock_fixtures::zookeeper().await?;
    let base = format!("/{}", common::unique("acl-cli"));
    let owner = dlock::connect(&with_user(server.url(), "ops", "ops-pass-1", &base)).await?;
    let guard = owner
        .acquire(&LockName::new("cli-job")?, &LockOptions::new())
        .await?;
    let wrong = with_user(server.url(), "ops", "ops-pass-WRONG", &base);
    let run = ["-vv", "run", &wrong, "cli-job", "--", "true"];
    let o = dlock_cli(&run, &[("RUST_LOG", "debug")]).expect_code(77);
    // "ops-pass" is the start of both passwords, the right one and the wrong one.
    assert_no_secrets([&o], &["ops-pass"]);
    guard.release().await?;
    Ok(())
}

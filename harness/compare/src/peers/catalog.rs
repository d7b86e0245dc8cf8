//! Which peer libraries are compared on which backend, where their harnesses live, and what
//! each one does (or skips) beside dlock.

use std::path::{Path, PathBuf};

use super::proc::Launch;

/// The ecosystem a peer's harness is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HarnessKind {
    /// `peers/rust` (`dlock-peer-rust`).
    Rust,
    /// `peers/python` (`harness.py` in its virtualenv).
    Python,
    /// `peers/go` (`dlock-peer-go`).
    Go,
    /// `peers/java` (`dlock-peer-java`, a launcher script for the Maven-built jar).
    Java,
}

impl HarnessKind {
    /// `rust` / `python` / `go` / `java`.
    pub fn as_str(self) -> &'static str {
        match self {
            HarnessKind::Rust => "rust",
            HarnessKind::Python => "python",
            HarnessKind::Go => "go",
            HarnessKind::Java => "java",
        }
    }
}

/// One peer library on one backend.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// The comparison's backend name.
    pub backend: &'static str,
    /// The protocol's `PEER`.
    pub peer: &'static str,
    /// Which harness runs it.
    pub harness: HarnessKind,
    /// What it leaves out that dlock does (empty: nothing measurable).
    pub does_less: &'static str,
    /// How its waiters learn that the lock is free.
    pub waits_by: &'static str,
    /// A query option given to dlock's URL for this comparison (empty: dlock's defaults);
    /// dlock measured both ways where a peer skips work a user may not want.
    pub dlock_option: &'static str,
    /// What one grant is: the exclusive lock ([`PEERS`]) or a reader or a permit
    /// ([`MULTI_PEERS`]).
    pub holds: Holds,
}

/// What a peer's grant is, and what dlock is run as beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holds {
    /// The exclusive lock (`dlock peer URL`).
    Exclusive,
    /// A reader of a reader–writer lock (`dlock peer --shared URL`).
    Shared,
    /// One of `n` permits of a counting semaphore (`dlock peer --permits n URL`; the peer's
    /// harness gets `DLOCK_PEER_PERMITS=n`).
    Permits(u32),
}

impl Holds {
    /// The arguments `dlock peer` takes before the URL for this mode.
    pub fn dlock_args(self) -> Vec<String> {
        match self {
            Holds::Exclusive => Vec::new(),
            Holds::Shared => vec!["--shared".into()],
            Holds::Permits(n) => vec!["--permits".into(), n.to_string()],
        }
    }

    /// Holders that take a grant before a handoff chain or a failover starts and keep it, so
    /// that the measured processes contend for the last free grant: `n - 1` for a semaphore
    /// of `n`, none for the exclusive lock, `None` for readers (a reader waits for no reader,
    /// so there is no handoff between readers to time).
    pub fn companions(self) -> Option<usize> {
        match self {
            Holds::Exclusive => Some(0),
            Holds::Shared => None,
            Holds::Permits(n) => Some(n.saturating_sub(1) as usize),
        }
    }
}

/// Every peer, by backend.
pub const PEERS: &[PeerSpec] = &[
    PeerSpec {
        backend: "postgres",
        peer: "sqlx-advisory",
        harness: HarnessKind::Rust,
        does_less: "no session watch (a dead session is noticed at the next statement), no deadline or state on the guard, no fencing option; the same two statements on a SHA-256 key",
        waits_by: "the server's lock queue (pg_advisory_lock blocks)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "postgres",
        peer: "psycopg-advisory",
        harness: HarnessKind::Python,
        does_less: "the seed's pg_advisory_lock(hashtext(name)) + unlock and nothing else: no session watch, no deadline, no fencing",
        waits_by: "the server's lock queue (pg_advisory_lock blocks)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "shedlock-postgres",
        peer: "shedlock-jdbc",
        harness: HarnessKind::Java,
        does_less: "no waiting (lock() is one attempt), no renewal (lockAtMostFor = ttl is the whole budget): ShedLock's JdbcTemplateLockProvider with database time, lockAtLeastFor = 0; dlock on the same table (shedlock+postgres://, its defaults)",
        waits_by: "the harness's poll: lock() again every 100 ms until granted (ShedLock itself never waits)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "postgres",
        peer: "jdbc-advisory",
        harness: HarnessKind::Java,
        does_less: "the seed's pg_advisory_lock(hashtext(name)) + unlock through Spring's JdbcTemplate, on a HikariCP connection kept while locked (pool of 10): no session watch, no deadline, no fencing",
        waits_by: "the server's lock queue (pg_advisory_lock blocks)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "rslock",
        harness: HarnessKind::Rust,
        does_less: "no fencing counter, no wake-up publish, no renewal (SET NX PX + token-checked DEL only)",
        waits_by: "retries: 3 tries per lock() call, 0–200 ms random delay between, lock() again at once",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "rslock",
        harness: HarnessKind::Rust,
        does_less: "no wake-up publish, no renewal (dlock here without its fencing counter: fencing=off)",
        waits_by: "retries: 3 tries per lock() call, 0–200 ms random delay between, lock() again at once",
        dlock_option: "fencing=off",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "redis-py",
        harness: HarnessKind::Python,
        does_less: "no fencing counter, no wake-up publish, no renewal",
        waits_by: "polls every 100 ms (its default sleep)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "python-redis-lock",
        harness: HarnessKind::Python,
        does_less: "no fencing counter, no renewal (auto_renewal off by default); TTL in whole seconds",
        waits_by: "BLPOP on a signal list its release pushes",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "pottery",
        harness: HarnessKind::Python,
        does_less: "no fencing counter, no wake-up publish, no renewal (Redlock over one master)",
        waits_by: "retries with a random delay",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redlock",
        peer: "rslock",
        harness: HarnessKind::Rust,
        does_less: "no wake-up publish, no renewal",
        waits_by: "retries: 3 tries per lock() call, 0–200 ms random delay between, lock() again at once",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redlock",
        peer: "pottery",
        harness: HarnessKind::Python,
        does_less: "no wake-up publish, no renewal",
        waits_by: "retries with a random delay",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "etcd",
        peer: "etcd-v3lock",
        harness: HarnessKind::Rust,
        does_less: "",
        waits_by: "the server's own queue (the Lock RPC watches the predecessor key server-side)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "etcd",
        peer: "etcd-mutex",
        harness: HarnessKind::Go,
        does_less: "",
        waits_by: "a watch on the predecessor key (etcd's Go concurrency.Mutex, the layout dlock shares)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "etcd",
        peer: "etcd-election",
        harness: HarnessKind::Go,
        does_less: "no fencing token exposed (the leader key's revision, unused here)",
        waits_by: "a watch on the predecessor key (etcd's Go concurrency.Election)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "redsync",
        harness: HarnessKind::Go,
        does_less: "no fencing counter, no wake-up publish, no renewal (Redlock over one server)",
        waits_by: "retries with a random delay (redsync's defaults)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redlock",
        peer: "redsync",
        harness: HarnessKind::Go,
        does_less: "no wake-up publish, no renewal",
        waits_by: "retries with a random delay (redsync's defaults)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "shedlock-redis",
        peer: "shedlock-redis",
        harness: HarnessKind::Java,
        does_less: "no waiting (lock() is one attempt), no renewal: ShedLock's SET job-lock:default:NAME NX PX ttl; dlock on the same keys (shedlock+redis://, its defaults)",
        waits_by: "the harness's poll: lock() again every 100 ms until granted (ShedLock itself never waits)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "redisson",
        harness: HarnessKind::Java,
        does_less: "no fencing token (RLock); the holder is not told when a watchdog renewal fails",
        waits_by: "pub/sub: the unlock publishes on the lock's channel; a waiter also retries when the key's remaining ttl runs out; the watchdog renews every ttl/3",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "redis",
        peer: "redisson-fenced",
        harness: HarnessKind::Java,
        does_less: "the holder is not told when a watchdog renewal fails",
        waits_by: "pub/sub as RLock (unlock publishes; retry after the key's remaining ttl); the watchdog renews every ttl/3; each grant increments a token counter",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "zookeeper",
        peer: "kazoo",
        harness: HarnessKind::Python,
        does_less: "no fencing token (kazoo's own node layout, not Curator's)",
        waits_by: "a watch on the predecessor node",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "zookeeper",
        peer: "curator-mutex",
        harness: HarnessKind::Java,
        does_less: "no fencing token exposed, no lost-lock signal on the lock itself (Curator's InterProcessMutex, the node layout dlock shares)",
        waits_by: "a watch on the predecessor node",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
    PeerSpec {
        backend: "zookeeper",
        peer: "curator-leader",
        harness: HarnessKind::Java,
        does_less: "no fencing token; no try (a try is a 100 ms campaign); each acquire starts a LeaderSelector and its thread",
        waits_by: "a watch on the predecessor node (LeaderSelector runs an InterProcessMutex)",
        dlock_option: "",
        holds: Holds::Exclusive,
    },
];

/// Peers whose grant is a reader or a permit: measured beside dlock's shared lock and
/// semaphore in the peers section (not held through the failure scenarios; dlock's own
/// `· shared` / `· semaphore` rows are). Each shares dlock's layout on its backend.
pub const MULTI_PEERS: &[PeerSpec] = &[
    PeerSpec {
        backend: "etcd",
        peer: "etcd-rwmutex-read",
        harness: HarnessKind::Go,
        does_less: "no fencing token exposed (etcd's Go recipes.RWMutex RLock, the key layout dlock's readers share)",
        waits_by: "a watch on the last earlier writer key (recipes.RWMutex)",
        dlock_option: "",
        holds: Holds::Shared,
    },
    PeerSpec {
        backend: "zookeeper",
        peer: "curator-read",
        harness: HarnessKind::Java,
        does_less: "no fencing token exposed, no lost-lock signal on the lock itself (Curator's InterProcessReadWriteLock read lock, the node layout dlock's readers share)",
        waits_by: "a watch on the last earlier __WRIT__ node",
        dlock_option: "",
        holds: Holds::Shared,
    },
    PeerSpec {
        backend: "zookeeper",
        peer: "curator-semaphore",
        harness: HarnessKind::Java,
        does_less: "no token for the permit, no lost-permit signal on the lease (Curator's InterProcessSemaphoreV2 with 2 leases, the layout dlock's permits share)",
        waits_by: "a watch on the leases/ children, guarded by the locks/ mutex",
        dlock_option: "",
        holds: Holds::Permits(2),
    },
];

/// Every peer the peers section measures: [`PEERS`], then [`MULTI_PEERS`].
pub fn all_peers() -> impl Iterator<Item = &'static PeerSpec> {
    PEERS.iter().chain(MULTI_PEERS)
}

/// The raw floor each backend's rows are read against: the least work a lock needs there.
pub fn floor_of(backend: &str) -> &'static str {
    match backend {
        "postgres" => "pg_advisory_lock + pg_advisory_unlock (two statements on one session)",
        "redis" => {
            "SET NX PX + token-checked DEL; dlock's own work adds its token counter and wake-up publish in the same scripts"
        }
        "redlock" => {
            "SET NX PX + token-checked DEL on a quorum of 3; dlock adds its wake-up publish"
        }
        "etcd" => {
            "lease grant once + put-if-absent txn + delete (the Lock RPC does range + watch server-side)"
        }
        "zookeeper" => "create EPHEMERAL_SEQUENTIAL + getChildren + delete",
        "shedlock-postgres" => {
            "ShedLock's row INSERT or conditional UPDATE on lock_until, and its unlock UPDATE (dlock adds a NOTIFY on release)"
        }
        "shedlock-redis" => "ShedLock's SET job-lock:default:NAME NX PX and its unlock",
        _ => "",
    }
}

/// The URL a peer takes, from the dlock URL of the same servers (`None`: not a form we map).
pub fn peer_url(backend: &str, dlock_url: &str) -> Option<String> {
    let no_query = dlock_url.split('?').next().unwrap_or(dlock_url);
    match backend {
        "postgres" => Some(no_query.to_string()),
        "redis" => no_query
            .strip_prefix("redis://")
            .map(|r| format!("redis://{}", r.trim_end_matches('/'))),
        "redlock" => no_query
            .strip_prefix("redlock://")
            .map(|r| format!("redis://{}", r.trim_end_matches('/'))),
        "etcd" => no_query.strip_prefix("etcd://").map(|r| {
            r.trim_end_matches('/')
                .split(',')
                .map(|h| format!("http://{h}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        "zookeeper" => no_query
            .strip_prefix("zk://")
            .map(|r| r.split('/').next().unwrap_or(r).to_string()),
        // ShedLock's backends: the same server as the plain scheme (`shedlock+postgres://…`
        // is a `postgres://…` for the Java harness), either form accepted.
        "shedlock-postgres" => peer_url(
            "postgres",
            no_query.strip_prefix("shedlock+").unwrap_or(no_query),
        ),
        "shedlock-redis" => peer_url(
            "redis",
            no_query.strip_prefix("shedlock+").unwrap_or(no_query),
        ),
        _ => None,
    }
}

/// Where the harnesses are.
#[derive(Debug, Clone)]
pub struct Harnesses {
    /// The `dlock` binary (`dlock peer URL`).
    pub dlock_bin: PathBuf,
    /// The `peers/` directory of this checkout.
    pub peers_dir: PathBuf,
}

/// Environment variable naming the `peers/` directory (default: found from the working
/// directory upwards).
pub const PEERS_DIR_ENV: &str = "DLOCK_PEERS_DIR";

impl Harnesses {
    /// The harnesses of this checkout: `peers/` from [`PEERS_DIR_ENV`] or the first
    /// ancestor of the working directory (then of `dlock_bin`) that has `peers/README.md`.
    pub fn locate(dlock_bin: &Path) -> Harnesses {
        let from_env = std::env::var_os(PEERS_DIR_ENV).map(PathBuf::from);
        let search = |start: &Path| {
            start
                .ancestors()
                .map(|a| a.join("peers"))
                .find(|p| p.join("README.md").is_file())
        };
        let peers_dir = from_env
            .or_else(|| std::env::current_dir().ok().and_then(|d| search(&d)))
            .or_else(|| search(dlock_bin))
            .unwrap_or_else(|| PathBuf::from("peers"));
        Harnesses {
            dlock_bin: dlock_bin.to_path_buf(),
            peers_dir,
        }
    }

    /// dlock's own harness.
    pub fn dlock(&self, ttl_ms: u64) -> Launch {
        self.dlock_as(Holds::Exclusive, ttl_ms)
    }

    /// dlock's own harness, granting what `holds` says (`dlock peer --shared` / `--permits`).
    pub fn dlock_as(&self, holds: Holds, ttl_ms: u64) -> Launch {
        let mut pre_args = vec!["peer".to_string()];
        pre_args.extend(holds.dlock_args());
        Launch {
            program: self.dlock_bin.clone(),
            pre_args,
            peer_arg: None,
            env: session_env(ttl_ms),
        }
    }

    /// The Rust harness binary (built by `scripts/install-peers`).
    pub fn rust_bin(&self) -> PathBuf {
        self.peers_dir.join("rust/target/release/dlock-peer-rust")
    }

    /// How to start `spec`'s harness, or why it cannot be.
    pub fn launch(&self, spec: &PeerSpec, ttl_ms: u64) -> Result<Launch, String> {
        let (program, pre_args) = match spec.harness {
            HarnessKind::Rust => (self.rust_bin(), vec![]),
            HarnessKind::Go => (self.peers_dir.join("go/dlock-peer-go"), vec![]),
            HarnessKind::Java => (self.peers_dir.join("java/dlock-peer-java"), vec![]),
            HarnessKind::Python => (
                self.peers_dir.join("python/.venv/bin/python"),
                vec![
                    self.peers_dir
                        .join("python/harness.py")
                        .to_string_lossy()
                        .into_owned(),
                ],
            ),
        };
        // The Java launcher script is in the tree; what install-peers builds is its jar.
        let built = match spec.harness {
            HarnessKind::Java => self.peers_dir.join("java/target/dlock-peer-java.jar"),
            _ => program.clone(),
        };
        if !built.exists() {
            return Err(format!(
                "the {} harness is not installed ({} missing): run scripts/install-peers",
                spec.harness.as_str(),
                built.display()
            ));
        }
        let mut env = session_env(ttl_ms);
        if let Holds::Permits(n) = spec.holds {
            env.push(("DLOCK_PEER_PERMITS".into(), n.to_string()));
        }
        Ok(Launch {
            program,
            pre_args,
            peer_arg: Some(spec.peer.to_string()),
            env,
        })
    }
}

/// The session timeout a session-based peer without a per-lock ttl (kazoo, Curator) is given,
/// and Redisson's lock watchdog timeout: the comparison's ttl, as dlock's ZooKeeper URL gets it.
fn session_env(ttl_ms: u64) -> Vec<(String, String)> {
    vec![("DLOCK_PEER_SESSION_MS".into(), ttl_ms.to_string())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_come_from_the_dlock_urls() {
        let cases = [
            (
                "postgres",
                "postgres://u@127.0.0.1:5/db?fencing=table",
                "postgres://u@127.0.0.1:5/db",
            ),
            ("redis", "redis://127.0.0.1:6/", "redis://127.0.0.1:6"),
            (
                "redlock",
                "redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
                "redis://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
            ),
            (
                "etcd",
                "etcd://127.0.0.1:7,127.0.0.1:8?prefix=x",
                "http://127.0.0.1:7,http://127.0.0.1:8",
            ),
            (
                "zookeeper",
                "zk://127.0.0.1:9/chroot?session_timeout=2s",
                "127.0.0.1:9",
            ),
        ];
        for (backend, url, want) in cases {
            assert_eq!(peer_url(backend, url).as_deref(), Some(want), "{backend}");
        }
        assert_eq!(peer_url("redis", "rediss://x:1"), None);
    }

    #[test]
    fn java_peers_start_through_the_launcher_once_the_jar_is_built() {
        let dir = std::env::temp_dir().join(format!("dlock-catalog-java-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("java/target")).unwrap();
        std::fs::write(dir.join("java/dlock-peer-java"), "#!/bin/sh\n").unwrap();
        let h = Harnesses {
            dlock_bin: PathBuf::from("dlock"),
            peers_dir: dir.clone(),
        };
        let spec = PEERS
            .iter()
            .find(|p| p.harness == HarnessKind::Java)
            .expect("a Java peer");
        // The script is in the tree; without the jar the harness is not installed.
        let err = h.launch(spec, 2000).unwrap_err();
        assert!(
            err.contains("dlock-peer-java.jar") && err.contains("install-peers"),
            "{err}"
        );
        std::fs::write(dir.join("java/target/dlock-peer-java.jar"), "").unwrap();
        let l = h.launch(spec, 2000).unwrap();
        assert_eq!(l.program, dir.join("java/dlock-peer-java"));
        assert!(l.pre_args.is_empty());
        assert_eq!(l.peer_arg.as_deref(), Some(spec.peer));
        assert!(
            l.env
                .iter()
                .any(|(k, v)| k == "DLOCK_PEER_SESSION_MS" && v == "2000")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn multi_peers_run_dlock_in_their_mode_and_tell_their_harness_the_limit() {
        let dir = std::env::temp_dir().join(format!("dlock-catalog-multi-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("java/target")).unwrap();
        std::fs::write(dir.join("java/target/dlock-peer-java.jar"), "").unwrap();
        let h = Harnesses {
            dlock_bin: PathBuf::from("dlock"),
            peers_dir: dir.clone(),
        };
        assert!(PEERS.iter().all(|p| p.holds == Holds::Exclusive));
        let sem = MULTI_PEERS
            .iter()
            .find(|p| p.peer == "curator-semaphore")
            .expect("Curator's semaphore");
        assert_eq!(sem.holds, Holds::Permits(2));
        assert_eq!(sem.holds.companions(), Some(1));
        assert_eq!(
            h.dlock_as(sem.holds, 2000).pre_args,
            ["peer", "--permits", "2"]
        );
        let l = h.launch(sem, 2000).unwrap();
        assert!(
            l.env
                .iter()
                .any(|(k, v)| k == "DLOCK_PEER_PERMITS" && v == "2")
        );
        assert_eq!(Holds::Shared.companions(), None);
        assert_eq!(
            h.dlock_as(Holds::Shared, 2000).pre_args,
            ["peer", "--shared"]
        );
        assert_eq!(h.dlock(2000).pre_args, ["peer"]);
        assert_eq!(all_peers().count(), PEERS.len() + MULTI_PEERS.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_peer_has_a_floor_and_a_wait_policy() {
        for p in all_peers() {
            assert!(!floor_of(p.backend).is_empty(), "{}", p.backend);
            assert!(!p.waits_by.is_empty(), "{}", p.peer);
        }
    }
}

//! One ZooKeeper session per backend, shared by every lock it grants, and the task that turns
//! session events into guard states: disconnected → `Unverifiable`, expired → `Lost`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{Cleanups, LeaseMonitor, LockState, Operation, Result, sleep_until_opt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use zookeeper_client::{Acl, Acls, Client, Permission, SessionState, StateWatcher};

use crate::config::Config;
use crate::error;

/// A live ZooKeeper session and the grants that depend on it.
pub(crate) struct Session {
    client: Client,
    timeout: Duration,
    grants: Arc<Mutex<Grants>>,
    /// Deletes this session's clients started in the background (withdrawn contenders,
    /// dropped guards, releases held back by `at_least`).
    cleanups: Cleanups,
    /// The ACL of every node this session creates (see [`Session::acls`]).
    acls: Acls<'static>,
    /// Dropped with the session: tells the watcher task to stop.
    _stop: oneshot::Sender<()>,
}

/// With credentials: every permission for the creator's identity (ZooKeeper's `auth` scheme,
/// which the server stores as `digest:USER:HASH` of the session's digest credentials), and
/// read for anyone, so that every contender can list and watch the queue.
static CREATOR_ALL_ANYONE_READ: [Acl; 2] = [
    Acl::new_const(Permission::ALL, "auth", ""),
    Acl::new_const(Permission::READ, "world", "anyone"),
];

/// How the session looks from here.
#[derive(Debug, Clone, Copy)]
enum Link {
    Up,
    /// Disconnected; `lost` once the session may have expired on the server.
    Down {
        lost: bool,
    },
    Ended,
}

struct Grants {
    link: Link,
    next_id: u64,
    /// Each grant's monitor and its node's path.
    monitors: HashMap<u64, (LeaseMonitor, String)>,
}

impl Session {
    /// Opens a session with the servers in `config`.
    pub async fn open(config: &Config) -> Result<Arc<Session>> {
        let configured = connection_timeout(config.session_timeout);
        let mut connector = Client::connector()
            .with_session_timeout(config.session_timeout)
            // See `connection_timeout`: a reconnection whose connection never answers is given
            // up after a quarter of the session timeout, not 2/5 of it.
            .with_connection_timeout(configured)
            // Fail at once when no server accepts a connection, rather than after the
            // session timeout (only affects this first connect).
            .with_fail_eagerly();
        if let Some(auth) = config.digest_auth() {
            connector = connector.with_auth("digest", auth.as_bytes());
        }
        let what = format!(
            "opening a ZooKeeper session with {}",
            config.connect_string()
        );
        // The client gives up after about one session timeout on its own; this is a backstop.
        let limit = config.session_timeout + Duration::from_secs(2);
        let client =
            match tokio::time::timeout(limit, connector.connect(&config.connect_string())).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    let what = match e {
                        zookeeper_client::Error::NoHosts => {
                            format!("{what}: {}", why_no_host(&config.hosts).await)
                        }
                        _ => what,
                    };
                    return Err(error::from_zk(Operation::Connect, &what, e)
                        .in_operation(Operation::Connect));
                }
                Err(_) => return Err(error::no_answer(Operation::Connect, &what, limit)),
            };
        let timeout = client.session_timeout();
        let connection = effective_connection_timeout(timeout, configured);
        tracing::debug!(
            session = %client.session_id(),
            timeout_ms = timeout.as_millis() as u64,
            connection_timeout_ms = connection.as_millis() as u64,
            "ZooKeeper session open"
        );
        let grants = Arc::new(Mutex::new(Grants {
            link: Link::Up,
            next_id: 0,
            monitors: HashMap::new(),
        }));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(watch_session(
            client.clone(),
            client.state_watcher(),
            Arc::clone(&grants),
            lost_grace(timeout, connection),
            stopped,
        ));
        Ok(Arc::new(Session {
            client,
            timeout,
            grants,
            cleanups: Cleanups::new(),
            acls: match config.digest_auth() {
                Some(_) => Acls::new(&CREATOR_ALL_ANYONE_READ),
                None => Acls::anyone_all(),
            },
            _stop: stop,
        }))
    }

    /// The ACL for nodes this session creates: without credentials open to anyone (ZooKeeper's
    /// `world:anyone`, all permissions); with `user:password@`, all permissions for the
    /// creator's digest identity and read for anyone.
    pub fn acls(&self) -> Acls<'static> {
        self.acls
    }

    /// The client (cheap to clone; every clone talks over this session).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The background deletes of this session.
    pub fn cleanups(&self) -> &Cleanups {
        &self.cleanups
    }

    /// Ends the session with `closeSession`, which deletes its ephemeral nodes at once, and
    /// waits (up to the session timeout) until the client has sent it and the server answered.
    /// Without this, a process that exits leaves its nodes until the session times out: a
    /// session outlives its TCP connection. Only the last holder of the session can close it;
    /// while guards hold it, it stays open (they need it).
    pub async fn close(self: Arc<Self>) {
        let mut states = self.client.state_watcher();
        let limit = self.timeout;
        let id = self.id();
        match Arc::try_unwrap(self) {
            // Dropping the last client (this one, and the state task's, which stops with it)
            // makes the client send closeSession and finish its pending requests.
            Ok(session) => drop(session),
            Err(_) => {
                tracing::debug!("the ZooKeeper session is still held by guards; it stays open");
                return;
            }
        }
        let ended = tokio::time::timeout(limit, async {
            let mut state = states.peek_state();
            while !state.is_terminated() {
                state = states.changed().await;
            }
            state
        })
        .await;
        match ended {
            Ok(state) => tracing::debug!(session = id, %state, "ZooKeeper session closed"),
            Err(_) => tracing::warn!(
                session = id,
                "the ZooKeeper session did not confirm its close in time; its nodes go when it times out"
            ),
        }
    }

    /// The session timeout the server granted.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The session id, as the `ephemeralOwner` of the nodes it creates.
    pub fn id(&self) -> i64 {
        self.client.session_id().0
    }

    /// True once the session is over (expired, closed, or refused): a new one is needed.
    pub fn is_over(&self) -> bool {
        self.client.state().is_terminated() || matches!(lock(&self.grants).link, Link::Ended)
    }

    /// Starts reporting session events to `monitor` of the grant whose node is `path`;
    /// returns the id to deregister with. A grant that arrives while the session is already in
    /// trouble is told at once.
    pub fn register(&self, monitor: &LeaseMonitor, path: &str) -> u64 {
        let mut grants = lock(&self.grants);
        match grants.link {
            Link::Up => {}
            Link::Down { lost: false } => {
                monitor.report_unverifiable("disconnected from ZooKeeper")
            }
            Link::Down { lost: true } | Link::Ended => {
                monitor.report_lost("the ZooKeeper session ended or may have expired")
            }
        }
        grants.next_id += 1;
        let id = grants.next_id;
        grants
            .monitors
            .insert(id, (monitor.clone(), path.to_string()));
        id
    }

    /// Stops reporting to the grant `id`.
    pub fn deregister(&self, id: u64) {
        lock(&self.grants).monitors.remove(&id);
    }
}

/// The connection timeout dlock gives the client: a quarter of the session timeout.
///
/// zookeeper-client uses this one value for two things: an established connection that has
/// not heard from the server for this long is declared dead (the client pings after 3/8 of it
/// of silence), and a connection attempt — TCP connect, then the session handshake — that has
/// not completed after this long is abandoned, after which the client tries again (100–200 ms
/// later with one server). The first reconnection attempt starts at once after a connection
/// breaks, so after a short outage it is often a connection opened *during* the outage; if
/// that one never answers (a half-open socket, a lost handshake), only this timeout ends the
/// wait. The client's default, 2/5 of the session timeout, leaves no time for the second
/// attempt before a guard must turn `Lost`; a quarter of it does (see [`lost_grace`]), at the
/// price of tolerating round trips only up to about an eighth of the session timeout (the
/// ping after 3/8 of silence, plus one 1/8 check tick, must be answered within the timeout).
pub(crate) fn connection_timeout(session_timeout: Duration) -> Duration {
    session_timeout / 4
}

/// The connection timeout the client ends up using with the negotiated session timeout
/// `session`: the configured one, unless it exceeds 3/5 of the session timeout (a server that
/// lowered the timeout we asked for), in which case the client falls back to 2/5 of it.
pub(crate) fn effective_connection_timeout(session: Duration, configured: Duration) -> Duration {
    if configured.is_zero() || configured > session * 3 / 5 {
        session * 2 / 5
    } else {
        configured
    }
}

/// How long after a disconnection the session may still be alive on the server, minus a
/// safety margin: the guard turns `Lost` then, before the server can expire the session and
/// hand the lock to someone else.
///
/// The client declares a connection dead after `connection` without hearing from the server,
/// checked every eighth of `connection`. The server's timer runs from the last request it
/// received, which was sent before the last reply we got; so when the client reports the
/// disconnection, at least `timeout − connection × 9/8` (less one round trip) remains before
/// the server may expire the session. We keep a margin of 3/20 of the timeout plus the usual
/// drift allowance (1 % + 2 ms) for a slow scheduler or network. With the client's default
/// connection timeout (2/5) that is 2/5 of the timeout minus the drift; with dlock's (1/4) it
/// is about 57 % of it.
pub(crate) fn lost_grace(timeout: Duration, connection: Duration) -> Duration {
    let detection = connection + connection / 8;
    let margin = timeout * 3 / 20;
    let drift = timeout / 100 + Duration::from_millis(2);
    timeout.saturating_sub(detection + margin + drift)
}

/// Why no server took a session: the client only says "no available hosts", so each host is
/// asked once more with a plain TCP connect, whose error names the cause (refused, timed out,
/// no route, unknown host). Runs only on this failure path.
async fn why_no_host(hosts: &[String]) -> String {
    const PROBE: Duration = Duration::from_secs(2);
    let mut causes = Vec::with_capacity(hosts.len());
    for host in hosts {
        let cause = match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(host.as_str()))
            .await
        {
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer to a TCP connect within {PROBE:?}"),
            // It accepts TCP now: it refused or dropped the ZooKeeper handshake.
            Ok(Ok(_)) => "accepts TCP but gave no session (not ZooKeeper, or not serving)".into(),
        };
        causes.push(format!("{host}: {cause}"));
    }
    format!("no server gave a session ({})", causes.join("; "))
}

/// Follows the session's state until it ends or the session is dropped.
///
/// A disconnection long enough that the guards were told `Lost` may still end in a reconnect
/// to the same session, whose ephemeral nodes are then still there: a lock nobody believes in
/// any more, keeping everyone else out until the guard is released or the process exits. Those
/// nodes are deleted on the reconnect.
async fn watch_session(
    client: Client,
    mut states: StateWatcher,
    grants: Arc<Mutex<Grants>>,
    grace: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut lost_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = sleep_until_opt(lost_at) => {
                lost_at = None;
                let mut g = lock(&grants);
                g.link = Link::Down { lost: true };
                for (m, _) in g.monitors.values() {
                    m.report_lost("disconnected from ZooKeeper for so long that the session may have expired");
                }
            }
            state = states.changed() => {
                tracing::debug!(%state, "ZooKeeper session state");
                let mut g = lock(&grants);
                match state {
                    SessionState::Disconnected => {
                        if matches!(g.link, Link::Up) {
                            lost_at = Some(Instant::now() + grace);
                            g.link = Link::Down { lost: false };
                            for (m, _) in g.monitors.values() {
                                m.report_unverifiable("disconnected from ZooKeeper");
                            }
                        }
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        lost_at = None;
                        // Same session, so its ephemeral nodes are still there. Guards already
                        // reported lost stay lost (that is sticky in LeaseMonitor), and their
                        // nodes go: nobody holds those locks any more.
                        g.link = Link::Up;
                        let orphans: Vec<u64> = g
                            .monitors
                            .iter()
                            .filter(|(_, (m, _))| m.state() == LockState::Lost)
                            .map(|(id, _)| *id)
                            .collect();
                        let paths: Vec<String> = orphans
                            .iter()
                            .filter_map(|id| g.monitors.remove(id))
                            .map(|(_, path)| path)
                            .collect();
                        for (m, _) in g.monitors.values() {
                            m.report_confirmed(None);
                        }
                        drop(g);
                        for path in paths {
                            let client = client.clone();
                            tokio::spawn(async move {
                                match client.delete(&path, None).await {
                                    Ok(()) => tracing::info!(node = %path, "deleted the node of a lock reported lost during the disconnection"),
                                    Err(e) => tracing::warn!(node = %path, error = %e, "could not delete the node of a lock reported lost; it goes when the session ends"),
                                }
                            });
                        }
                    }
                    SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                        g.link = Link::Ended;
                        for (m, _) in g.monitors.values() {
                            m.report_lost(match state {
                                SessionState::Expired => "the ZooKeeper session expired",
                                SessionState::AuthFailed => "ZooKeeper authentication failed",
                                _ => "the ZooKeeper session was closed",
                            });
                        }
                        g.monitors.clear();
                        return;
                    }
                }
            }
        }
    }
}

/// Every update under this lock is a single assignment or map operation, so a poisoned lock
/// still holds coherent data.
fn lock(m: &Mutex<Grants>) -> MutexGuard<'_, Grants> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_ends_before_the_server_can_expire_the_session() {
        for ms in [400u64, 2_000, 10_000, 40_000] {
            let t = Duration::from_millis(ms);
            for connection in [connection_timeout(t), t * 2 / 5] {
                let grace = lost_grace(t, connection);
                // Detection after the connection timeout plus one check tick: at least a
                // margin of 3/20 of the session timeout is left when the guard turns Lost.
                assert!(
                    connection + connection / 8 + grace <= t * 17 / 20,
                    "{t:?}/{connection:?}: {grace:?}"
                );
                assert!(
                    grace > t * 7 / 20,
                    "{t:?}/{connection:?}: {grace:?} is needlessly short"
                );
            }
            // The client's own default gives the grace dlock always used.
            let drift = t / 100 + Duration::from_millis(2);
            assert_eq!(lost_grace(t, t * 2 / 5), (t * 2 / 5).saturating_sub(drift));
        }
    }

    #[test]
    fn the_client_falls_back_to_two_fifths_when_the_configured_timeout_is_too_long() {
        let s = Duration::from_secs(10);
        assert_eq!(
            effective_connection_timeout(s, connection_timeout(s)),
            s / 4
        );
        assert_eq!(effective_connection_timeout(s, s), s * 2 / 5);
        assert_eq!(effective_connection_timeout(s, Duration::ZERO), s * 2 / 5);
    }
}

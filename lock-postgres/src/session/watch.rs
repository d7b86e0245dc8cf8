//! The session watch: the moment the server's connections end, every lock session is checked.
//!
//! A lock session's socket is read only while one of its statements runs (sqlx has no
//! background reader), so the FIN of a server that went away, or an RST, would sit unread
//! until the next periodic session check, `session_deadline / 3` later — long after the
//! server may have granted the lock to someone else. The watch is one more connection per
//! backend on which a read is always pending (sqlx's `PgListener`, listening on no channel:
//! its read returns only when the connection ends). When it ends, every lock session of the
//! backend is checked at once; a check on a dead socket fails at once and turns that
//! session's guards `Lost`, and a check on a live one is one cheap round trip.
//!
//! What it sees: whatever ends all of this client's connections to the server together — the
//! server stopping, crashing or restarting, a reset or close of the path (a proxy, a NAT, a
//! firewall resetting every flow). What it does not see: one session ending alone
//! (`pg_terminate_backend` of that session, a middlebox dropping one flow); those are still
//! found by the periodic checks. Nothing runs per lock statement, so acquire and release cost
//! what they cost without it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Inner, Session, lock};
use crate::config::PgConfig;

/// `application_name` of the watch connection (lock sessions are `dlock-lock-session`), so
/// an operator, or a test, can tell it from the connections that hold locks.
pub(crate) const WATCH_APP_NAME: &str = "dlock-session-watch";

/// The backend's watch over its lock sessions. Dropping it (with the backend) ends the watch
/// task and closes its connection.
pub(crate) struct SessionWatch {
    /// `None` with `session_watch=off`: nothing is registered or watched.
    shared: Option<Arc<Shared>>,
    /// Never sent: the task stops when this is dropped.
    _stop: Option<oneshot::Sender<()>>,
}

struct Shared {
    cfg: Arc<PgConfig>,
    /// Every lock session the backend opened that may still be alive.
    sessions: Mutex<Vec<Weak<Inner>>>,
    /// Told when a session is registered, for a task that waits for something to watch.
    registered: Notify,
}

/// A connection with a read always pending on it.
pub(crate) struct Sentinel {
    /// The pool `PgListener` needs (one connection); kept so the connection stays ours.
    _pool: PgPool,
    listener: PgListener,
}

/// How opening a watch connection went.
type Opened = Result<Sentinel, String>;

/// A watch connection being opened.
pub(crate) type OpenFuture = Pin<Box<dyn Future<Output = Opened> + Send>>;

/// The first watch connection, opened beside the shared lock session: done, or still being
/// opened (the watch task then finishes it).
pub(crate) enum Opening {
    /// The watch is off.
    Off,
    /// Opened (or failed) before the lock session was open.
    Done(Opened),
    /// Still connecting when the lock session was open.
    Pending(OpenFuture),
}

impl SessionWatch {
    /// Starts opening the watch connection; poll it beside the first lock session and hand
    /// it to [`SessionWatch::start`] whether or not it has finished.
    /// `None` when the watch is off.
    pub fn connect(cfg: &Arc<PgConfig>) -> Option<OpenFuture> {
        let cfg = Arc::clone(cfg);
        cfg.session_watch
            .then(|| Box::pin(async move { open(&cfg).await }) as OpenFuture)
    }

    /// Starts watching with `first`, the watch connection [`SessionWatch::connect`] began.
    pub fn start(cfg: Arc<PgConfig>, first: Opening) -> SessionWatch {
        let off = SessionWatch {
            shared: None,
            _stop: None,
        };
        if matches!(first, Opening::Off) || !cfg.session_watch {
            return off;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return off;
        };
        let shared = Arc::new(Shared {
            cfg,
            sessions: Mutex::new(Vec::new()),
            registered: Notify::new(),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        rt.spawn(run(Arc::clone(&shared), first, stop_rx));
        SessionWatch {
            shared: Some(shared),
            _stop: Some(stop_tx),
        }
    }

    /// Puts a newly opened lock session under the watch.
    pub fn register(&self, session: &Session) {
        let Some(shared) = &self.shared else { return };
        {
            let mut sessions = lock(&shared.sessions);
            sessions.retain(|w| w.strong_count() > 0);
            sessions.push(Arc::downgrade(&session.inner));
        }
        // A permit is stored if the task is not waiting yet, so the news is never missed.
        shared.registered.notify_one();
    }
}

impl Shared {
    /// The registered sessions that are still alive.
    fn live(&self) -> Vec<Session> {
        let mut sessions = lock(&self.sessions);
        let mut live = Vec::with_capacity(sessions.len());
        sessions.retain(|w| match w.upgrade() {
            Some(inner) if inner.alive.load(Ordering::Acquire) => {
                live.push(Session { inner });
                true
            }
            _ => false,
        });
        live
    }

    /// Checks every live session, each on its own task: a session busy with a statement is
    /// checked after it (and that statement meets a dead socket by itself), without holding
    /// up the others.
    fn check_all(&self, why: &str) {
        let live = self.live();
        tracing::debug!(sessions = live.len(), why, "checking every lock session");
        for s in live {
            tokio::spawn(async move {
                let _ = s.check().await;
            });
        }
    }
}

/// The watch task: keeps a watch connection while there are lock sessions to watch, and
/// checks them all whenever that connection ends or cannot be opened.
async fn run(shared: Arc<Shared>, first: Opening, mut stop: oneshot::Receiver<()>) {
    // Attempts to connect are at least this far apart (unless a lock session opened in
    // between), so a server that refuses the watch but not the lock sessions sees no more
    // of it than of the periodic checks and the session opens.
    let gap = shared.cfg.session_deadline / 3;
    let mut last_attempt = Instant::now();
    let mut opened = match first {
        Opening::Off => return,
        Opening::Done(r) => r,
        Opening::Pending(f) => {
            let r = tokio::select! {
                r = f => r,
                _ = &mut stop => return,
            };
            if r.is_ok() {
                // The first lock session was open before the watch: it may have ended in
                // between.
                shared.check_all("the session watch connected after the first lock session");
            }
            r
        }
    };
    loop {
        match opened {
            Ok(mut sentinel) => {
                let why = tokio::select! {
                    why = read_until_end(&mut sentinel.listener) => why,
                    _ = &mut stop => return,
                };
                drop(sentinel);
                shared.check_all(&why);
            }
            Err(e) => shared.check_all(&format!("the session watch could not connect: {e}")),
        }
        // Nothing to watch: no connection (after a server restart, the next lock session to
        // open brings the watch back).
        let mut opened_since = false;
        while shared.live().is_empty() {
            tokio::select! {
                () = shared.registered.notified() => opened_since = true,
                _ = &mut stop => return,
            }
        }
        // A lock session opened since the last attempt shows the server takes connections
        // again (after a restart): no need to wait out the gap.
        if !opened_since {
            tokio::select! {
                () = tokio::time::sleep_until(last_attempt + gap) => {}
                () = shared.registered.notified() => {}
                _ = &mut stop => return,
            }
        }
        last_attempt = Instant::now();
        // sqlx's pool (which `PgListener` needs) retries a refused connection until
        // `connect_timeout`: while the server is down this waits for it to come back.
        opened = tokio::select! {
            r = open(&shared.cfg) => r,
            _ = &mut stop => return,
        };
        if opened.is_ok() {
            // A session that ended while nothing watched would otherwise wait for its
            // periodic check.
            shared.check_all("the session watch reconnected");
        }
    }
}

/// Reads the watch connection until it ends; says how it ended.
async fn read_until_end(listener: &mut PgListener) -> String {
    loop {
        match listener.try_recv().await {
            // Nothing listens on any channel; a notification would change nothing.
            Ok(Some(_)) => continue,
            // The connection ended (EOF, abort); with `eager_reconnect(false)` the listener
            // does not reconnect by itself, and it is not asked again.
            Ok(None) => return "the session-watch connection ended".to_string(),
            // A reset (ECONNRESET is not among the errors the listener treats as the end) or
            // anything else that breaks the connection.
            Err(e) => return format!("the session-watch connection failed: {e}"),
        }
    }
}

/// Opens a watch connection, within `connect_timeout`.
async fn open(cfg: &PgConfig) -> Result<Sentinel, String> {
    let connect = async {
        // Several hosts: the one the lock sessions pick now (the primary, after a failover
        // the promoted one); the probe connection that found it is closed.
        let options = if cfg.hosts.len() > 1 {
            let (conn, options) = crate::connect::connect(cfg, Some(WATCH_APP_NAME))
                .await
                .map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
            let _ = sqlx::Connection::close(conn).await;
            options
        } else {
            cfg.connect.clone().application_name(WATCH_APP_NAME)
        };
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            .acquire_timeout(cfg.connect_timeout)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        // The pool is ours alone and never closed while the listener reads.
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        Ok::<_, sqlx::Error>(Sentinel {
            _pool: pool,
            listener,
        })
    };
    match tokio::time::timeout(cfg.connect_timeout * cfg.hosts.len() as u32, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {:?}", cfg.connect_timeout)),
    }
}

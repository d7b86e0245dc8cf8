//! The session watch: the moment the server's connections end, every lock session is checked.
//!
//! A lock session's socket is read only while one of its statements runs (sqlx has no
//! background reader), so the FIN or RST of a server that went away would sit unread until
//! the session's next periodic check, up to `session_deadline / 3` later — while a restarted
//! server, or a promoted replica, may already have granted the lock to someone else
//! (measured before the watch: the holder learned 1154–1170 ms after the next grant in a
//! primary failover). So the backend keeps one more connection on which a statement is
//! always running (`DO SLEEP(600)`, again and again): its read returns only when the
//! statement ends or the connection does. When the connection ends, every lock session of
//! the backend is checked at once, each on its own task; a check on a dead socket fails at
//! once and turns that session's guards `Lost`, a check on a live one is one round trip.
//!
//! What it sees: whatever ends all of this client's connections to the server together — the
//! server stopping, crashing or restarting, a failover (the primary's connections end), a
//! reset of the path. What it does not see: one session ending alone (`KILL` of that
//! connection, its `wait_timeout`), which the periodic checks find, nor a partition, which
//! sends nothing (the session deadline decides there). The watch connects only while there
//! are lock sessions, to the host the lock sessions pick (after a failover, the promoted
//! primary); `session_watch=off` turns it off.

use std::sync::{Arc, Mutex};

use sqlx::Executor;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::config::MySqlConfig;
use crate::session::{Session, WeakSession, connect, lock};

/// The backend's watch over its lock sessions. Dropping it (with the backend) ends the watch
/// task and closes its connection.
pub(crate) struct SessionWatch {
    /// `None` with `session_watch=off`.
    shared: Option<Arc<Shared>>,
    /// Never sent: the task stops when this is dropped.
    _stop: Option<oneshot::Sender<()>>,
}

struct Shared {
    cfg: Arc<MySqlConfig>,
    /// Every lock session the backend opened that may still be alive.
    sessions: Mutex<Vec<WeakSession>>,
    /// Told when a session is registered, for a task that waits for something to watch.
    registered: Notify,
}

impl SessionWatch {
    /// Starts the watch task (nothing with `session_watch=off` or outside a runtime).
    pub fn start(cfg: Arc<MySqlConfig>) -> SessionWatch {
        let off = SessionWatch {
            shared: None,
            _stop: None,
        };
        if !cfg.session_watch {
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
        rt.spawn(run(Arc::clone(&shared), stop_rx));
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
            sessions.retain(|w| w.upgrade().is_some());
            sessions.push(session.downgrade());
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
            Some(s) => {
                live.push(s);
                true
            }
            None => false,
        });
        live
    }

    /// Checks every live session, each on its own task: a session busy with a statement is
    /// checked after it (and that statement meets a dead socket by itself).
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

/// Keeps a watch connection while there are lock sessions, and checks them all whenever it
/// ends, cannot be opened, or is opened again.
async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    // Attempts are at least this far apart unless a lock session opened in between (which
    // shows the server takes connections), so a server that refuses the watch sees no more
    // of it than of the periodic checks.
    let gap = shared.cfg.session_deadline / 3;
    let mut last_attempt: Option<Instant> = None;
    loop {
        let mut opened_since = false;
        while shared.live().is_empty() {
            tokio::select! {
                () = shared.registered.notified() => opened_since = true,
                _ = &mut stop => return,
            }
        }
        if let (Some(last), false) = (last_attempt, opened_since) {
            tokio::select! {
                () = tokio::time::sleep_until(last + gap) => {}
                () = shared.registered.notified() => {}
                _ = &mut stop => return,
            }
        }
        last_attempt = Some(Instant::now());
        let opened = tokio::select! {
            r = connect(&shared.cfg) => r,
            _ = &mut stop => return,
        };
        let mut conn = match opened {
            Ok((conn, _)) => conn,
            Err(e) => {
                shared.check_all(&format!("the session watch could not connect: {e}"));
                continue;
            }
        };
        // A session that ended while nothing watched (before the first watch connection, or
        // between two) would otherwise wait for its periodic check.
        shared.check_all("the session watch connected");
        let why = loop {
            tokio::select! {
                r = conn.execute("DO SLEEP(600)") => {
                    if let Err(e) = r {
                        break format!("the session-watch connection ended: {e}");
                    }
                }
                _ = &mut stop => return,
            }
        };
        drop(conn);
        shared.check_all(&why);
    }
}

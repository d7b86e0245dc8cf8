//! etcd's own lock service (`v3lockpb.Lock` / `Unlock`) through etcd-client, on leases kept
//! alive the way etcd's Go `concurrency.Session` keeps its lease alive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_peer_proto::{BoxFuture, Held, Peer};
use etcd_client::{Client, LockOptions};
use tokio::task::JoinHandle;

/// How long `try` lets a `Lock` call wait before calling the lock busy (the service has no
/// try; a cancelled `Lock` withdraws its key on the server).
const TRY_DEADLINE: Duration = Duration::from_millis(100);

/// One lease with its keep-alive task. Dropped (a cancelled acquisition), its keep-alive
/// stops and the lease runs out within its ttl, taking any key it still has with it.
struct Session {
    id: i64,
    ttl_s: i64,
    keeper: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

pub struct EtcdPeer {
    client: Client,
    idle: Arc<Mutex<Vec<Session>>>,
}

impl EtcdPeer {
    /// `http://h:p[,http://h2:p2…]` (the scheme may be left out).
    pub async fn connect(url: &str) -> Result<Self, String> {
        let endpoints: Vec<String> = url
            .split(',')
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let client = Client::connect(endpoints, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(EtcdPeer {
            client,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// An idle session with this ttl, or a new lease kept alive every ttl/3.
    async fn session(&self, ttl: Duration) -> Result<Session, String> {
        let ttl_s = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let reuse = {
            let mut idle = self.idle.lock().unwrap();
            idle.iter()
                .position(|s| s.ttl_s == ttl_s)
                .map(|i| idle.swap_remove(i))
        };
        if let Some(s) = reuse {
            return Ok(s);
        }
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(ttl_s, None)
            .await
            .map_err(|e| e.to_string())?;
        let id = lease.id();
        let (mut keeper, mut stream) = client
            .lease_keep_alive(id)
            .await
            .map_err(|e| e.to_string())?;
        let period = Duration::from_millis((ttl_s as u64 * 1000 / 3).max(100));
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match stream.message().await {
                    Ok(Some(resp)) if resp.ttl() > 0 => {}
                    _ => return,
                }
            }
        });
        Ok(Session { id, ttl_s, keeper })
    }

    fn put_back(idle: &Mutex<Vec<Session>>, session: Session) {
        idle.lock().unwrap().push(session);
    }
}

struct EtcdHeld {
    client: Client,
    key: Vec<u8>,
    session: Session,
    idle: Arc<Mutex<Vec<Session>>>,
}

impl Held for EtcdHeld {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let EtcdHeld {
                mut client,
                key,
                session,
                idle,
            } = *self;
            let r = client.unlock(key).await.map_err(|e| e.to_string());
            EtcdPeer::put_back(&idle, session);
            r.map(|_| ())
        })
    }
}

impl Peer for EtcdPeer {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>> {
        Box::pin(async move {
            let session = self.session(ttl).await?;
            let mut client = self.client.clone();
            let opts = Some(LockOptions::new().with_lease(session.id));
            let got = if wait {
                client.lock(name, opts).await.map(Some)
            } else {
                match tokio::time::timeout(TRY_DEADLINE, client.lock(name, opts)).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Ok(None),
                }
            };
            match got {
                Ok(Some(resp)) => Ok(Some(Box::new(EtcdHeld {
                    client,
                    key: resp.key().to_vec(),
                    session,
                    idle: self.idle.clone(),
                }) as Box<dyn Held>)),
                Ok(None) => {
                    // Not reused: the server may still be withdrawing the cancelled request's
                    // key, and a later Lock on the same lease would count as the same
                    // acquisition and lose its key to that cleanup. Revoked instead.
                    let _ = client.lease_revoke(session.id).await;
                    Ok(None)
                }
                Err(e) => {
                    Self::put_back(&self.idle, session);
                    Err(e.to_string())
                }
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let sessions: Vec<Session> = self.idle.lock().unwrap().drain(..).collect();
            let mut client = self.client.clone();
            for s in sessions {
                let _ = client.lease_revoke(s.id).await;
            }
        })
    }
}

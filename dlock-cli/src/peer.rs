//! `dlock peer URL`: dlock itself behind the peer-harness line protocol (`peers/README.md`),
//! so the comparison times dlock and each peer library with the same driver and the same
//! in-process clock readings.

use std::sync::Arc;
use std::time::Duration;

use dlock::{Backend, Guard, LockName, LockOptions, Wait};
use dlock_peer_proto::{BoxFuture, Held, Peer};

/// dlock with its defaults (auto-renew, its own wake-ups); only the ttl comes from the driver,
/// and the mode (`--shared`, `--permits N`) from the command line.
struct DlockPeer {
    backend: Arc<dyn Backend>,
    base: LockOptions,
}

struct DlockHeld(Guard);

impl Held for DlockHeld {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            match self.0.release().await {
                Ok(true) => Ok(()),
                Ok(false) => Err("the lock was no longer ours at release".into()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Peer for DlockPeer {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>> {
        Box::pin(async move {
            let name = LockName::new(name).map_err(|e| e.to_string())?;
            let opts = self.base.clone().with_ttl(ttl).with_wait(if wait {
                Wait::Forever
            } else {
                Wait::No
            });
            match self.backend.acquire(&name, &opts).await {
                Ok(guard) => Ok(Some(Box::new(DlockHeld(guard)) as Box<dyn Held>)),
                Err(e) if e.kind() == dlock::ErrorKind::Contended => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.backend.close()
    }
}

pub(crate) async fn serve(args: &crate::opt::PeerArgs) -> i32 {
    let mut base = LockOptions::new();
    if args.shared {
        base = base.with_mode(dlock::LockMode::Shared);
    }
    if let Some(n) = args.permits {
        base = base.with_permits(n);
    }
    let backend = match dlock::connect(&args.url).await {
        Ok(b) => b,
        Err(e) => return dlock_peer_proto::unavailable("dlock", &e.to_string()),
    };
    if let Err(e) = base.check_for("dlock", &backend.capabilities()) {
        return dlock_peer_proto::unavailable("dlock", &e.to_string());
    }
    let peer = Arc::new(DlockPeer { backend, base });
    dlock_peer_proto::serve(peer, "dlock", env!("CARGO_PKG_VERSION")).await
}

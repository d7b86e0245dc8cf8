//! Waking waiters: one pub/sub connection per endpoint, shared by every waiter of this
//! process, subscribed to the channels (named like the lock keys) that someone waits on.
//!
//! A waiter registers an [`Interest`] *before* it tries the lock and makes sure the channel
//! is subscribed; a release that lands after the subscription confirmed is seen either by the
//! try or by the wake-up, never by neither. When the pub/sub connection dies every waiter is
//! woken, re-checks, and subscribes again on a new connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use redis::aio::{PubSub, PubSubSink};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Endpoint;
use crate::node::dial;

#[derive(Default)]
struct Table {
    channels: HashMap<Vec<u8>, Channel>,
    /// The epoch of the pub/sub connection that is up, if one is.
    live: Option<u64>,
    next_epoch: u64,
}

struct Channel {
    watchers: usize,
    /// Bumped on every message and when the connection is lost.
    tx: watch::Sender<u64>,
    /// The connection epoch the channel is subscribed on.
    subscribed_in: Option<u64>,
}

struct Subscription {
    sink: PubSubSink,
    reader: JoinHandle<()>,
    epoch: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The shared pub/sub connection of one endpoint.
pub(crate) struct Notifier {
    endpoint: Endpoint,
    /// Serialises (un)subscribing and connecting, so SUBSCRIBE and UNSUBSCRIBE of one
    /// channel reach the server in the order the table decided them.
    ops: tokio::sync::Mutex<Option<Subscription>>,
    table: Arc<Mutex<Table>>,
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks connection `epoch` as gone and wakes everyone waiting on it.
fn connection_lost(table: &Mutex<Table>, epoch: u64) {
    let mut t = lock(table);
    if t.live != Some(epoch) {
        return;
    }
    t.live = None;
    for ch in t.channels.values_mut() {
        ch.subscribed_in = None;
        ch.tx.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl Notifier {
    pub fn new(endpoint: Endpoint) -> Notifier {
        Notifier {
            endpoint,
            ops: tokio::sync::Mutex::new(None),
            table: Arc::default(),
        }
    }

    /// Registers interest in `channel`; call [`Interest::subscribe`] before trying the lock.
    pub fn interest(self: &Arc<Self>, channel: &[u8]) -> Interest {
        let mut t = lock(&self.table);
        let ch = t
            .channels
            .entry(channel.to_vec())
            .or_insert_with(|| Channel {
                watchers: 0,
                tx: watch::channel(0).0,
                subscribed_in: None,
            });
        ch.watchers += 1;
        Interest {
            notifier: Arc::clone(self),
            channel: channel.to_vec(),
            rx: ch.tx.subscribe(),
        }
    }

    async fn connect(&self, epoch: u64) -> Result<Subscription, String> {
        let stream = dial(&self.endpoint).await.map_err(|e| e.to_string())?;
        let pubsub = PubSub::new(&self.endpoint.info, stream)
            .await
            .map_err(|e| e.to_string())?;
        let (sink, mut messages) = pubsub.split();
        let table = Arc::clone(&self.table);
        let reader = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let Ok(channel) = msg.get_channel::<Vec<u8>>() else {
                    continue;
                };
                if let Some(ch) = lock(&table).channels.get(&channel) {
                    ch.tx.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
            connection_lost(&table, epoch);
        });
        Ok(Subscription {
            sink,
            reader,
            epoch,
        })
    }

    async fn subscribe(&self, channel: &[u8]) -> Result<(), String> {
        {
            let t = lock(&self.table);
            let subscribed = t.channels.get(channel).and_then(|c| c.subscribed_in);
            if subscribed.is_some() && subscribed == t.live {
                return Ok(());
            }
        }
        let timeout = self.endpoint.timeout;
        let mut ops = self.ops.lock().await;
        if ops.as_ref().is_some_and(|s| s.reader.is_finished()) {
            *ops = None;
        }
        if ops.is_none() {
            let epoch = {
                let mut t = lock(&self.table);
                t.next_epoch += 1;
                t.next_epoch
            };
            let sub = match tokio::time::timeout(timeout, self.connect(epoch)).await {
                Ok(Ok(sub)) => sub,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("no pub/sub connection within {timeout:?}")),
            };
            lock(&self.table).live = Some(epoch);
            *ops = Some(sub);
        }
        let sub = ops.as_mut().expect("connected above");
        let epoch = sub.epoch;
        {
            let mut t = lock(&self.table);
            if t.live != Some(epoch) {
                return Err("the pub/sub connection closed".to_string());
            }
            let Some(ch) = t.channels.get_mut(channel) else {
                return Ok(());
            };
            if ch.subscribed_in == Some(epoch) {
                return Ok(());
            }
            // Counted as subscribed from the moment the command may have been sent, so that a
            // later cleanup unsubscribes it.
            ch.subscribed_in = Some(epoch);
        }
        let outcome = tokio::time::timeout(timeout, sub.sink.subscribe(channel)).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            failed => {
                *ops = None;
                connection_lost(&self.table, epoch);
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no reply to SUBSCRIBE within {timeout:?}"),
                })
            }
        }
    }

    /// Drops the channel once nobody waits on it any more.
    async fn cleanup(&self, channel: Vec<u8>) {
        let mut ops = self.ops.lock().await;
        let unsubscribe = {
            let mut t = lock(&self.table);
            match t.channels.get(&channel) {
                Some(ch) if ch.watchers == 0 => {
                    let was = ch.subscribed_in;
                    t.channels.remove(&channel);
                    was.is_some() && was == t.live
                }
                _ => false,
            }
        };
        if let (true, Some(sub)) = (unsubscribe, ops.as_mut()) {
            let timeout = self.endpoint.timeout;
            if !matches!(
                tokio::time::timeout(timeout, sub.sink.unsubscribe(&channel)).await,
                Ok(Ok(()))
            ) {
                let epoch = sub.epoch;
                *ops = None;
                connection_lost(&self.table, epoch);
            }
        }
    }
}

/// A waiter's registration on one channel of one endpoint.
pub(crate) struct Interest {
    notifier: Arc<Notifier>,
    channel: Vec<u8>,
    rx: watch::Receiver<u64>,
}

impl Interest {
    /// Makes sure the channel is subscribed on a live connection (a no-op when it is).
    /// `Err` says why not; the waiter then relies on its fallback timer.
    pub async fn subscribe(&self) -> Result<(), String> {
        self.notifier.subscribe(&self.channel).await
    }

    /// Forgets the wake-ups seen so far: call right before trying the lock.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Completes at the first message (or connection loss) since [`Interest::mark_seen`].
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let last = {
            let mut t = lock(&self.notifier.table);
            match t.channels.get_mut(&self.channel) {
                Some(ch) => {
                    ch.watchers = ch.watchers.saturating_sub(1);
                    ch.watchers == 0
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let notifier = Arc::clone(&self.notifier);
                let channel = std::mem::take(&mut self.channel);
                rt.spawn(async move { notifier.cleanup(channel).await });
            }
            Err(_) => {
                lock(&self.notifier.table).channels.remove(&self.channel);
            }
        }
    }
}

//! The state cell of one grant: what [`LeaseMonitor`](crate::LeaseMonitor) writes and
//! [`StateWatch`](crate::StateWatch) reads.
//!
//! It behaves like a `tokio::sync::watch` channel (a value, a version, senders and
//! receivers, closed when the last sender goes), but a change wakes anyone only when a
//! receiver exists. Most grants are short holds that nobody watches; for them tokio's channel
//! cost sixteen mutex round trips per acquire + release (its eight-way notifier, once for the
//! release and once when the last sender went), and this cell costs none.
//!
//! Why no wake-up is lost: a writer bumps the version (under the value's lock) and then reads
//! the receiver count; a waiting receiver exists before it waits, creates its `Notified`
//! future (which counts every later `notify_waiters`), and only then reads the version. With
//! sequentially consistent atomics either the writer sees the receiver and notifies, or the
//! receiver sees the new version and does not wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct Cell<T> {
    value: Mutex<T>,
    version: AtomicU64,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    changed: Notify,
}

impl<T> Cell<T> {
    fn value(&self) -> MutexGuard<'_, T> {
        // Every update is an assignment made under the lock: a poisoned lock still holds a
        // coherent value.
        self.value.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn announce(&self) {
        if self.receivers.load(SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// The writing side. Clones write to the same cell; the cell closes when the last goes.
pub(crate) struct Sender<T> {
    cell: Arc<Cell<T>>,
}

impl<T> Sender<T> {
    pub(crate) fn new(value: T) -> Self {
        Sender {
            cell: Arc::new(Cell {
                value: Mutex::new(value),
                version: AtomicU64::new(0),
                senders: AtomicUsize::new(1),
                receivers: AtomicUsize::new(0),
                changed: Notify::new(),
            }),
        }
    }

    /// Reads the value.
    pub(crate) fn get<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.cell.value())
    }

    /// Lets `f` change the value; `f` says whether it did, and only then are receivers told.
    pub(crate) fn modify(&self, f: impl FnOnce(&mut T) -> bool) -> bool {
        let changed = {
            let mut value = self.cell.value();
            let changed = f(&mut value);
            if changed {
                self.cell.version.fetch_add(1, SeqCst);
            }
            changed
        };
        if changed {
            self.cell.announce();
        }
        changed
    }

    /// A receiver that has seen the current value.
    pub(crate) fn subscribe(&self) -> Receiver<T> {
        self.cell.receivers.fetch_add(1, SeqCst);
        Receiver {
            seen: self.cell.version.load(SeqCst),
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.cell.senders.fetch_add(1, SeqCst);
        Sender {
            cell: Arc::clone(&self.cell),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.cell.senders.fetch_sub(1, SeqCst) == 1 {
            self.cell.announce();
        }
    }
}

/// The reading side.
pub(crate) struct Receiver<T> {
    cell: Arc<Cell<T>>,
    /// The version this receiver has seen.
    seen: u64,
}

impl<T> Receiver<T> {
    /// Reads the value (without marking it seen).
    pub(crate) fn get<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.cell.value())
    }

    /// Waits for a version this receiver has not seen, then reads it with `f`. `None`: every
    /// sender is gone and nothing new came.
    pub(crate) async fn changed<R>(&mut self, f: impl Fn(&T) -> R) -> Option<R> {
        self.wait_for(|_, fresh| fresh, f).await
    }

    /// Waits until `ready(value, fresh)` — `fresh` meaning the version is one this receiver
    /// had not seen — and reads the value with `f` then; checks the current value first.
    /// `None`: every sender is gone and the value never became ready.
    pub(crate) async fn wait_for<R>(
        &mut self,
        ready: impl Fn(&T, bool) -> bool,
        f: impl Fn(&T) -> R,
    ) -> Option<R> {
        loop {
            let notified = self.cell.changed.notified();
            {
                let value = self.cell.value();
                let version = self.cell.version.load(SeqCst);
                let fresh = version != self.seen;
                self.seen = version;
                if ready(&value, fresh) {
                    return Some(f(&value));
                }
            }
            if self.cell.senders.load(SeqCst) == 0 {
                // Closed. The last sender may have made one more change after the value was
                // read above (and then gone): look at it before giving up.
                if self.cell.version.load(SeqCst) != self.seen {
                    continue;
                }
                return None;
            }
            notified.await;
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.cell.receivers.fetch_add(1, SeqCst);
        Receiver {
            cell: Arc::clone(&self.cell),
            seen: self.seen,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.cell.receivers.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_receiver_sees_each_change_and_the_close() {
        let tx = Sender::new(0u32);
        let mut rx = tx.subscribe();
        // The receiver acknowledges each value it read, and the writer changes the value
        // again only then (a change may replace one not read yet, as in tokio's channel;
        // this test counts them).
        let (ack, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let waiter = tokio::spawn(async move {
            while let Some(v) = rx.changed(|v| *v).await {
                ack.send(v).unwrap();
            }
        });
        let mut seen = Vec::new();
        for v in 1..=3 {
            assert!(tx.modify(|x| {
                *x = v;
                true
            }));
            let read = tokio::time::timeout(Duration::from_secs(5), acks.recv()).await;
            seen.push(read.expect("the change woke the receiver").unwrap());
        }
        assert!(!tx.modify(|_| false), "an unchanged value is not a change");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the close wakes the receiver")
            .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert!(acks.recv().await.is_none(), "nothing after the close");
    }

    /// A change made by a sender racing a receiver that is just starting to wait is never
    /// missed, also when that sender is the last and goes right after (run many times on a
    /// multi-thread runtime).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_change_is_missed_by_a_receiver_that_starts_waiting() {
        for round in 0..4000 {
            let tx = Sender::new(false);
            let mut rx = tx.subscribe();
            let waiter = tokio::spawn(async move { rx.wait_for(|v, _| *v, |v| *v).await });
            let last = round % 2 == 0;
            let writer = tokio::spawn(async move {
                tx.modify(|v| {
                    *v = true;
                    true
                });
                // Every other round the writer is the last sender and goes at once.
                (!last).then_some(tx)
            });
            let tx = writer.await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("the change woke the receiver")
                .unwrap();
            assert_eq!(got, Some(true), "round {round}");
            drop(tx);
        }
    }

    #[tokio::test]
    async fn counts_follow_clones_and_drops() {
        let tx = Sender::new(1u8);
        let tx2 = tx.clone();
        let rx = tx.subscribe();
        let rx2 = rx.clone();
        assert_eq!(tx.cell.senders.load(SeqCst), 2);
        assert_eq!(tx.cell.receivers.load(SeqCst), 2);
        drop((rx, rx2, tx2));
        assert_eq!(tx.cell.senders.load(SeqCst), 1);
        assert_eq!(tx.cell.receivers.load(SeqCst), 0);
        assert_eq!(tx.get(|v| *v), 1);
    }
}

package dev.dlock.peer;

import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.ExponentialBackoffRetry;

/**
 * Apache Curator's recipes on ZooKeeper: {@code curator-mutex} (InterProcessMutex at
 * {@code /dlock-peers/NAME}) and {@code curator-leader} (LeaderSelector at
 * {@code /dlock-peers-leader/NAME}). One CuratorFramework client (one ZooKeeper session) per
 * harness process, built as Curator's documentation shows: the connect string, an
 * ExponentialBackoffRetry(1000, 3), and the session timeout = DLOCK_PEER_SESSION_MS (the
 * comparison's ttl; 2 s without it) — a lock is an ephemeral node, so the session timeout is
 * how long a dead holder keeps it. Everything else is Curator's default (15 s connection
 * timeout).
 */
final class CuratorPeer implements LockPeer {

    /** How long a leader "try" waits for takeLeadership before it answers busy. */
    static final long LEADER_TRY_MS = 100;

    private final CuratorFramework client;
    private final boolean leader;
    private final String version;

    private CuratorPeer(CuratorFramework client, boolean leader) {
        this.client = client;
        this.leader = leader;
        this.version = Versions.tag("curator", "org.apache.curator", "curator-recipes", InterProcessMutex.class)
                + "+zookeeper-" + Versions.of("org.apache.zookeeper", "zookeeper", org.apache.zookeeper.ZooKeeper.class);
    }

    static LockPeer mutex(String url) throws Exception {
        return new CuratorPeer(connect(url), false);
    }

    static LockPeer leader(String url) throws Exception {
        return new CuratorPeer(connect(url), true);
    }

    static CuratorFramework connect(String hosts) throws Exception {
        if (hosts.contains("://")) {
            throw new IllegalArgumentException("want host:port[,host:port…], not a URL: " + hosts);
        }
        int sessionMs = Math.toIntExact(Main.sessionMillis());
        CuratorFramework c = CuratorFrameworkFactory.builder()
                .connectString(hosts)
                .sessionTimeoutMs(sessionMs)
                .retryPolicy(new ExponentialBackoffRetry(1000, 3))
                .build();
        c.start();
        try {
            if (!c.blockUntilConnected(10, TimeUnit.SECONDS)) {
                throw new IllegalStateException("no ZooKeeper session with " + hosts + " within 10 s");
            }
            // One request: the server answers (a session alone proves little with several hosts).
            c.checkExists().forPath("/");
        } catch (Exception | Error e) {
            c.close();
            throw e;
        }
        return c;
    }

    @Override
    public String version() {
        return version;
    }

    @Override
    public Held acquire(String name, long ttlMs, boolean wait) throws Exception {
        if (leader) {
            Leadership l = new Leadership(client, "/dlock-peers-leader/" + name);
            return l.campaign(wait ? -1 : LEADER_TRY_MS) ? l : null;
        }
        return hold(new InterProcessMutex(client, "/dlock-peers/" + name), wait);
    }

    /**
     * Takes {@code m} (blocking with {@code wait}, else one attempt: {@code null} when busy)
     * and hands it out as a {@link Held}.
     */
    static Held hold(InterProcessMutex m, boolean wait) throws Exception {
        if (wait) {
            m.acquire();
        } else if (!m.acquire(0, TimeUnit.MILLISECONDS)) {
            return null;
        }
        return new Held() {
            @Override
            public void release() throws Exception {
                m.release();
            }

            @Override
            public void releaseAtExit() {
                // An InterProcessMutex belongs to the thread that acquired it; at exit the
                // session's close (LockPeer.close) deletes its ephemeral node instead.
            }
        };
    }

    @Override
    public Worker worker(String name, long ttlMs) {
        if (leader) {
            return new LeaderWorker(client, "/dlock-peers-leader/" + name);
        }
        return worker(new InterProcessMutex(client, "/dlock-peers/" + name));
    }

    /** A throughput worker on one mutex (an InterProcessMutex, or a read or write lock). */
    static Worker worker(InterProcessMutex m) {
        return new Worker() {
            @Override
            public boolean lock(long deadlineNanos) throws Exception {
                return m.acquire(LockPeer.remainingNanos(deadlineNanos), TimeUnit.NANOSECONDS);
            }

            @Override
            public void unlock() throws Exception {
                m.release();
            }
        };
    }

    @Override
    public void close() {
        client.close();
    }

    /**
     * One LeaderSelector campaign: start, wait until takeLeadership is called; release makes
     * takeLeadership return, lets the selector's thread give up the leader node, and closes.
     * The selector runs on an executor of ours (one thread, as the default one), so that
     * release can wait for that thread to finish instead of interrupting it mid-delete.
     */
    static final class Leadership implements Held {
        private static final int WAITING = 0;
        private static final int LEADER = 1;
        private static final int CANCELLED = 2;

        private final ExecutorService exec = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "leader-selector");
            t.setDaemon(true);
            return t;
        });
        private final AtomicInteger state = new AtomicInteger(WAITING);
        private final Semaphore elected = new Semaphore(0);
        private final Semaphore resign = new Semaphore(0);
        private final LeaderSelector selector;

        Leadership(CuratorFramework client, String path) {
            // LeaderSelectorListenerAdapter: Curator's default reaction to SUSPENDED/LOST
            // (cancel leadership by interrupting takeLeadership).
            selector = new LeaderSelector(client, path, exec, new LeaderSelectorListenerAdapter() {
                @Override
                public void takeLeadership(CuratorFramework c) throws Exception {
                    if (!state.compareAndSet(WAITING, LEADER)) {
                        return; // a try that gave up: hand leadership straight back
                    }
                    elected.release();
                    resign.acquire(); // held until release(); an interrupt ends it too
                }
            });
        }

        /** Waits forever ({@code waitMs} < 0) or waitMs for leadership; false: not leader, closed. */
        boolean campaign(long waitMs) throws Exception {
            selector.start();
            try {
                if (waitMs < 0) {
                    elected.acquire();
                    return true;
                }
                if (elected.tryAcquire(waitMs, TimeUnit.MILLISECONDS)) {
                    return true;
                }
            } catch (InterruptedException e) {
                giveUp();
                throw e;
            }
            if (!state.compareAndSet(WAITING, CANCELLED)) {
                return true; // elected just as the wait ran out
            }
            giveUp();
            return false;
        }

        private void giveUp() throws InterruptedException {
            state.set(CANCELLED);
            resign.release();
            selector.close(); // interrupts the waiting mutex acquire; it deletes its node
            exec.shutdown();
            exec.awaitTermination(10, TimeUnit.SECONDS);
        }

        @Override
        public void release() throws InterruptedException {
            resign.release(); // takeLeadership returns; the selector deletes the leader node
            exec.shutdown();
            // Without autoRequeue the selector's task ends once the node is deleted.
            if (!exec.awaitTermination(10, TimeUnit.SECONDS)) {
                System.err.println("dlock-peer-java: leader selector still busy 10 s after resigning");
            }
            selector.close();
        }
    }

    /**
     * A throughput worker on one LeaderSelector with autoRequeue, Curator's way of taking
     * leadership again and again: lock waits for takeLeadership, unlock lets it return (the
     * selector then deletes its node and queues again at once).
     */
    static final class LeaderWorker implements Worker {
        private final Semaphore elected = new Semaphore(0);
        private final Semaphore resign = new Semaphore(0);
        private final LeaderSelector selector;
        private boolean started;

        LeaderWorker(CuratorFramework client, String path) {
            selector = new LeaderSelector(client, path, new LeaderSelectorListenerAdapter() {
                @Override
                public void takeLeadership(CuratorFramework c) throws Exception {
                    elected.release();
                    resign.acquire();
                }
            });
            selector.autoRequeue();
        }

        @Override
        public boolean lock(long deadlineNanos) throws Exception {
            if (!started) {
                started = true;
                selector.start();
            }
            return elected.tryAcquire(LockPeer.remainingNanos(deadlineNanos), TimeUnit.NANOSECONDS);
        }

        @Override
        public void unlock() {
            resign.release();
        }

        @Override
        public void close() {
            try {
                selector.close();
            } catch (RuntimeException e) {
                System.err.println("dlock-peer-java: closing a leader selector: " + Out.describe(e));
            }
        }
    }
}

package dev.dlock.peer;

import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;

/**
 * Curator's locks with several holders, on the same client as {@link CuratorPeer}:
 * {@code curator-read} and {@code curator-write} (InterProcessReadWriteLock's read and write
 * lock at {@code /dlock-peers/NAME}, where dlock's {@code zk://…?base=/dlock-peers} keeps lock
 * NAME) and {@code curator-semaphore} (InterProcessSemaphoreV2 at
 * {@code /dlock-peers/NAME%sem}, where dlock keeps semaphore NAME, with DLOCK_PEER_PERMITS
 * leases, 2 without it). Curator's defaults otherwise.
 */
final class CuratorMultiPeer implements LockPeer {

    private enum Kind { READ, WRITE, SEMAPHORE }

    private final CuratorFramework client;
    private final Kind kind;
    private final int permits;
    private final String version;

    private CuratorMultiPeer(CuratorFramework client, Kind kind) {
        this.client = client;
        this.kind = kind;
        this.permits = permits();
        this.version = Versions.tag("curator", "org.apache.curator", "curator-recipes", InterProcessMutex.class)
                + "+zookeeper-" + Versions.of("org.apache.zookeeper", "zookeeper", org.apache.zookeeper.ZooKeeper.class);
    }

    static LockPeer read(String url) throws Exception {
        return new CuratorMultiPeer(CuratorPeer.connect(url), Kind.READ);
    }

    static LockPeer write(String url) throws Exception {
        return new CuratorMultiPeer(CuratorPeer.connect(url), Kind.WRITE);
    }

    static LockPeer semaphore(String url) throws Exception {
        return new CuratorMultiPeer(CuratorPeer.connect(url), Kind.SEMAPHORE);
    }

    /** DLOCK_PEER_PERMITS, the semaphore's limit (2 without it). */
    static int permits() {
        String raw = System.getenv("DLOCK_PEER_PERMITS");
        int n = raw == null || raw.isBlank() ? 2 : Integer.parseInt(raw.strip());
        if (n < 1) {
            throw new IllegalArgumentException("DLOCK_PEER_PERMITS must be at least 1, got " + raw);
        }
        return n;
    }

    @Override
    public String version() {
        return version;
    }

    @Override
    public Held acquire(String name, long ttlMs, boolean wait) throws Exception {
        if (kind == Kind.SEMAPHORE) {
            InterProcessSemaphoreV2 s = new InterProcessSemaphoreV2(client, "/dlock-peers/" + name + "%sem", permits);
            Lease lease = wait ? s.acquire() : s.acquire(0, TimeUnit.MILLISECONDS);
            if (lease == null) {
                return null;
            }
            return lease::close;
        }
        InterProcessReadWriteLock rw = new InterProcessReadWriteLock(client, "/dlock-peers/" + name);
        return CuratorPeer.hold(kind == Kind.READ ? rw.readLock() : rw.writeLock(), wait);
    }

    @Override
    public Worker worker(String name, long ttlMs) {
        if (kind != Kind.SEMAPHORE) {
            InterProcessReadWriteLock rw = new InterProcessReadWriteLock(client, "/dlock-peers/" + name);
            return CuratorPeer.worker(kind == Kind.READ ? rw.readLock() : rw.writeLock());
        }
        InterProcessSemaphoreV2 s = new InterProcessSemaphoreV2(client, "/dlock-peers/" + name + "%sem", permits);
        return new Worker() {
            private Lease lease;

            @Override
            public boolean lock(long deadlineNanos) throws Exception {
                lease = s.acquire(LockPeer.remainingNanos(deadlineNanos), TimeUnit.NANOSECONDS);
                return lease != null;
            }

            @Override
            public void unlock() throws Exception {
                Lease l = lease;
                lease = null;
                l.close();
            }
        };
    }

    @Override
    public void close() {
        client.close();
    }
}

package dev.dlock.peer;

import java.util.concurrent.TimeUnit;
import org.redisson.Redisson;
import org.redisson.api.RFencedLock;
import org.redisson.api.RLock;
import org.redisson.api.RedissonClient;
import org.redisson.config.Config;

/**
 * Redisson's locks on one Redis server: {@code redisson} (RLock, {@code getLock(NAME)}) and
 * {@code redisson-fenced} (RFencedLock, {@code getFencedLock(NAME)}, whose grants carry a
 * token). Both with the lock watchdog on: {@code lock()} / {@code tryLock()} without a lease
 * time, {@code Config.setLockWatchdogTimeout} = DLOCK_PEER_SESSION_MS (the comparison's ttl;
 * 2 s without it), so a held lock's key lives that long and the watchdog renews it every
 * third of it. The watchdog timeout is one setting per client, so a command's own TTL_MS is
 * not used (the driver sends the same value). Everything else is Redisson's default config.
 */
final class RedissonPeer implements LockPeer {

    private final RedissonClient redisson;
    private final boolean fenced;

    private RedissonPeer(RedissonClient redisson, boolean fenced) {
        this.redisson = redisson;
        this.fenced = fenced;
    }

    static LockPeer open(String url, boolean fenced) {
        Urls.Redis r = Urls.redis(url);
        Config config = new Config();
        config.setLockWatchdogTimeout(Main.sessionMillis());
        // Credentials travel in the address (redis://user:password@host:port), where
        // Redisson's RedisURI reads them; setUsername/setPassword are deprecated in 4.x.
        config.useSingleServer().setAddress(r.address(true)).setDatabase(r.database);
        // Redisson.create connects (its connection pools fill up): unreachable → an exception.
        return new RedissonPeer(Redisson.create(config), fenced);
    }

    @Override
    public String version() {
        return Versions.tag("redisson", "org.redisson", "redisson", Redisson.class);
    }

    /** An RLock held by the thread that took it (Redisson's owner is client id + thread id). */
    private static final class Owned implements Held {
        final RLock lock;
        final long threadId = Thread.currentThread().getId();

        Owned(RLock lock) {
            this.lock = lock;
        }

        @Override
        public void release() {
            lock.unlock();
        }

        @Override
        public void releaseAtExit() throws Exception {
            // From the shutdown hook's thread: unlock on behalf of the owning thread.
            lock.unlockAsync(threadId).toCompletableFuture().get(5, TimeUnit.SECONDS);
        }
    }

    @Override
    public Held acquire(String name, long ttlMs, boolean wait) throws Exception {
        if (fenced) {
            RFencedLock lock = redisson.getFencedLock(name);
            if (wait) {
                lock.lockAndGetToken();
            } else if (lock.tryLockAndGetToken(0, TimeUnit.MILLISECONDS) == null) {
                // Not tryLockAndGetToken(): in Redisson 4.7.0 it passes a wait time of -1,
                // which RedissonFencedLock's wait loop reads as "forever" — it blocks until
                // the lock is free. A zero wait time is one attempt.
                return null;
            }
            return new Owned(lock);
        }
        RLock lock = redisson.getLock(name);
        if (wait) {
            lock.lock();
        } else if (!lock.tryLock()) {
            return null;
        }
        return new Owned(lock);
    }

    @Override
    public Worker worker(String name, long ttlMs) {
        // The same blocking wait as lock() (subscribe to the lock's channel, wait for the
        // unlock message or the key's remaining ttl), bounded by the deadline: tryLock(wait).
        if (fenced) {
            RFencedLock lock = redisson.getFencedLock(name);
            return new Worker() {
                @Override
                public boolean lock(long deadlineNanos) {
                    return lock.tryLockAndGetToken(LockPeer.remainingNanos(deadlineNanos), TimeUnit.NANOSECONDS) != null;
                }

                @Override
                public void unlock() {
                    lock.unlock();
                }
            };
        }
        RLock lock = redisson.getLock(name);
        return new Worker() {
            @Override
            public boolean lock(long deadlineNanos) throws InterruptedException {
                return lock.tryLock(LockPeer.remainingNanos(deadlineNanos), TimeUnit.NANOSECONDS);
            }

            @Override
            public void unlock() {
                lock.unlock();
            }
        };
    }

    @Override
    public void close() {
        // No quiet period: a quit need not wait for Netty's default 2 s of it.
        redisson.shutdown(0, 5, TimeUnit.SECONDS);
    }
}

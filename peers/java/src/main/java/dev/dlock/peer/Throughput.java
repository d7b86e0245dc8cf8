package dev.dlock.peer;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

/**
 * {@code throughput TASKS same|distinct MS TTL_MS}: a fixed thread pool of TASKS threads, each
 * with lock objects of its own (made before the clock starts), looping acquire + release for
 * MS on one shared name or one name each. A pair counts when its release finished within MS.
 * Waits are given up at MS where the library takes a deadline; the whole command is capped at
 * MS + {@link #GRACE_MS}, after which the count so far is the answer and the threads are left
 * to finish on their own.
 */
final class Throughput {

    /** How long the command may outlast its MS. */
    static final long GRACE_MS = 10_000;

    private Throughput() {}

    static void run(LockPeer peer, Command c, String base, long t0) throws InterruptedException {
        long started = System.nanoTime();
        long capAt = started + TimeUnit.MILLISECONDS.toNanos(c.ms + GRACE_MS);
        ExecutorService pool = Executors.newFixedThreadPool(c.tasks, r -> {
            Thread t = new Thread(r, "throughput");
            t.setDaemon(true);
            return t;
        });
        try {
            runOn(pool, peer, c, base, t0, capAt);
        } finally {
            pool.shutdown();
        }
    }

    private static void runOn(ExecutorService pool, LockPeer peer, Command c, String base, long t0, long capAt)
            throws InterruptedException {
        // The workers' lock objects, each made on the thread that will use it.
        LockPeer.Worker[] workers = new LockPeer.Worker[c.tasks];
        AtomicReference<Throwable> setupError = new AtomicReference<>();
        CountDownLatch made = new CountDownLatch(c.tasks);
        CountDownLatch go = new CountDownLatch(1);
        AtomicLong deadline = new AtomicLong();
        AtomicLong ops = new AtomicLong();
        AtomicInteger failed = new AtomicInteger();
        AtomicReference<String> firstError = new AtomicReference<>();
        List<Future<?>> running = new ArrayList<>();
        for (int i = 0; i < c.tasks; i++) {
            int index = i;
            String name = c.same ? base + ".same" : base + "." + i;
            running.add(pool.submit(() -> {
                LockPeer.Worker w;
                try {
                    w = peer.worker(name, c.ttlMs);
                    workers[index] = w;
                } catch (Throwable e) {
                    setupError.compareAndSet(null, e);
                    return;
                } finally {
                    made.countDown();
                }
                try {
                    go.await();
                    long end = deadline.get();
                    while (end == 0 || System.nanoTime() < end) {
                        if (end == 0) {
                            return; // set-up failed elsewhere
                        }
                        if (!w.lock(end)) {
                            return;
                        }
                        w.unlock();
                        if (System.nanoTime() <= end) {
                            ops.incrementAndGet();
                        }
                    }
                } catch (Throwable e) {
                    failed.incrementAndGet();
                    firstError.compareAndSet(null, "worker " + index + ": " + Out.describe(e));
                }
            }));
        }
        if (!made.await(Math.max(0, capAt - System.nanoTime()), TimeUnit.NANOSECONDS)) {
            setupError.compareAndSet(null, new IllegalStateException("workers not made before the cap"));
        }
        Throwable setup = setupError.get();
        if (setup != null) {
            go.countDown(); // deadline 0: they return at once
            closeAll(workers);
            Out.error("-", t0, "setting up " + c.tasks + " workers: " + Out.describe(setup));
            return;
        }
        long end = Math.min(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(c.ms), capAt);
        deadline.set(end);
        go.countDown();

        boolean finished = true;
        for (Future<?> f : running) {
            try {
                f.get(Math.max(0, capAt - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                finished = false;
                break;
            } catch (java.util.concurrent.ExecutionException e) {
                failed.incrementAndGet();
                firstError.compareAndSet(null, Out.describe(e.getCause()));
            }
        }
        long n = ops.get();
        long t1 = Out.micros();
        if (!finished) {
            System.err.println("dlock-peer-java: throughput: workers still running " + GRACE_MS
                    + " ms after MS; answering with the pairs counted so far");
        }
        String err = firstError.get();
        if (err != null) {
            System.err.println("dlock-peer-java: throughput: " + failed.get() + " of " + c.tasks
                    + " workers failed, first: " + err);
        }
        if (err != null && n == 0) {
            Out.error("-", t0, failed.get() + " of " + c.tasks + " workers failed, first: " + err);
        } else {
            Out.line("throughput " + n + " " + t0 + " " + t1);
        }
        if (finished) {
            closeAll(workers);
        } else {
            for (Future<?> f : running) {
                f.cancel(true);
            }
        }
    }

    private static void closeAll(LockPeer.Worker[] workers) {
        for (LockPeer.Worker w : workers) {
            if (w != null) {
                w.close();
            }
        }
    }
}

package dev.dlock.peer;

/**
 * One client library behind the protocol: its acquire and try, and the lock objects one
 * throughput thread loops on. Every method that may wait answers {@link InterruptedException}
 * to an interrupt (a signal's shutdown interrupts the command thread).
 */
interface LockPeer {

    /** The library's own version string(s) for the ready line, without spaces. */
    String version();

    /**
     * Takes {@code name}, leased for {@code ttlMs} where the peer has a per-lock lease. With
     * {@code wait} the harness's blocking acquire for this peer; without, one attempt that
     * returns {@code null} when the lock is held elsewhere.
     */
    Held acquire(String name, long ttlMs, boolean wait) throws Exception;

    /** The lock objects one throughput thread uses for {@code name}, made before the clock starts. */
    Worker worker(String name, long ttlMs) throws Exception;

    /** Gives back connections, sessions and threads; what is still held goes with them. */
    void close();

    /** A lock this process holds. */
    interface Held {
        /** Releases it, on the thread that acquired it (the command thread). */
        void release() throws Exception;

        /**
         * Releases it from another thread, at exit (a signal's shutdown hook). Peers whose
         * locks belong to a thread (Curator, Redisson) release by owner id, or leave it to
         * {@link LockPeer#close()}, which ends the session that holds it.
         */
        default void releaseAtExit() throws Exception {
            release();
        }
    }

    /** What one throughput thread loops on; lock and unlock run on that thread. */
    interface Worker {
        /**
         * The blocking acquire, given up at {@code deadlineNanos} ({@link System#nanoTime()}):
         * true when the lock is ours, false when the deadline came first.
         */
        boolean lock(long deadlineNanos) throws Exception;

        void unlock() throws Exception;

        /** Frees what the worker made (a selector, a connection); never throws. */
        default void close() {}
    }

    /** Nanoseconds from now until {@code deadlineNanos}, never negative. */
    static long remainingNanos(long deadlineNanos) {
        return Math.max(0, deadlineNanos - System.nanoTime());
    }
}

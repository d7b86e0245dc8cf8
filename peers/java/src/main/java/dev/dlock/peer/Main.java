package dev.dlock.peer;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.ReentrantLock;

/**
 * dlock-peer-java PEER URL: JVM lock libraries behind the line protocol of peers/README.md.
 *
 * <p>The harness connects, warms up on a private name, prints {@code ready PEER VERSION T} (or
 * {@code unavailable PEER REASON} and exits 1), then answers one command per stdin line, one
 * at a time, in order, on this thread. Log output goes to stderr only.
 */
public final class Main {

    static final String USAGE = "usage: dlock-peer-java shedlock-jdbc|shedlock-redis|jdbc-advisory|"
            + "curator-mutex|curator-leader|curator-read|curator-write|curator-semaphore|redisson|"
            + "redisson-fenced URL";

    /**
     * Acquire + release cycles (blocking, then one-attempt) run before the ready line;
     * DLOCK_PEER_JAVA_WARMUP overrides it (0: none), for measuring what it is worth.
     */
    static final int WARMUP_CYCLES = 20;

    static int warmupCycles() {
        String raw = System.getenv("DLOCK_PEER_JAVA_WARMUP");
        return raw == null || raw.isBlank() ? WARMUP_CYCLES : Integer.parseInt(raw.strip());
    }

    /** Opens one peer (connects; throws when the server cannot be reached). */
    interface Opener {
        LockPeer open(String url) throws Exception;
    }

    static Map<String, Opener> peers() {
        Map<String, Opener> m = new TreeMap<>();
        m.put("shedlock-jdbc", ShedLockPeer::jdbc);
        m.put("shedlock-redis", ShedLockPeer::redis);
        m.put("jdbc-advisory", AdvisoryPeer::open);
        m.put("curator-mutex", CuratorPeer::mutex);
        m.put("curator-leader", CuratorPeer::leader);
        m.put("curator-read", CuratorMultiPeer::read);
        m.put("curator-write", CuratorMultiPeer::write);
        m.put("curator-semaphore", CuratorMultiPeer::semaphore);
        m.put("redisson", url -> RedissonPeer.open(url, false));
        m.put("redisson-fenced", url -> RedissonPeer.open(url, true));
        return m;
    }

    /**
     * The session or watchdog length of peers without a per-lock lease (Curator's session,
     * Redisson's watchdog): DLOCK_PEER_SESSION_MS, which the driver sets to the comparison's
     * ttl, as it does for kazoo; 2000 ms without it.
     */
    static long sessionMillis() {
        String raw = System.getenv("DLOCK_PEER_SESSION_MS");
        if (raw == null || raw.isBlank()) {
            return 2000;
        }
        long ms = Long.parseLong(raw.strip());
        if (ms <= 0) {
            throw new IllegalArgumentException("DLOCK_PEER_SESSION_MS must be positive, got " + raw);
        }
        return ms;
    }

    private final LockPeer peer;
    /** Held while a command runs, so a signal's shutdown waits for it to answer. */
    private final ReentrantLock running = new ReentrantLock();
    private final Map<String, LockPeer.Held> held = new ConcurrentHashMap<>();
    private final Thread commandThread = Thread.currentThread();
    private volatile boolean shuttingDown;
    private int throughputRuns;

    private Main(LockPeer peer) {
        this.peer = peer;
    }

    public static void main(String[] args) {
        Out.takeStdout();
        if (args.length != 2) {
            System.err.println(USAGE);
            if (args.length == 1) {
                unavailable(args[0], "no URL given; " + USAGE);
            }
            System.exit(64);
        }
        String peerName = args[0];
        String url = args[1];
        Opener opener = peers().get(peerName);
        if (opener == null) {
            unavailable(peerName, "unknown peer; " + USAGE);
        }
        LockPeer peer = null;
        try {
            peer = opener.open(url);
            warmUp(peer);
        } catch (Throwable e) {
            if (peer != null) {
                peer.close();
            }
            unavailable(peerName, Out.describe(e));
        }
        Main server = new Main(peer);
        Runtime.getRuntime().addShutdownHook(new Thread(server::onSignal, "dlock-peer-shutdown"));
        Out.line("ready " + peerName + " " + peer.version().replace(' ', '_') + " " + Out.micros());
        server.serve();
    }

    static void unavailable(String peer, String reason) {
        Out.line("unavailable " + peer + " " + Out.oneLine(reason));
        System.exit(1);
    }

    /**
     * The JIT and the libraries' lazy set-up (class loading, connection pools, script loading)
     * would otherwise land in the first samples: a few blocking and one-attempt acquire +
     * release cycles on a name of this process's own.
     */
    private static void warmUp(LockPeer peer) throws Exception {
        String name = "dlock-peer-java.warmup." + ProcessHandle.current().pid();
        for (int i = 0, n = warmupCycles(); i < n; i++) {
            LockPeer.Held h = peer.acquire(name, 2000, true);
            h.release();
            h = peer.acquire(name, 2000, false);
            if (h == null) {
                throw new IllegalStateException("warm-up: a try on this process's own free name was busy");
            }
            h.release();
        }
    }

    private void serve() {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8), 64 * 1024);
        while (true) {
            String line;
            try {
                line = in.readLine();
            } catch (IOException e) {
                System.err.println("dlock-peer-java: reading stdin: " + e.getMessage());
                line = null;
            }
            long t0 = Out.micros();
            running.lock();
            try {
                if (line == null) {
                    quit(t0); // end of stdin means quit
                    return;
                }
                dispatch(line, t0);
            } finally {
                running.unlock();
                Thread.interrupted(); // an interrupt meant for the command just answered
            }
        }
    }

    private void dispatch(String line, long t0) {
        Command c;
        try {
            c = Command.parse(line);
        } catch (Command.Malformed e) {
            Out.error(e.name, t0, e.getMessage());
            return;
        }
        try {
            switch (c.verb) {
                case "acquire":
                case "try":
                    acquire(c, t0);
                    break;
                case "release":
                    release(c, t0);
                    break;
                case "hold":
                    hold(c, t0);
                    break;
                case "throughput":
                    throughput(c, t0);
                    break;
                case "quit":
                    quit(t0);
                    break;
                default:
                    Out.error(c.name, t0, "unknown command");
            }
        } catch (InterruptedException e) {
            Out.error(c.name, t0, "interrupted (the harness is shutting down)");
        } catch (Exception | LinkageError e) {
            e.printStackTrace();
            Out.error(c.name, t0, Out.describe(e));
        }
    }

    private void acquire(Command c, long t0) throws Exception {
        if (held.containsKey(c.name)) {
            Out.error(c.name, t0, "already held by this process");
            return;
        }
        LockPeer.Held h = peer.acquire(c.name, c.ttlMs, c.verb.equals("acquire"));
        long t1 = Out.micros();
        if (h == null) {
            Out.line("busy " + c.name + " " + t0 + " " + t1);
            return;
        }
        held.put(c.name, h);
        Out.line("acquired " + c.name + " " + t0 + " " + t1);
    }

    private void release(Command c, long t0) throws Exception {
        LockPeer.Held h = held.remove(c.name);
        if (h == null) {
            Out.error(c.name, t0, "not held");
            return;
        }
        h.release();
        Out.line("released " + c.name + " " + t0 + " " + Out.micros());
    }

    private void hold(Command c, long t0) throws Exception {
        if (held.containsKey(c.name)) {
            Out.error(c.name, t0, "already held by this process");
            return;
        }
        LockPeer.Held h = peer.acquire(c.name, c.ms + 1000, true);
        if (h == null) {
            throw new IllegalStateException("a waiting acquire came back without the lock");
        }
        held.put(c.name, h);
        Out.line("acquired " + c.name + " " + t0 + " " + Out.micros());
        try {
            // The command's own MS: how long the lock is to be kept, not a synchronisation.
            Thread.sleep(c.ms);
        } catch (InterruptedException e) {
            // shutting down: release now
        }
        long r0 = Out.micros();
        held.remove(c.name);
        try {
            h.release();
        } catch (Exception e) {
            Out.error(c.name, r0, Out.describe(e));
            return;
        }
        Out.line("released " + c.name + " " + r0 + " " + Out.micros());
    }

    private void throughput(Command c, long t0) throws InterruptedException {
        throughputRuns++;
        String base = "tp." + ProcessHandle.current().pid() + "." + throughputRuns;
        Throughput.run(peer, c, base, t0);
    }

    /** Releases what is held and closes the peer; failures are only logged. */
    private void shutdown(boolean fromOtherThread) {
        for (Map.Entry<String, LockPeer.Held> e : held.entrySet()) {
            try {
                if (fromOtherThread) {
                    e.getValue().releaseAtExit();
                } else {
                    e.getValue().release();
                }
            } catch (Exception ex) {
                System.err.println("dlock-peer-java: releasing " + e.getKey() + " at exit: " + Out.describe(ex));
            }
        }
        held.clear();
        peer.close();
    }

    private void quit(long t0) {
        shuttingDown = true;
        shutdown(false);
        Out.line("bye " + t0);
        // halt: the shutdown hook has nothing left to do, and no library thread may keep the
        // JVM (or its exit status) waiting.
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }

    /**
     * SIGTERM, SIGINT, SIGHUP (the JVM exits 128 + N after its hooks): wakes a command that
     * waits for a lock, waits a little for it to answer, and gives back what is held.
     */
    private void onSignal() {
        if (shuttingDown) {
            return;
        }
        shuttingDown = true;
        System.err.println("dlock-peer-java: signal: releasing what is held and exiting");
        commandThread.interrupt();
        boolean locked = false;
        try {
            locked = running.tryLock(5, TimeUnit.SECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        try {
            shutdown(true);
        } finally {
            if (locked) {
                running.unlock();
            }
        }
    }
}

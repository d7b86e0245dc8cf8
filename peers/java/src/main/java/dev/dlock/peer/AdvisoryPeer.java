package dev.dlock.peer;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import org.springframework.core.SpringVersion;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.jdbc.datasource.SingleConnectionDataSource;

/**
 * {@code jdbc-advisory}: the seed's AdvisoryLockService — Spring's JdbcTemplate running
 * {@code pg_try_advisory_lock(hashtext(?))}, {@code pg_advisory_lock(hashtext(?))} and
 * {@code pg_advisory_unlock(hashtext(?))} — on a HikariCP pool. The key is
 * {@code hashtext(NAME)}, the same as dlock's {@code postgres://…?key=hashtext}.
 *
 * <p>A session-level advisory lock belongs to the session that took it, so each lock keeps one
 * pooled connection for its whole life: the statements run through a JdbcTemplate over that
 * one connection, and the connection goes back to the pool after the unlock. (Handing it back
 * between lock and unlock is the common bug INTEROP.md describes: the unlock then lands on
 * another session, returns false, and the lock leaks on the pooled one.)
 */
final class AdvisoryPeer implements LockPeer {

    private final HikariDataSource pool;
    private final String version;

    private AdvisoryPeer(HikariDataSource pool, String version) {
        this.pool = pool;
        this.version = version;
    }

    static LockPeer open(String url) {
        HikariDataSource pool = Pg.pool(url, "jdbc-advisory");
        return new AdvisoryPeer(pool, "spring-jdbc-" + SpringVersion.getVersion() + "+" + Pg.driverVersion());
    }

    /** The seed's service, bound to the one connection a lock lives on. */
    static final class AdvisoryLockService {
        private final JdbcTemplate jdbc;

        AdvisoryLockService(Connection session) {
            this.jdbc = new JdbcTemplate(new SingleConnectionDataSource(session, true));
        }

        boolean tryLock(String name) {
            return Boolean.TRUE.equals(jdbc.queryForObject("SELECT pg_try_advisory_lock(hashtext(?))", Boolean.class, name));
        }

        void lock(String name) {
            jdbc.queryForList("SELECT pg_advisory_lock(hashtext(?))", name);
        }

        void unlock(String name) {
            Boolean ok = jdbc.queryForObject("SELECT pg_advisory_unlock(hashtext(?))", Boolean.class, name);
            if (!Boolean.TRUE.equals(ok)) {
                throw new IllegalStateException("pg_advisory_unlock returned false: this session does not hold it");
            }
        }
    }

    /** A lock and the pooled connection (session) it lives on. */
    private static final class Session implements Held {
        final Connection conn;
        final AdvisoryLockService service;
        final String name;

        Session(Connection conn, String name) {
            this.conn = conn;
            this.service = new AdvisoryLockService(conn);
            this.name = name;
        }

        @Override
        public void release() throws SQLException {
            try {
                service.unlock(name);
            } finally {
                conn.close(); // back to the pool (Hikari drops it if it broke)
            }
        }
    }

    @Override
    public String version() {
        return version;
    }

    @Override
    public Held acquire(String name, long ttlMs, boolean wait) throws Exception {
        Connection conn = pool.getConnection();
        try {
            Session s = new Session(conn, name);
            if (wait) {
                s.service.lock(name);
            } else if (!s.service.tryLock(name)) {
                conn.close();
                return null;
            }
            return s;
        } catch (RuntimeException | Error e) {
            conn.close();
            throw e;
        }
    }

    @Override
    public Worker worker(String name, long ttlMs) {
        return new Worker() {
            private Held held;

            @Override
            public boolean lock(long deadlineNanos) throws Exception {
                // pg_advisory_lock has no deadline of its own; at the deadline every holder
                // stops, so the queue drains in a few milliseconds.
                held = acquire(name, ttlMs, true);
                return true;
            }

            @Override
            public void unlock() throws Exception {
                Held h = held;
                held = null;
                h.release();
            }
        };
    }

    @Override
    public void close() {
        pool.close();
    }
}

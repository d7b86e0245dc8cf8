package dev.dlock.peer;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.time.Instant;
import java.util.Optional;
import javax.sql.DataSource;
import net.javacrumbs.shedlock.core.LockConfiguration;
import net.javacrumbs.shedlock.core.LockProvider;
import net.javacrumbs.shedlock.core.SimpleLock;
import net.javacrumbs.shedlock.provider.jdbctemplate.JdbcTemplateLockProvider;
import net.javacrumbs.shedlock.provider.redis.spring.RedisLockProvider;
import org.springframework.core.SpringVersion;
import org.springframework.data.redis.connection.RedisConnection;
import org.springframework.data.redis.connection.RedisStandaloneConfiguration;
import org.springframework.data.redis.connection.lettuce.LettuceConnectionFactory;
import org.springframework.jdbc.core.JdbcTemplate;

/**
 * ShedLock's {@link LockProvider}s: {@code shedlock-jdbc} (JdbcTemplateLockProvider with
 * database time on PostgreSQL) and {@code shedlock-redis} (RedisLockProvider over Spring Data
 * Redis with Lettuce). Each lock is {@code lock(new LockConfiguration(now, NAME, TTL, 0))}:
 * lockAtMostFor = the protocol's TTL, lockAtLeastFor = 0 (or {@code
 * DLOCK_PEER_SHEDLOCK_AT_LEAST_MS}).
 *
 * <p>ShedLock has no waiting: {@code lock()} is one attempt that answers "taken" with an empty
 * Optional. The protocol's blocking {@code acquire} is this harness's choice: {@code lock()}
 * again every {@link #POLL_MS} ms until it is granted.
 */
final class ShedLockPeer implements LockPeer {

    /** How often the harness's acquire retries lock() while the name is taken. */
    static final long POLL_MS = 100;

    /**
     * lockAtLeastFor: 0 (ShedLock's default) unless {@code DLOCK_PEER_SHEDLOCK_AT_LEAST_MS}
     * says otherwise (the interop tests check that dlock honours a window Java set).
     */
    private final Duration atLeast = atLeast(System.getenv("DLOCK_PEER_SHEDLOCK_AT_LEAST_MS"));

    static Duration atLeast(String raw) {
        if (raw == null || raw.isBlank()) {
            return Duration.ZERO;
        }
        try {
            long ms = Long.parseLong(raw.trim());
            if (ms < 0) {
                throw new NumberFormatException("negative");
            }
            return Duration.ofMillis(ms);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(
                    "DLOCK_PEER_SHEDLOCK_AT_LEAST_MS must be a whole number of milliseconds, not " + raw);
        }
    }

    private final LockProvider provider;
    private final String version;
    private final AutoCloseable resources;

    private ShedLockPeer(LockProvider provider, String version, AutoCloseable resources) {
        this.provider = provider;
        this.version = version;
        this.resources = resources;
    }

    static String shedlockVersion() {
        return Versions.tag("shedlock", "net.javacrumbs.shedlock", "shedlock-core", LockProvider.class);
    }

    /** shedlock-jdbc: postgres://user@host:port/db. */
    static LockPeer jdbc(String url) throws Exception {
        HikariDataSource ds = Pg.pool(url, "shedlock-jdbc");
        try {
            Pg.createShedlockTable(ds);
            JdbcTemplateLockProvider provider = jdbcProvider(ds);
            String version = shedlockVersion() + "+spring-jdbc-" + SpringVersion.getVersion() + "+" + Pg.driverVersion();
            return new ShedLockPeer(provider, version, ds);
        } catch (Exception | Error e) {
            ds.close();
            throw e;
        }
    }

    /**
     * The provider as ShedLock's documentation configures it for database time: a
     * JdbcTemplate over the pool, {@code usingDbTime()}, everything else default (table
     * {@code shedlock}, ShedLock's column names, locked_by = the host name).
     */
    static JdbcTemplateLockProvider jdbcProvider(DataSource ds) {
        return new JdbcTemplateLockProvider(JdbcTemplateLockProvider.Configuration.builder()
                .withJdbcTemplate(new JdbcTemplate(ds))
                .usingDbTime()
                .build());
    }

    /** shedlock-redis: redis://host:port; keys job-lock:default:NAME (the provider's defaults). */
    static LockPeer redis(String url) throws Exception {
        Urls.Redis r = Urls.redis(url);
        RedisStandaloneConfiguration conf = new RedisStandaloneConfiguration(r.host, r.port);
        conf.setDatabase(r.database);
        if (r.user != null) {
            conf.setUsername(r.user);
        }
        if (r.password != null) {
            conf.setPassword(r.password);
        }
        LettuceConnectionFactory factory = new LettuceConnectionFactory(conf);
        try {
            factory.afterPropertiesSet();
            factory.start();
            try (RedisConnection c = factory.getConnection()) {
                c.ping(); // unreachable → unavailable, before the ready line
            }
            RedisLockProvider provider = new RedisLockProvider(factory);
            String version = shedlockVersion()
                    + "+spring-data-redis-" + Versions.of("org.springframework.data", "spring-data-redis", RedisConnection.class)
                    + "+lettuce-" + Versions.of("io.lettuce", "lettuce-core", io.lettuce.core.RedisClient.class);
            return new ShedLockPeer(provider, version, factory::destroy);
        } catch (Exception | Error e) {
            factory.destroy();
            throw e;
        }
    }

    @Override
    public String version() {
        return version;
    }

    private Optional<SimpleLock> once(String name, long ttlMs) {
        return provider.lock(new LockConfiguration(Instant.now(), name, Duration.ofMillis(ttlMs), atLeast));
    }

    /** lock() until granted, POLL_MS apart; empty when the deadline (nanoTime) came first. */
    private Optional<SimpleLock> poll(String name, long ttlMs, long deadlineNanos) throws InterruptedException {
        while (true) {
            Optional<SimpleLock> l = once(name, ttlMs);
            if (l.isPresent()) {
                return l;
            }
            long left = deadlineNanos - System.nanoTime();
            if (left <= 0) {
                return Optional.empty();
            }
            // ShedLock's own retry interval does not exist; this is the harness's poll.
            Thread.sleep(Math.min(POLL_MS, (left + 999_999) / 1_000_000));
        }
    }

    @Override
    public Held acquire(String name, long ttlMs, boolean wait) throws Exception {
        Optional<SimpleLock> l = wait ? poll(name, ttlMs, Long.MAX_VALUE / 2 + System.nanoTime()) : once(name, ttlMs);
        return l.<Held>map(lock -> lock::unlock).orElse(null);
    }

    @Override
    public Worker worker(String name, long ttlMs) {
        return new Worker() {
            private SimpleLock lock;

            @Override
            public boolean lock(long deadlineNanos) throws InterruptedException {
                Optional<SimpleLock> l = poll(name, ttlMs, deadlineNanos);
                lock = l.orElse(null);
                return lock != null;
            }

            @Override
            public void unlock() {
                lock.unlock();
                lock = null;
            }
        };
    }

    @Override
    public void close() {
        try {
            resources.close();
        } catch (Exception e) {
            System.err.println("dlock-peer-java: closing: " + Out.describe(e));
        }
    }
}

package dev.dlock.peer;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneId;
import java.time.ZonedDateTime;
import java.time.temporal.ChronoUnit;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import javax.sql.DataSource;
import net.javacrumbs.shedlock.core.LockConfiguration;
import net.javacrumbs.shedlock.core.LockProvider;
import net.javacrumbs.shedlock.core.SimpleLock;
import net.javacrumbs.shedlock.spring.annotation.EnableSchedulerLock;
import net.javacrumbs.shedlock.spring.annotation.SchedulerLock;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.core.env.Environment;
import org.springframework.core.env.MapPropertySource;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.scheduling.annotation.EnableScheduling;
import org.springframework.scheduling.annotation.Scheduled;
import org.springframework.scheduling.support.CronExpression;
import org.springframework.transaction.support.TransactionTemplate;
import org.springframework.jdbc.datasource.DataSourceTransactionManager;

/**
 * The seed's purge job, one pod of it, as a Spring application writes it: a
 * {@code @Configuration} with {@code @EnableScheduling} and {@code @EnableSchedulerLock}, a bean
 * whose method is {@code @Scheduled(cron = …)} and {@code @SchedulerLock(name =
 * "emp_details_purge", …)}, and ShedLock's JdbcTemplateLockProvider with database time on
 * PostgreSQL. Not part of the line protocol: interop tests run several pods (and dlock's own)
 * against one database and count the purges per tick.
 *
 * <pre>
 * java -cp … dev.dlock.peer.PurgePod URL POD CRON AT_MOST_MS AT_LEAST_MS ticks=N|ms=N
 * </pre>
 *
 * <p>Each run deletes the rows of {@code emp_details} older than 30 days and inserts one row
 * {@code (tick, pod, at, deleted)} into {@code purge_runs} in the same transaction, then
 * prints {@code purged TICK POD T} (TICK the cron fire time the run belongs to, an ISO-8601
 * UTC instant; T CLOCK_MONOTONIC in µs). A tick run twice is two rows with the same tick.
 * {@code ticks=N}: exit 0 after taking part in N ticks (ran or skipped because another pod
 * held the lock); {@code ms=N}: exit 0 after N ms, once no run is in flight. A pod that is
 * leaving takes no more locks. Tables are created when missing.
 */
public final class PurgePod {

    static final String LOCK_NAME = "emp_details_purge";

    private PurgePod() {}

    public static void main(String[] args) throws Exception {
        Out.takeStdout();
        if (args.length != 6) {
            System.err.println("usage: PurgePod URL POD CRON AT_MOST_MS AT_LEAST_MS ticks=N|ms=N");
            System.exit(64);
        }
        String url = args[0];
        String pod = args[1];
        String cron = args[2];
        long atMost = Long.parseLong(args[3]);
        long atLeast = Long.parseLong(args[4]);
        CronExpression.parse(cron); // a bad expression fails here, with its message
        long ticks = 0;
        long millis = 0;
        if (args[5].startsWith("ticks=")) {
            ticks = Long.parseLong(args[5].substring(6));
        } else if (args[5].startsWith("ms=")) {
            millis = Long.parseLong(args[5].substring(3));
        }
        if (ticks <= 0 && millis <= 0) {
            System.err.println("PurgePod: the last argument is ticks=N or ms=N (N > 0), not " + args[5]);
            System.exit(64);
        }

        HikariDataSource ds = Pg.pool(url, "purge-" + pod);
        Pg.createShedlockTable(ds);
        Pg.ddl(ds,
                "CREATE TABLE IF NOT EXISTS emp_details (id bigserial PRIMARY KEY, name text NOT NULL,"
                        + " last_updated timestamptz NOT NULL)",
                "CREATE TABLE IF NOT EXISTS purge_runs (tick timestamptz NOT NULL, pod text NOT NULL,"
                        + " at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted bigint NOT NULL)");

        Map<String, Object> props = new HashMap<>();
        props.put("purge.pod", pod);
        props.put("purge.cron", cron);
        props.put("purge.at-most", atMost + "ms");
        props.put("purge.at-least", atLeast + "ms");
        props.put("purge.stop-after-ticks", ticks);

        AnnotationConfigApplicationContext ctx = new AnnotationConfigApplicationContext();
        ctx.getEnvironment().getPropertySources().addFirst(new MapPropertySource("purge", props));
        ctx.registerBean(DataSource.class, () -> ds);
        ctx.register(PurgeConfig.class);
        ctx.refresh();

        TickCounter counter = ctx.getBean(TickCounter.class);
        counter.awaitStop(millis);
        ctx.close();
        ds.close();
        System.exit(0);
    }

    /** The application's configuration, as the seed has it. */
    @Configuration
    @EnableScheduling
    @EnableSchedulerLock(defaultLockAtMostFor = "${purge.at-most}")
    public static class PurgeConfig {

        @Bean
        public TickCounter lockProvider(DataSource ds, Environment env) {
            long stopAfter = env.getRequiredProperty("purge.stop-after-ticks", Long.class);
            return new TickCounter(ShedLockPeer.jdbcProvider(ds), stopAfter);
        }

        @Bean
        public EmpDetailsPurge empDetailsPurge(DataSource ds, Environment env) {
            return new EmpDetailsPurge(ds, env.getRequiredProperty("purge.pod"),
                    CronExpression.parse(env.getRequiredProperty("purge.cron")));
        }
    }

    /** The scheduled job. */
    public static class EmpDetailsPurge {
        private final JdbcTemplate jdbc;
        private final TransactionTemplate tx;
        private final String pod;
        private final CronExpression cron;

        public EmpDetailsPurge(DataSource ds, String pod, CronExpression cron) {
            this.jdbc = new JdbcTemplate(ds);
            this.tx = new TransactionTemplate(new DataSourceTransactionManager(ds));
            this.pod = pod;
            this.cron = cron;
        }

        @Scheduled(cron = "${purge.cron}")
        @SchedulerLock(name = LOCK_NAME, lockAtMostFor = "${purge.at-most}", lockAtLeastFor = "${purge.at-least}")
        public void purge() {
            Instant tick = tickOf(cron, Instant.now());
            Long deleted = tx.execute(status -> {
                int n = jdbc.update("DELETE FROM emp_details WHERE last_updated < now() - interval '30 days'");
                jdbc.update("INSERT INTO purge_runs (tick, pod, deleted) VALUES (?, ?, ?)",
                        java.sql.Timestamp.from(tick), pod, (long) n);
                return (long) n;
            });
            Out.line("purged " + tick + " " + pod + " " + Out.micros());
            System.err.println("PurgePod " + pod + ": tick " + tick + ": deleted " + deleted + " rows");
        }
    }

    /**
     * The fire time a run belongs to: the latest time of the cron at or before now (+100 ms:
     * the scheduler reads a millisecond clock, so a run may start a hair early).
     */
    static Instant tickOf(CronExpression cron, Instant now) {
        ZonedDateTime limit = now.plusMillis(100).atZone(ZoneId.systemDefault());
        for (Duration back : new Duration[] {Duration.ofSeconds(2), Duration.ofMinutes(2), Duration.ofHours(2),
                Duration.ofDays(2), Duration.ofDays(400)}) {
            ZonedDateTime t = cron.next(limit.minus(back));
            if (t == null || t.isAfter(limit)) {
                continue;
            }
            for (ZonedDateTime n = cron.next(t); n != null && !n.isAfter(limit); n = cron.next(t)) {
                t = n;
            }
            return t.toInstant().truncatedTo(ChronoUnit.MILLIS);
        }
        return now.truncatedTo(ChronoUnit.SECONDS);
    }

    /**
     * The pod's LockProvider: ShedLock's JdbcTemplateLockProvider, unchanged, seen through a
     * counter of the ticks this pod took part in — a lock() that came back empty (another pod
     * runs this tick) or an unlock() after a run. It only stops a leaving pod from taking more
     * locks; every lock and unlock is ShedLock's own.
     */
    public static final class TickCounter implements LockProvider {
        private final LockProvider delegate;
        private final long stopAfterTicks;
        private long ticks;
        private boolean inFlight;
        private boolean stopping;

        TickCounter(LockProvider delegate, long stopAfterTicks) {
            this.delegate = delegate;
            this.stopAfterTicks = stopAfterTicks;
        }

        @Override
        public Optional<SimpleLock> lock(LockConfiguration config) {
            synchronized (this) {
                if (stopping) {
                    return Optional.empty();
                }
                inFlight = true;
            }
            Optional<SimpleLock> lock;
            try {
                lock = delegate.lock(config);
            } catch (RuntimeException | Error e) {
                tickDone(false);
                throw e;
            }
            if (lock.isEmpty()) {
                tickDone(true);
                return lock;
            }
            SimpleLock inner = lock.get();
            return Optional.of(() -> {
                try {
                    inner.unlock();
                } finally {
                    tickDone(false);
                }
            });
        }

        private synchronized void tickDone(boolean skipped) {
            inFlight = false;
            ticks++;
            if (skipped) {
                System.err.println("PurgePod: skipped a tick: " + LOCK_NAME + " is held by another pod");
            }
            if (stopAfterTicks > 0 && ticks >= stopAfterTicks) {
                stopping = true;
            }
            notifyAll();
        }

        /** Returns once the pod may exit: N ticks done, or {@code millis} passed with no run in flight. */
        synchronized void awaitStop(long millis) throws InterruptedException {
            long end = System.nanoTime() + Duration.ofMillis(millis).toNanos();
            while (!stopping) {
                long left = end - System.nanoTime();
                if (millis > 0 && left <= 0) {
                    stopping = true;
                    break;
                }
                if (millis > 0) {
                    wait(Math.max(1, left / 1_000_000));
                } else {
                    wait();
                }
            }
            while (inFlight) {
                wait();
            }
        }
    }
}

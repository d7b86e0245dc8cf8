package dev.dlock.peer;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import javax.sql.DataSource;

/** PostgreSQL plumbing shared by the JDBC peers and the purge pod. */
final class Pg {

    private Pg() {}

    /**
     * A HikariCP pool with Hikari's defaults (10 connections, 30 s connection timeout); it
     * opens its first connection here, so an unreachable server fails before the ready line.
     */
    static HikariDataSource pool(String url, String poolName) {
        Urls.Postgres pg = Urls.postgres(url);
        HikariConfig cfg = new HikariConfig();
        cfg.setJdbcUrl(pg.jdbcUrl);
        cfg.setDataSourceProperties(pg.props);
        cfg.setPoolName(poolName);
        return new HikariDataSource(cfg);
    }

    static String driverVersion() {
        return "pgjdbc-" + Versions.of("org.postgresql", "postgresql", org.postgresql.Driver.class);
    }

    /**
     * Runs DDL once among processes starting together: inside one transaction that first takes
     * a transaction-level advisory lock, so two harnesses (or pods) never race on CREATE TABLE
     * IF NOT EXISTS (which can fail with a unique violation on the catalog when they do).
     */
    static void ddl(DataSource ds, String... statements) throws SQLException {
        try (Connection c = ds.getConnection()) {
            boolean auto = c.getAutoCommit();
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("SELECT pg_advisory_xact_lock(hashtext('dlock-peer-java ddl'))");
                for (String sql : statements) {
                    s.execute(sql);
                }
                c.commit();
            } catch (SQLException e) {
                c.rollback();
                // Created meanwhile by someone not taking our lock (dlock's shedlock backend).
                if (!"42P07".equals(e.getSQLState()) && !"23505".equals(e.getSQLState())) {
                    throw e;
                }
            } finally {
                c.setAutoCommit(auto);
            }
        }
    }

    /**
     * ShedLock's table as its documentation creates it on PostgreSQL, and as dlock's
     * shedlock+postgres backend creates it (lock-shedlock/README.md, INTEROP.md): the same
     * name and columns, so a Java ShedLock and dlock share the rows.
     */
    static void createShedlockTable(DataSource ds) throws SQLException {
        ddl(ds, "CREATE TABLE IF NOT EXISTS shedlock(name VARCHAR(64) NOT NULL, lock_until TIMESTAMP NOT NULL,"
                + " locked_at TIMESTAMP NOT NULL, locked_by VARCHAR(255) NOT NULL, PRIMARY KEY (name))");
    }
}

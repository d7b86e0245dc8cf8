package dev.dlock.peer;

import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.util.Properties;

/** The protocol's URL forms (peers/README.md, the URL table), turned into what each client takes. */
final class Urls {

    private Urls() {}

    /** A PostgreSQL server: the JDBC URL and the connection properties (user, password). */
    static final class Postgres {
        final String jdbcUrl;
        final Properties props;

        Postgres(String jdbcUrl, Properties props) {
            this.jdbcUrl = jdbcUrl;
            this.props = props;
        }
    }

    /** One Redis server. */
    static final class Redis {
        final String host;
        final int port;
        final int database;
        final String user;
        final String password;

        Redis(String host, int port, int database, String user, String password) {
            this.host = host;
            this.port = port;
            this.database = database;
            this.user = user;
            this.password = password;
        }

        /** redis://[user:password@]host:port, as Redisson's address. */
        String address(boolean withCredentials) {
            String auth = "";
            if (withCredentials && (user != null || password != null)) {
                auth = (user == null ? "" : encode(user)) + (password == null ? "" : ":" + encode(password)) + "@";
            }
            return "redis://" + auth + (host.contains(":") ? "[" + host + "]" : host) + ":" + port;
        }
    }

    /** The parts of scheme://[userinfo@]hosts[/path][?query]. */
    private static final class Parts {
        String user;
        String password;
        String hosts;
        String path = "";
        String query = "";
    }

    private static Parts split(String url, String... schemes) {
        int sep = url.indexOf("://");
        String scheme = sep < 0 ? "" : url.substring(0, sep);
        boolean known = false;
        for (String s : schemes) {
            known |= s.equals(scheme);
        }
        if (!known) {
            throw new IllegalArgumentException("not a " + String.join("/", schemes) + ":// URL: " + url);
        }
        String rest = url.substring(sep + 3);
        Parts p = new Parts();
        int q = rest.indexOf('?');
        if (q >= 0) {
            p.query = rest.substring(q + 1);
            rest = rest.substring(0, q);
        }
        int slash = rest.indexOf('/');
        if (slash >= 0) {
            p.path = rest.substring(slash + 1);
            rest = rest.substring(0, slash);
        }
        int at = rest.lastIndexOf('@');
        if (at >= 0) {
            String info = rest.substring(0, at);
            rest = rest.substring(at + 1);
            int colon = info.indexOf(':');
            if (colon >= 0) {
                p.user = decode(info.substring(0, colon));
                p.password = decode(info.substring(colon + 1));
            } else {
                p.user = decode(info);
            }
        }
        if (rest.isEmpty()) {
            throw new IllegalArgumentException("no host in " + url);
        }
        p.hosts = rest;
        return p;
    }

    private static String encode(String s) {
        return java.net.URLEncoder.encode(s, StandardCharsets.UTF_8).replace("+", "%20");
    }

    private static String decode(String s) {
        return URLDecoder.decode(s.replace("+", "%2B"), StandardCharsets.UTF_8);
    }

    /**
     * postgres://user[:password]@host:port[,host:port…]/db[?params] → jdbc:postgresql://…; the
     * query's parameters (sslmode, …) are passed to the driver as they are.
     */
    static Postgres postgres(String url) {
        Parts p = split(url, "postgres", "postgresql");
        if (p.path.isEmpty()) {
            throw new IllegalArgumentException("no database in " + url + " (want postgres://user@host:port/db)");
        }
        Properties props = new Properties();
        if (p.user != null && !p.user.isEmpty()) {
            props.setProperty("user", p.user);
        }
        if (p.password != null) {
            props.setProperty("password", p.password);
        }
        String jdbc = "jdbc:postgresql://" + p.hosts + "/" + p.path
                + (p.query.isEmpty() ? "" : "?" + p.query);
        return new Postgres(jdbc, props);
    }

    /** redis://[user:password@]host:port[/db]: one server (ShedLock's and Redisson's peers take one). */
    static Redis redis(String url) {
        Parts p = split(url, "redis");
        if (p.hosts.contains(",")) {
            throw new IllegalArgumentException("one Redis server only (this peer has no Redlock): " + url);
        }
        String host = p.hosts;
        int port = 6379;
        int colon = host.lastIndexOf(':');
        if (colon >= 0 && !host.endsWith("]")) {
            port = Integer.parseInt(host.substring(colon + 1));
            host = host.substring(0, colon);
        }
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        int db = p.path.isEmpty() ? 0 : Integer.parseInt(p.path);
        String user = p.user == null || p.user.isEmpty() ? null : p.user;
        return new Redis(host, port, db, user, p.password);
    }
}

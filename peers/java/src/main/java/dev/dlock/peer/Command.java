package dev.dlock.peer;

import java.util.regex.Pattern;

/** One parsed protocol line (peers/README.md, "Commands and replies"). */
final class Command {

    /** The protocol's names. */
    static final Pattern NAME = Pattern.compile("[A-Za-z0-9_.:-]{1,64}");
    /** Every millisecond argument is capped at one week, as the other harnesses do. */
    static final long MAX_MILLIS = 7L * 24 * 3600 * 1000;
    /** throughput's TASKS is capped. */
    static final int MAX_TASKS = 1024;

    /** A line that does not parse; {@link #name} is the name for the error reply. */
    static final class Malformed extends Exception {
        private static final long serialVersionUID = 1L;
        final String name;

        Malformed(String name, String message) {
            super(message, null, false, false);
            this.name = name;
        }
    }

    final String verb;
    /** "-" for the commands without a name. */
    final String name;
    final long ttlMs;
    /** hold's and throughput's MS. */
    final long ms;
    final int tasks;
    final boolean same;

    private Command(String verb, String name, long ttlMs, long ms, int tasks, boolean same) {
        this.verb = verb;
        this.name = name;
        this.ttlMs = ttlMs;
        this.ms = ms;
        this.tasks = tasks;
        this.same = same;
    }

    static Command parse(String line) throws Malformed {
        String trimmed = line.strip();
        if (trimmed.isEmpty()) {
            throw new Malformed("-", "empty line");
        }
        String[] w = trimmed.split("\\s+");
        String verb = w[0];
        boolean named = verb.equals("acquire") || verb.equals("try") || verb.equals("release")
                || verb.equals("hold");
        String name = named && w.length > 1 && NAME.matcher(w[1]).matches() ? w[1] : "-";
        switch (verb) {
            case "acquire":
            case "try":
                arity(w, 3, verb + " NAME TTL_MS", named, name);
                return new Command(verb, name, millis(w[2], "TTL_MS", 1, name), 0, 0, false);
            case "release":
                arity(w, 2, "release NAME", named, name);
                return new Command(verb, name, 0, 0, 0, false);
            case "hold":
                arity(w, 3, "hold NAME MS", named, name);
                return new Command(verb, name, 0, millis(w[2], "MS", 0, name), 0, false);
            case "throughput": {
                arity(w, 5, "throughput TASKS same|distinct MS TTL_MS", false, name);
                int tasks;
                try {
                    tasks = Integer.parseInt(w[1]);
                } catch (NumberFormatException e) {
                    tasks = -1;
                }
                if (tasks < 1 || tasks > MAX_TASKS) {
                    throw new Malformed("-", "TASKS \"" + w[1] + "\" is not in 1..=" + MAX_TASKS);
                }
                boolean same;
                if (w[2].equals("same")) {
                    same = true;
                } else if (w[2].equals("distinct")) {
                    same = false;
                } else {
                    throw new Malformed("-", "\"" + w[2] + "\" is neither same nor distinct");
                }
                long ms = millis(w[3], "MS", 1, "-");
                long ttl = millis(w[4], "TTL_MS", 1, "-");
                return new Command(verb, "-", ttl, ms, tasks, same);
            }
            case "quit":
                arity(w, 1, "quit", false, name);
                return new Command(verb, "-", 0, 0, 0, false);
            default:
                throw new Malformed("-", "unknown command \"" + verb + "\"");
        }
    }

    private static void arity(String[] w, int n, String form, boolean named, String name)
            throws Malformed {
        if (w.length != n) {
            throw new Malformed(name, "usage: " + form);
        }
        if (named && name.equals("-")) {
            throw new Malformed("-", "bad name \"" + w[1] + "\": names are [A-Za-z0-9_.:-]{1,64}");
        }
    }

    private static long millis(String word, String what, long min, String name) throws Malformed {
        long n;
        try {
            n = Long.parseLong(word);
        } catch (NumberFormatException e) {
            n = Long.MIN_VALUE;
        }
        if (n < min || n > MAX_MILLIS) {
            throw new Malformed(name, what + " \"" + word
                    + "\" is not a whole number of milliseconds in " + min + "..=" + MAX_MILLIS);
        }
        return n;
    }
}

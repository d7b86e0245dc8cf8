package dev.dlock.peer;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

/**
 * The reply channel and the protocol's clock. Replies go to file descriptor 1, one line per
 * write, flushed at once; {@link System#out} is pointed at stderr so that nothing a library
 * prints can land between them.
 */
final class Out {

    /** The longest message an error or unavailable line carries. */
    static final int MAX_MESSAGE = 300;

    private static final OutputStream STDOUT = new FileOutputStream(FileDescriptor.out);

    private Out() {}

    /** Called first thing in main: from here on System.out is stderr. */
    static void takeStdout() {
        System.setOut(new PrintStream(new FileOutputStream(FileDescriptor.err), true, StandardCharsets.UTF_8));
    }

    /**
     * CLOCK_MONOTONIC in whole microseconds: HotSpot on Linux reads System.nanoTime() from
     * clock_gettime(CLOCK_MONOTONIC), the clock every process on the machine shares.
     */
    static long micros() {
        return System.nanoTime() / 1000;
    }

    /**
     * Writes one line. A reader that went away is not worth dying for (the JVM ignores
     * SIGPIPE; the write error is dropped); the end of stdin ends the process.
     */
    static synchronized void line(String text) {
        try {
            STDOUT.write((text + "\n").getBytes(StandardCharsets.UTF_8));
            STDOUT.flush();
        } catch (IOException e) {
            System.err.println("dlock-peer-java: stdout: " + e.getMessage());
        }
    }

    /** A message flattened to one line of at most {@link #MAX_MESSAGE} characters. */
    static String oneLine(String s) {
        String flat = s == null ? "" : s.strip().replaceAll("\\s+", " ");
        if (flat.isEmpty()) {
            flat = "failed";
        }
        if (flat.length() > MAX_MESSAGE) {
            flat = flat.substring(0, MAX_MESSAGE - 3) + "...";
        }
        return flat;
    }

    /** An exception as one line: its class and message, and its root cause's where different. */
    static String describe(Throwable e) {
        Throwable root = e;
        while (root.getCause() != null && root.getCause() != root) {
            root = root.getCause();
        }
        String msg = e.getClass().getSimpleName() + ": " + e.getMessage();
        if (root != e) {
            msg += " (" + root.getClass().getSimpleName() + ": " + root.getMessage() + ")";
        }
        return oneLine(msg);
    }

    static void error(String name, long t0, String message) {
        line("error " + name + " " + t0 + " " + micros() + " " + oneLine(message));
    }
}

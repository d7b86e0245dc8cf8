package dev.dlock.peer;

import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;

/**
 * Library versions as their jars record them, so the ready line names the jar that is actually
 * loaded, not a constant that could drift from the pom: the pom.properties Maven writes into
 * every jar it builds (META-INF/maven/GROUP/ARTIFACT/pom.properties), else the manifest's
 * Implementation-Version of the jar a class of the library comes from (Spring and the
 * PostgreSQL driver are built with Gradle and only have the manifest).
 */
final class Versions {

    private Versions() {}

    static String of(String group, String artifact, Class<?> fromJar) {
        String path = "META-INF/maven/" + group + "/" + artifact + "/pom.properties";
        try (InputStream in = Versions.class.getClassLoader().getResourceAsStream(path)) {
            if (in != null) {
                Properties p = new Properties();
                p.load(in);
                String v = p.getProperty("version");
                if (v != null && !v.isBlank()) {
                    return v.strip();
                }
            }
        } catch (IOException e) {
            // fall through to the manifest
        }
        String v = fromJar.getPackage() == null ? null : fromJar.getPackage().getImplementationVersion();
        if (v != null && !v.isBlank()) {
            // Lettuce appends its commit: 7.5.2.RELEASE/5728917
            return v.strip().split("/")[0];
        }
        return "unknown";
    }

    /** artifact-version, the form of the ready line's parts. */
    static String tag(String label, String group, String artifact, Class<?> fromJar) {
        return label + "-" + of(group, artifact, fromJar);
    }
}

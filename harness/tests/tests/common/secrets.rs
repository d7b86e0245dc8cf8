//! Running the `dlock` CLI to completion and checking that nothing it printed holds a secret
//! (a password, a line of a key file): the TLS and authentication tests' shared check.

use std::process::{Command, Stdio};

/// What one `dlock` invocation printed, and how it ended.
pub struct CliOutput {
    /// `dlock ARGS…` with the URLs' passwords masked ([`dlock::redact`]), to name it by.
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics unless the exit code is `want` (the message shows both streams).
    #[track_caller]
    pub fn expect_code(self, want: i32) -> Self {
        assert_eq!(
            self.code,
            Some(want),
            "{}: exit {:?}, want {want}:\n{}\n{}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `dlock ARGS…` (stdin empty, `env` added to this process's environment) to completion.
pub fn dlock_cli(args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let out = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run dlock-under-test");
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains("://") {
                dlock::redact(a)
            } else {
                a.to_string()
            }
        })
        .collect();
    CliOutput {
        what: format!("dlock {}", shown.join(" ")),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The base64 lines of a PEM key file (not its `-----` armour lines); panics when there are
/// none, since an empty list would make [`assert_no_secrets`] check nothing.
pub fn secret_lines(key_file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(key_file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", key_file.display()));
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert!(!lines.is_empty(), "no key lines in {}", key_file.display());
    lines
}

/// Panics when any output's stdout or stderr contains one of `secrets`, naming the
/// invocation, the stream and the secret by its first 4 characters (never in full).
#[track_caller]
pub fn assert_no_secrets<'a>(
    outputs: impl IntoIterator<Item = &'a CliOutput>,
    secrets: &[impl AsRef<str>],
) {
    let mut leaks = Vec::new();
    for o in outputs {
        // The name of the invocation hides the secrets too, should dlock::redact miss one.
        let what = secrets
            .iter()
            .fold(o.what.clone(), |w, s| w.replace(s.as_ref(), "***"));
        for (stream, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
            for secret in secrets.iter().map(AsRef::as_ref) {
                if text.contains(secret) {
                    let start: String = secret.chars().take(4).collect();
                    leaks.push(format!(
                        "{what}: its {stream} contains the secret {start:?}… ({} chars)",
                        secret.chars().count()
                    ));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets in the CLI's output:\n{}",
        leaks.join("\n")
    );
}

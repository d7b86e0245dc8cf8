//! The one error type every backend returns.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, in the lock domain. Match on this, not on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The lock is held by someone else and the options said not to wait.
    Contended,
    /// The lock was still held by someone else when the wait ran out.
    Timeout,
    /// The lock name is not acceptable (empty, NUL, too long, or not representable by the
    /// backend's key space).
    InvalidName,
    /// The lock options are not acceptable (a zero ttl, `at_least` longer than the ttl, …).
    InvalidOptions,
    /// The URL is malformed or names a scheme nobody knows.
    InvalidUrl,
    /// The backend does not offer this (a mode, a capability, or a feature not compiled in).
    Unsupported,
    /// The lock was lost: the lease expired, the session ended, or someone else holds it now.
    Lost,
    /// The backend could not be reached or the connection broke.
    Connection,
    /// The backend answered with an error of its own.
    Backend,
    /// A secure connection could not be made: the server's certificate was not accepted
    /// (unknown CA, wrong host name, expired), the client's was refused, the server requires
    /// TLS and the URL did not ask for it (or the reverse). The message says which.
    Tls,
    /// The server refused who we are or what we asked: a wrong user or password, or a user
    /// not allowed to touch the lock's keys (a role confined to another prefix, an ACL).
    Auth,
}

impl ErrorKind {
    /// A short lowercase name, as used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Contended => "contended",
            ErrorKind::Timeout => "timeout",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::InvalidOptions => "invalid_options",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Lost => "lost",
            ErrorKind::Connection => "connection",
            ErrorKind::Backend => "backend",
            ErrorKind::Tls => "tls",
            ErrorKind::Auth => "auth",
        }
    }

    /// True for the kinds that describe bad input from the caller (name, options, URL).
    pub fn is_invalid_input(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidName | ErrorKind::InvalidOptions | ErrorKind::InvalidUrl
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Parsing a URL and connecting to a backend.
    Connect,
    /// Validating a name or options before any backend call.
    Validate,
    /// Acquiring a lock (including waiting for it).
    Acquire,
    /// Releasing a lock.
    Release,
    /// Extending a lease, by hand or by the auto-renewal.
    Extend,
}

impl Operation {
    /// A short lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Validate => "validate",
            Operation::Acquire => "acquire",
            Operation::Release => "release",
            Operation::Extend => "extend",
        }
    }
}

/// The error type of every dlock operation: a [`kind`](Error::kind), the backend and
/// operation it came from, a message for humans, and the underlying cause when there is one.
///
/// Messages never contain credentials: URLs are redacted before they reach an error.
pub struct Error {
    kind: ErrorKind,
    backend: &'static str,
    operation: Operation,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A new error. `backend` is the scheme-level name (`"memory"`, `"postgres"`, …), or
    /// `"dlock"` for errors raised before a backend is involved.
    pub fn new(
        kind: ErrorKind,
        backend: &'static str,
        operation: Operation,
        message: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            backend,
            operation,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Attaches an already boxed cause.
    pub fn with_boxed_source(mut self, source: Box<dyn StdError + Send + Sync + 'static>) -> Self {
        self.source = Some(source);
        self
    }

    /// Replaces the operation (used when a helper reports a lower-level error).
    pub fn in_operation(mut self, operation: Operation) -> Self {
        self.operation = operation;
        self
    }

    /// Replaces the backend name (used when a shared helper raised the error).
    pub fn in_backend(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend the error came from.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The operation the error happened in.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// The human-readable message (without the backend/operation prefix or the cause).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for an [`ErrorKind::InvalidOptions`] error during validation.
    pub fn invalid_options(message: impl Into<String>) -> Self {
        Error::new(
            ErrorKind::InvalidOptions,
            "dlock",
            Operation::Validate,
            message,
        )
    }

    /// Shorthand for an [`ErrorKind::InvalidName`] error raised by `backend`.
    pub fn invalid_name(backend: &'static str, message: impl Into<String>) -> Self {
        Error::new(
            ErrorKind::InvalidName,
            backend,
            Operation::Validate,
            message,
        )
    }

    /// The same error as another kind, with `cause` in front of its message: for a cause
    /// found in the error's chain after it was made (a connection refused for TLS or
    /// authentication, reported by a host-by-host connect as unreachable).
    pub fn reclassified(mut self, kind: ErrorKind, cause: impl fmt::Display) -> Self {
        self.kind = kind;
        self.message = format!("{cause}: {}", self.message);
        self
    }

    /// Shorthand for an [`ErrorKind::InvalidUrl`] error raised by `backend`.
    pub fn invalid_url(backend: &'static str, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidUrl, backend, Operation::Connect, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} failed ({}): {}",
            self.backend,
            self.operation.as_str(),
            self.kind,
            self.message
        )?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("backend", &self.backend)
            .field("operation", &self.operation)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// `Result` with dlock's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

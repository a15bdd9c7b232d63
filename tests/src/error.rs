//! The harness's error type: every failure carries the context a test author needs to act on it.

use std::path::PathBuf;
use std::time::Duration;

/// Why a harness operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed; `context` says which one.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time; `details` holds the relevant logs.
    #[error("timed out after {timeout:?} waiting for {what}\n{details}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
        /// Logs or state that explain the wait.
        details: String,
    },
    /// A helper command exited unsuccessfully.
    #[error("`{command}` failed ({status})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, as text.
        status: String,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A process exited while the harness was waiting for it to become ready.
    #[error("{name} exited early ({status})\n{logs}")]
    Exited {
        /// The process's name in the harness.
        name: String,
        /// Its exit status, as text.
        status: String,
        /// The tail of its logs.
        logs: String,
    },
    /// A required binary or file is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What was looked for.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: String,
    },
    /// An HTTP exchange could not be completed or parsed.
    #[error("HTTP: {0}")]
    Http(String),
    /// JSON that should be OTLP/JSON was not.
    #[error("OTLP/JSON: {0}")]
    Otlp(String),
    /// Anything else that makes the set-up impossible.
    #[error("{0}")]
    Setup(String),
}

/// Result alias of the harness.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Turns an I/O error into [`Error::Io`] with a lazily built context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(context(), source))
    }
}

//! Errors. Rules: every error a user can see says what failed and on what (a path, a
//! segment, a label), carries a kind that decides the exit code, and where we know the
//! usual cause, a hint. Exit codes are mapped once, in `main`.

use std::fmt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Something asked for is not there (archive-get: end of archive).
    NotFound,
    /// Options or configuration are wrong.
    Config,
    /// The input contradicts the repository: another cluster, a different file under a name.
    Conflict,
    /// Stored data failed a checksum or does not parse.
    Corrupt,
    /// PostgreSQL refused, or could not be reached.
    Database,
    /// Reading or writing files failed.
    Io,
    /// Another pgward process holds the stanza's lock.
    Locked,
    /// Waited too long (for WAL to be archived, for a server).
    Timeout,
    /// A bug: a panic, or a worker task that ended without an answer.
    Internal,
}

impl ErrorKind {
    /// Documented in docs/exit-codes.md.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotFound => 1,
            ErrorKind::Config => 3,
            ErrorKind::Conflict => 4,
            ErrorKind::Corrupt => 5,
            ErrorKind::Database => 6,
            ErrorKind::Io => 7,
            ErrorKind::Locked => 8,
            ErrorKind::Timeout => 9,
            ErrorKind::Internal => 10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::Config => "config",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Database => "database",
            ErrorKind::Io => "io",
            ErrorKind::Locked => "locked",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
            source: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    pub fn source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }

    pub fn io(action: &str, path: impl AsRef<Path>, err: std::io::Error) -> Error {
        let kind = if err.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Error::new(kind, format!("{action} {}", path.as_ref().display())).source(err)
    }

    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, message).hint(
            "the repository copy is damaged; run `pgward verify` to see everything it affects",
        )
    }

    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config, message)
    }

    pub fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }
}

/// What every internal error tells the user.
pub const INTERNAL_HINT: &str =
    "this is a bug in pgward; please report it with the command line and this message";

/// Ends a joined task's result: `.unwrap_or_else(task_panicked)` on a
/// `Result<Result<T>, JoinError>`. main's panic hook normally ends the process before a
/// join sees a panic; should one get here anyway (a cancelled task, code run without the
/// hook), it is an internal error with a documented exit code, never Rust's 101, which
/// restore_command's caller would read as "not in the archive".
pub fn task_panicked<T>(err: tokio::task::JoinError) -> Result<T> {
    let what = if err.is_panic() {
        "a worker task panicked"
    } else {
        "a worker task was cancelled"
    };
    Err(Error::new(ErrorKind::Internal, what)
        .source(err)
        .hint(INTERNAL_HINT))
}

/// Test builds only: panics (on the calling thread) when `PGWARD_TEST_PANIC` names
/// `point`, so integration tests can prove how a worker's panic ends the process.
#[track_caller]
pub fn test_panic_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("PGWARD_TEST_PANIC").is_ok_and(|p| p == point) {
        panic!("PGWARD_TEST_PANIC={point}");
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        let message = match err.as_db_error() {
            Some(db) => format!("PostgreSQL error {}: {}", db.code().code(), db.message()),
            None => format!("PostgreSQL connection failed: {err}"),
        };
        Error::new(ErrorKind::Database, message)
    }
}

/// Attaches the path an I/O error happened on.
pub trait IoContext<T> {
    fn at(self, action: &str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, action: &str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(action, path, e))
    }
}

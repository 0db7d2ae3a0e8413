//! The service library's errors.

use std::path::PathBuf;

/// What went wrong in the service's storage or setup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed: the request cannot be answered (a 503, never a
    /// guess).
    #[error("database")]
    Db(#[from] rusqlite::Error),
    /// The PostgreSQL server refused or failed (a 503 as well).
    #[error("database")]
    Postgres(#[from] postgres::Error),
    /// A stored value is not what this version wrote: the database is newer or damaged.
    #[error("stored {what} is not valid: {value}")]
    Corrupt { what: &'static str, value: String },
    /// A file of the state directory, a token file or a log could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A token file line is not `TENANT sha256:HEX`: the service does not start with a
    /// token it might misread.
    #[error("{}:{line}: {message}", path.display())]
    Tokens {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The database was written by a newer version of the service.
    #[error(
        "the database is at schema version {found}, newer than this service's {known}: run the newer waymark"
    )]
    Schema { found: i64, known: i64 },
}

/// The library's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path` while doing `action`.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

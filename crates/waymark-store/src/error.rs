use std::path::PathBuf;

/// Errors reading a store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The argument names nothing on disk.
    #[error("{arg}: no such file or directory")]
    NotFound { arg: String },
    /// The argument exists but is not, and does not link to, a store path.
    #[error(
        "{arg} is not in the Nix store {store_dir} (give a store path, a profile or a link to one)"
    )]
    NotInStore { arg: String, store_dir: String },
    /// A derivation was given where a closure (an output) is expected.
    #[error(
        "{path} is a derivation, not a closure (build it and give its output, e.g. nix-store --realise {path})"
    )]
    IsDerivation { path: String },
    /// The store does not hold the path (never built, or garbage-collected).
    #[error("{path} is not a valid path in the store {store} (was it garbage-collected?)")]
    NotValid { path: String, store: String },
    /// Links that point at each other.
    #[error("{arg}: too many levels of symbolic links")]
    LinkLoop { arg: String },
    /// Reading a file or link failed (permissions, I/O).
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds an exclusive lock on the database; waiting longer would hang.
    #[error("the store database {db} is locked by another process (retry when it is done)")]
    Locked { db: PathBuf },
    /// The database cannot be used (missing, unreadable, unexpected schema); the caller
    /// falls back to the nix CLI.
    #[error("reading the store database {db}")]
    Database {
        db: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A nix or ssh command could not be started.
    #[error("running {program} (is it installed and on PATH?)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A nix or ssh command failed; its last stderr line says why.
    #[error("{command} failed: {message}")]
    Command { command: String, message: String },
    /// `nix path-info --json` printed something that is neither known shape.
    #[error("unexpected output of nix path-info --json")]
    PathInfoJson(#[source] serde_json::Error),
    /// `nix build --json` printed something unexpected.
    #[error("unexpected output of {command}: {message}")]
    Output { command: String, message: String },
    /// No store where the URL points. The nix CLI would create an empty one there, so it
    /// is not asked: reading never creates anything (issue 22).
    #[error(
        "no Nix store at {store}: {missing} does not exist (check --store; reading a store never creates one)"
    )]
    NoStore { store: String, missing: PathBuf },
    /// The store holds a value no store can hold: the database was damaged or edited.
    #[error(
        "the store database {db} gives {path} the impossible size {value} (repair the database, e.g. nix-store --verify --check-contents)"
    )]
    BadSize {
        db: PathBuf,
        path: String,
        value: i64,
    },
    /// A link or path on a remote host that does not exist, or leads nowhere.
    #[error(
        "{host}:{path}: no such file on the host, or a link to nothing (readlink -e found no target; check the path, e.g. /run/current-system)"
    )]
    RemoteMissing { host: String, path: String },
    /// The store URL cannot be understood.
    #[error("invalid store URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
}

/// Result of store reads.
pub type Result<T> = std::result::Result<T, Error>;

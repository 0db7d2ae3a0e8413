use std::path::PathBuf;

/// Errors of known-good marks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Target names become directory names, GC roots, tag components and ssh
    /// destinations: one rule for all of them, stated in the message.
    #[error("invalid target name {0:?}: {rule}", rule = waymark_fleet::TARGET_RULE)]
    BadTarget(String),
    /// No marks were ever made for the target.
    #[error("no known-good marks for target {target} (known targets: {known})")]
    UnknownTarget { target: String, known: String },
    /// The mark does not exist.
    #[error(
        "no known-good mark {mark:?} for target {target} (see: waymark known-good list {target})"
    )]
    UnknownMark { target: String, mark: String },
    /// There is nothing before the latest mark to roll back to.
    #[error("target {target} has no known-good mark before the latest")]
    NoPrevious { target: String },
    /// Unmarking the latest would leave the target without its rollback target.
    #[error(
        "refusing to unmark {mark}: it is the latest known-good mark of {target}, the closure a rollback redeploys (pass --force to unmark it anyway)"
    )]
    RefuseLatest { target: String, mark: String },
    /// Something other than Waymark's own file, link or directory where Waymark writes
    /// or removes: following it could put GC roots where the collector does not look or
    /// remove files elsewhere, so it is refused.
    #[error(
        "refusing {path}: it is {kind}, where Waymark keeps its own files; nothing under the roots and state directories is followed (move it away, then retry)"
    )]
    NotPlain { path: PathBuf, kind: String },
    /// A commit id must be hexadecimal.
    #[error("invalid commit {0:?} (expected 7 to 40 hexadecimal digits)")]
    BadRev(String),
    /// The closure is not in the store.
    #[error("{path} is not a valid path in the store (build or copy it first)")]
    NotInStore { path: String },
    /// A derivation cannot be a known-good closure.
    #[error("{path} is a derivation, not a closure")]
    IsDerivation { path: String },
    /// The evidence does not support the mark.
    #[error("refusing to mark")]
    Evidence(#[from] waymark_evidence::Error),
    /// Roots outside the store's gcroots directory are not seen by the garbage collector.
    #[error(
        "the roots directory {roots} is not inside the store's GC roots directory {gcroots}, so nix store gc would not see its links (use a directory under it, e.g. {gcroots}/per-user/$USER/waymark)"
    )]
    RootsOutsideGcroots { roots: PathBuf, gcroots: PathBuf },
    /// Writing is not allowed (not root, read-only file system).
    #[error(
        "cannot write {path}: permission denied or read-only file system (run as root, or pass --roots-dir/--state-dir you can write)"
    )]
    Permission { path: PathBuf },
    /// Other I/O failures.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that cannot be read back.
    #[error("reading the record {path}")]
    BadRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A record whose target, name or contents do not match where it lives: it could
    /// point the tool at files outside the roots directory, so it is not used.
    #[error("refusing the record {path}: {reason} (fix or remove it by hand)")]
    TamperedRecord { path: PathBuf, reason: String },
    /// The record and what pins it disagree, or the closure is gone: acting on it could
    /// redeploy a closure nobody validated, or one the collector may take.
    #[error("known-good mark {mark} of {target} is broken: {problem} ({hint})")]
    Broken {
        target: String,
        mark: String,
        problem: String,
        hint: String,
    },
    /// Marks are made on the machine that holds the closure.
    #[error(
        "known-good marks are made on the machine that holds the closure, not through the store URL {url} (run waymark known-good there)"
    )]
    RemoteStore { url: String },
    /// Asking the store failed.
    #[error("asking the store about {path}")]
    Store {
        path: String,
        #[source]
        source: waymark_store::Error,
    },
}

impl Error {
    /// Wraps an I/O error, singling out permission problems (they need a different fix).
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        if matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
        ) {
            Self::Permission {
                path: path.to_owned(),
            }
        } else {
            Self::Io {
                action,
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// Result of known-good operations.
pub type Result<T> = std::result::Result<T, Error>;

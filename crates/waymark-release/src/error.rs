/// Errors of release records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Target names become ref components: one rule for every place a name goes.
    #[error("invalid target name {0:?}: {rule}", rule = waymark_known_good::TARGET_RULE)]
    BadTarget(String),
    /// A mark name is a ref component too.
    #[error(
        "invalid mark name {0:?} (a mark is <UTC>-<shortrev>, e.g. 20261123T172900Z-1a2b3c4; see waymark known-good list)"
    )]
    BadMark(String),
    /// No repository where one was expected (the caller says how to name another).
    #[error("no git repository at or above {path}")]
    NoRepo {
        path: String,
        #[source]
        source: git2::Error,
    },
    /// The commit cannot be found.
    #[error("commit {rev} does not exist in this repository (fetch it, or check the id)")]
    UnknownCommit {
        rev: String,
        #[source]
        source: git2::Error,
    },
    /// The known-good mark was made for another commit.
    #[error("mark {mark} was made for commit {mark_rev}, not {commit}")]
    RevMismatch {
        mark: String,
        mark_rev: String,
        commit: String,
    },
    /// A symbolic revision in a dirty tree may not describe what was built.
    #[error(
        "the working tree has uncommitted changes, so {rev} may not be what was built (commit first, or pass the built commit's id)"
    )]
    Dirty { rev: String },
    /// Tags never move.
    #[error("tag {tag} already exists on commit {existing} (release tags never move)")]
    TagExists { tag: String, existing: String },
    /// The release branch only fast-forwards.
    #[error(
        "refusing to move {branch} from {from} to {to}: not a fast-forward (release branches only move forward; release a descendant of {from})"
    )]
    NonFastForward {
        branch: String,
        from: String,
        to: String,
    },
    /// The remote has commits this repository does not.
    #[error(
        "{remote} has {branch} at {remote_tip}, which this repository does not have: fetch first, then release a descendant"
    )]
    RemoteAhead {
        remote: String,
        branch: String,
        remote_tip: String,
    },
    /// The remote refused an update.
    #[error(
        "{remote} refused {reference}: {message} (nothing was forced; local tags and branches are unchanged)"
    )]
    Rejected {
        remote: String,
        reference: String,
        message: String,
    },
    /// A tagger given, but not in the form git needs.
    #[error(
        "--tagger {given:?} is not 'Name <email>' (e.g. --tagger 'Release Bot <bot@example.org>')"
    )]
    BadTagger { given: String },
    /// No tagger identity.
    #[error(
        "no tagger identity: set git config user.name and user.email, or pass --tagger 'Name <email>'"
    )]
    NoIdentity,
    /// A tag of the release namespace whose message is not a release record.
    #[error("tag {tag} is not a Waymark release record")]
    NotARelease { tag: String },
    /// Any other git failure.
    #[error("{action}")]
    Git {
        action: String,
        #[source]
        source: git2::Error,
    },
}

pub(crate) fn git(action: impl Into<String>) -> impl FnOnce(git2::Error) -> Error {
    let action = action.into();
    move |source| Error::Git { action, source }
}

/// Result of release operations.
pub type Result<T> = std::result::Result<T, Error>;

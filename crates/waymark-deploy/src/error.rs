//! Why a host's deploy stopped, typed by concern, and what other programs say, matched
//! in one place per program. Each cause's Display is the message the deploy reports
//! (the CLI prints it as it is).

/// Why a host stopped before the end of its gates.
#[derive(Debug, thiserror::Error)]
pub enum StopCause {
    /// The fleet or the settings do not allow the deploy (nothing was tried): fixing
    /// them is the user's part.
    #[error("{0}")]
    Settings(String),
    /// The host could not be reached over ssh: nothing ran there.
    #[error("cannot reach {destination}: {why}")]
    Unreachable {
        /// `user@address`.
        destination: String,
        /// ssh's last word.
        why: String,
    },
    /// A remote script's reply could not be used (the marks, a record): the target's
    /// state is unknown to the deploy, so it does not go on.
    #[error("{0}")]
    Reply(String),
    /// The build on a build host failed: the target was not touched.
    #[error("building on {builder} failed: {source}; the target was not touched")]
    Build {
        /// The build host's name.
        builder: String,
        /// What went wrong there.
        source: BuildError,
    },
    /// A nix command (here or on the target) of gate 1 failed: the target was not
    /// touched.
    #[error("{what} failed: {source}; the target was not touched")]
    Command {
        /// What was done ("building here", "copying from builder to web1").
        what: String,
        /// How it failed.
        source: CommandError,
    },
    /// A store could not be read (a closure's path-info).
    #[error("{0}")]
    Store(String),
    /// The target committed, but what follows the commit failed: a human looks.
    #[error("{host} runs {closure} (committed), but {why}")]
    Committed {
        host: String,
        closure: String,
        why: StateError,
    },
    /// Finishing a deploy interrupted after its commit failed here: a human looks.
    #[error("{host} runs {closure}, committed by an interrupted deploy, but {why}")]
    Unfinished {
        host: String,
        closure: String,
        why: StateError,
    },
    /// Another deploy's commit could not be marked on the target: nothing changed.
    #[error(
        "{host} runs {closure}, committed by another deploy, but {why}: nothing changed; deploy again"
    )]
    OthersCommit {
        host: String,
        closure: String,
        why: MarkError,
    },
    /// A gate refused to go on before anything was activated: the target is as it was.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A gate's own verdict after activation started (a failed activation, a restore
    /// and how it was verified): the message says where the target stands.
    #[error("{0}")]
    Gate(String),
}

/// Why a gate refused to go on, nothing activated: a later deploy may (a queue can
/// retry `AnotherDeploy` and `Busy`; `Drift` waits for a human).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The target runs no system: nothing to restore if activation failed.
    #[error(
        "{host} runs no system (/run/current-system is missing): there would be nothing to restore if activation failed"
    )]
    NoSystem { host: String },
    /// Another deploy's agent is at work there (seen by the probe).
    #[error(
        "another deploy is under way on {host} (its agent in {dir}): nothing changed; deploy again once it ends"
    )]
    AnotherDeploy { host: String, dir: String },
    /// The target runs what its latest known-good mark does not say (a hand deploy?).
    #[error(
        "{host} runs {running}, not its latest known-good closure {closure} (mark {mark}): deployed by hand? Stopped, nothing changed; --allow-drift deploys anyway"
    )]
    Drift {
        host: String,
        running: String,
        closure: String,
        mark: String,
    },
    /// The person at the terminal said no after the diff.
    #[error("declined after the diff; nothing changed")]
    Declined,
    /// dry-activate failed.
    #[error("dry-activate failed (exit {rc}): {last}; nothing was activated")]
    DryActivateFailed { rc: String, last: String },
    /// dry-activate could not run (the connection).
    #[error("dry-activate could not run on {host}: {why}; nothing was activated")]
    DryActivateNotRun { host: String, why: String },
    /// The agent could not be started.
    #[error("the activation agent could not be started on {host}: {why}; nothing was activated")]
    AgentNotStarted { host: String, why: String },
    /// Another deploy holds the target's activation lock.
    #[error("another deploy is activating on {host} ({holder}); nothing changed")]
    Busy { host: String, holder: String },
    /// The running system changed since the deploy read it: the agent activated nothing.
    #[error(
        "the agent activated nothing ({why}): {host} switched to another system since the deploy read it"
    )]
    RunningChanged { host: String, why: String },
}

/// Why a build on a build host gave no closure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    /// Its master connection could not be opened.
    #[error("cannot reach {builder}: {source}")]
    Unreachable {
        builder: String,
        source: crate::Error,
    },
    /// The derivations could not be sent there.
    #[error("sending the derivations to {builder}: {why}")]
    Send { builder: String, why: SendError },
    /// The build's session or script failed there (its last word).
    #[error("on {builder}: {why}")]
    Remote { builder: String, why: String },
    /// What was built could not be signed: the targets would refuse it.
    #[error("signing on {builder} with {key} failed: {why}")]
    Signing {
        builder: String,
        key: String,
        why: String,
    },
    /// Nix's first error (it names the derivation that failed), or the build's status.
    #[error("{0}")]
    Failed(String),
}

/// Why the derivations could not be sent to a build host.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// This machine's store could not be read.
    #[error("{0}")]
    Store(String),
    /// The session or a process failed.
    #[error(transparent)]
    Transport(#[from] crate::Error),
    /// `nix-store --export` failed.
    #[error("nix-store --export: {0}")]
    Export(String),
    /// `nix copy --derivation` (when the build host refused the import) failed.
    #[error(transparent)]
    Copy(#[from] CommandError),
}

/// How a command of the deploy (a nix command here, a script on a host) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// It could not be run.
    #[error(transparent)]
    Run(#[from] crate::Error),
    /// It failed; its last word (the last line of its stderr).
    #[error("{0}")]
    Said(String),
    /// It was killed by the fault injection `interrupt-copy` (tests).
    #[error("interrupted (WAYMARK_FAULT=interrupt-copy)")]
    Interrupted,
}

/// Why the target's mark could not be made or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MarkError {
    /// The mark script failed there (its last word).
    #[error("marking it known-good there failed: {0}")]
    Failed(String),
    /// Another deploy holds the agent directory's marking lock.
    #[error("another deploy is marking it there right now")]
    Busy,
    /// The record it printed is not a record.
    #[error("the target's mark record is unreadable: {0}")]
    Unreadable(String),
}

/// What failed after a commit: the target's mark, or the record here.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Mark(#[from] MarkError),
    /// The deploy record could not be written here.
    #[error("writing the deploy record here failed: {0}")]
    Record(std::io::Error),
}

impl From<String> for StopCause {
    fn from(message: String) -> Self {
        Self::Gate(message)
    }
}

impl From<&str> for StopCause {
    fn from(message: &str) -> Self {
        Self::Gate(message.to_owned())
    }
}

/// What Nix says, matched here and nowhere else.
pub(crate) mod nix {
    /// Nix could not open its connection to a store it reaches over ssh or a socket (the
    /// forwarded nix-daemon socket refused: the host's sshd forbids forwarding).
    pub(crate) fn cannot_connect_to_store(message: &str) -> bool {
        message.contains("cannot open connection to remote store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_s_connection_failure_is_recognised_as_nix_2_8_says_it() {
        // Recorded: `nix store ping --store ssh-ng://root@web1` (Nix 2.8.0), its ssh
        // refused.
        let said = "error: cannot open connection to remote store 'ssh-ng://root@web1': error: unexpected end-of-file";
        assert!(nix::cannot_connect_to_store(said));
        assert!(!nix::cannot_connect_to_store(
            "error: path '/nix/store/x' is not valid"
        ));
    }

    #[test]
    fn each_cause_says_what_the_deploy_said() {
        assert_eq!(
            StopCause::Unreachable {
                destination: "root@web1".into(),
                why: "Connection refused".into()
            }
            .to_string(),
            "cannot reach root@web1: Connection refused"
        );
        assert_eq!(
            StopCause::Build {
                builder: "builder".into(),
                source: BuildError::Failed("exit 1".into())
            }
            .to_string(),
            "building on builder failed: exit 1; the target was not touched"
        );
        assert_eq!(
            StopCause::Committed {
                host: "web1".into(),
                closure: "/nix/store/x".into(),
                why: MarkError::Busy.into()
            }
            .to_string(),
            "web1 runs /nix/store/x (committed), but another deploy is marking it there right now"
        );
        assert_eq!(StopCause::from("x").to_string(), "x");
        assert_eq!(
            StopCause::from(Refusal::Busy {
                host: "web1".into(),
                holder: "/run/waymark/deploy/r-web1".into()
            })
            .to_string(),
            "another deploy is activating on web1 (/run/waymark/deploy/r-web1); nothing changed"
        );
    }
}

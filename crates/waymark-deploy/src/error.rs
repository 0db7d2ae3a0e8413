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
    /// A gate's verdict after activation started: where the target stands.
    #[error(transparent)]
    Verdict(#[from] Verdict),
    /// The run was cancelled before this gate.
    #[error("cancelled ({reason}) before {gate}")]
    Cancelled { reason: String, gate: &'static str },
    /// A rollback has nothing to go back to.
    #[error(
        "{host} has no known-good mark {which}: nothing to roll back to (see waymark known-good list on the target)"
    )]
    NoMark { host: String, which: String },
    /// A rollback's closure is gone from the target and cannot be copied back.
    #[error(
        "{closure} is no longer in {host}'s store and {why}: redeploy it with waymark deploy from its commit {rev}"
    )]
    ClosureGone {
        closure: String,
        host: String,
        why: String,
        rev: String,
    },
}

/// Where a target stands after a gate failed once its activation had started (or may
/// have): restored (and how that was verified), committed anyway, or unknown. `why` is
/// the gate's own reason (a failed health check, a lost connection, a timeout).
#[derive(Debug, thiserror::Error)]
pub enum Verdict {
    /// The agent restored the previous system, and the target was seen running it.
    #[error("{0}")]
    Restored(String),
    /// The agent says it restored, but the target runs something else.
    #[error("{restored}, but the target runs {running} (profile {profile}): check it")]
    RestoreUnverified {
        restored: String,
        running: String,
        profile: String,
    },
    /// Restoring failed there (its log is in the agent's directory).
    #[error("{why}, and re-activating {rollback_to} failed: see {dir}/restore.log on {host}")]
    RestoreFailed {
        why: String,
        rollback_to: String,
        dir: String,
        host: String,
    },
    /// Restoring failed there, read while waiting for the agent's end.
    #[error("{why}, and re-activating {rollback_to} failed on the target: see {dir}/restore.log")]
    RestoreFailedThere {
        why: String,
        rollback_to: String,
        dir: String,
    },
    /// Restoring failed there after the confirmation.
    #[error("{why}, and restoring failed on the target: see {dir}/restore.log on {host}")]
    RestoreFailedAfterConfirm {
        why: String,
        dir: String,
        host: String,
    },
    /// Whether the agent restored could not be learnt.
    #[error("{why}; could not learn whether {host} restored {rollback_to}: check it")]
    RestoreUnknown {
        why: String,
        host: String,
        rollback_to: String,
    },
    /// The connection was lost while launching, and the agent never started.
    #[error("{why}; the agent never started: nothing was activated")]
    AgentNeverStarted { why: String },
    /// The connection was lost while launching, and the target cannot be asked.
    #[error(
        "{why}, and {host} cannot be reached to see whether activation started: check it ({detail})"
    )]
    LaunchUnknown {
        why: String,
        host: String,
        detail: String,
    },
    /// The agent refused to activate (the running system changed under it).
    #[error("{why}; the agent activated nothing ({how})")]
    ActivatedNothing { why: String, how: String },
    /// A gate failed, yet the agent committed the new closure (it is not marked).
    #[error(
        "{why}, but the target's agent committed {closure}: it runs a closure that is not marked known-good"
    )]
    CommittedUnmarked { why: String, closure: String },
    /// The agent committed, but the target does not run or boot what it should.
    #[error("the agent committed, but the target runs {running} with profile {profile}: check it")]
    CommitUnverified { running: String, profile: String },
    /// After the confirmation, the agent is in a state it should not be in.
    #[error("after the confirmation the target's agent is {state}: check {dir} on {host}")]
    AgentUnexpected {
        state: String,
        dir: String,
        host: String,
    },
    /// The switch was inhibited: the new closure is only the boot default.
    #[error(
        "{why}: {closure} is the boot default from the next reboot (bootOnInhibitedSwitch); the running system is unchanged; not marked known-good until a deploy sees it run"
    )]
    BootDefaultOnly { why: String, closure: String },
    /// The switch was inhibited, and making the closure the boot default failed.
    #[error(
        "{why}, and making it the boot default failed ({detail}): the target runs {running} with profile {profile}"
    )]
    BootDefaultFailed {
        why: String,
        detail: String,
        running: String,
        profile: String,
    },
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
        // The verdicts after activation read as they always did (the CLI's snapshots).
        assert_eq!(
            StopCause::from(Verdict::RestoreUnknown {
                why: "health check web failed".into(),
                host: "web1".into(),
                rollback_to: "/nix/store/old".into(),
            })
            .to_string(),
            "health check web failed; could not learn whether web1 restored /nix/store/old: check it"
        );
        assert_eq!(
            StopCause::from(Verdict::RestoreUnverified {
                restored: "switch test failed; restored /nix/store/old".into(),
                running: "/nix/store/new".into(),
                profile: "missing".into(),
            })
            .to_string(),
            "switch test failed; restored /nix/store/old, but the target runs /nix/store/new (profile missing): check it"
        );
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

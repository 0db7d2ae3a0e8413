//! Why a host's deploy stopped, typed by concern, and what other programs say, matched
//! in one place per program. Each cause's Display is the message the deploy reports
//! (the CLI prints it as it is).

/// Why a host stopped before the end of its gates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Building or copying the closure failed: the target was not touched.
    #[error("{what} failed: {why}; the target was not touched")]
    BuildOrCopy {
        /// What was done ("building on builder", "copying from builder to web1").
        what: String,
        /// Why, as the program said.
        why: String,
    },
    /// A store could not be read (a closure's path-info).
    #[error("{0}")]
    Store(String),
    /// The state kept here or on the target (records, marks) could not be written or
    /// agreed on: a human looks.
    #[error("{0}")]
    State(String),
    /// A gate's own verdict (drift, a failed activation, a restore): the message says
    /// where the target stands.
    #[error("{0}")]
    Gate(String),
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
            StopCause::BuildOrCopy {
                what: "building on builder".into(),
                why: "exit 1".into()
            }
            .to_string(),
            "building on builder failed: exit 1; the target was not touched"
        );
        assert_eq!(StopCause::from("x").to_string(), "x");
    }
}

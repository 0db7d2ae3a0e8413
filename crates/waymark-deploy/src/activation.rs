//! The pure side of activation: what `dry-activate` says, and what the agent's state
//! file says.

use serde::Serialize;

/// What `switch-to-configuration dry-activate` says would happen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DryRun {
    /// Units that would be stopped.
    pub stop: Vec<String>,
    /// Units that would be restarted.
    pub restart: Vec<String>,
    /// Units that would be reloaded.
    pub reload: Vec<String>,
    /// Units that would be started.
    pub start: Vec<String>,
    /// Whether systemd itself would be re-executed.
    pub restart_systemd: bool,
}

impl DryRun {
    /// Reads switch-to-configuration's `would <verb> the following units: a, b` lines;
    /// other lines are ignored.
    pub fn parse(output: &str) -> Self {
        let mut dry = Self::default();
        for line in output.lines().map(str::trim) {
            if line == "would restart systemd" {
                dry.restart_systemd = true;
                continue;
            }
            let Some((head, units)) = line.split_once(" the following units: ") else {
                continue;
            };
            let list = units
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned);
            match head {
                "would stop" => dry.stop.extend(list),
                "would restart" => dry.restart.extend(list),
                "would reload" => dry.reload.extend(list),
                "would start" => dry.start.extend(list),
                _ => {}
            }
        }
        dry
    }

    /// One line for reports and the evidence.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.restart_systemd {
            parts.push("restart systemd".to_owned());
        }
        for (verb, units) in [
            ("stop", &self.stop),
            ("restart", &self.restart),
            ("reload", &self.reload),
            ("start", &self.start),
        ] {
            if !units.is_empty() {
                parts.push(format!("{verb} {}", units.join(", ")));
            }
        }
        if parts.is_empty() {
            "no unit would change".to_owned()
        } else {
            format!("would {}", parts.join("; "))
        }
    }
}

/// Where the agent on the target is (its `state` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Not started, or the state file is missing.
    Unknown(String),
    /// Running `switch-to-configuration test`.
    Activating,
    /// Activated; waiting for the confirmation.
    AwaitingConfirmation,
    /// Confirmed; setting the profile and the boot entry.
    Committing,
    /// Going back to the previous closure.
    Restoring(String),
    /// Done: the new closure is committed (profile and boot entry).
    Committed,
    /// Done: the new closure runs, nothing committed (goal `test`).
    Kept,
    /// Done: the previous closure runs again, for this reason.
    Restored(String),
    /// Done: restoring failed. Needs a human.
    RestoreFailed(String),
    /// Done without activating anything, for this reason.
    Refused(String),
}

impl AgentState {
    /// Reads the state file's line.
    pub fn parse(line: &str) -> Self {
        let line = line.trim();
        let (word, why) = line.split_once(':').unwrap_or((line, ""));
        let why = why.to_owned();
        match word {
            "activating" => Self::Activating,
            "awaiting-confirmation" => Self::AwaitingConfirmation,
            "committing" => Self::Committing,
            "restoring" => Self::Restoring(why),
            "committed" => Self::Committed,
            "kept" => Self::Kept,
            "restored" => Self::Restored(why),
            "restore-failed" => Self::RestoreFailed(why),
            "refused" => Self::Refused(why),
            _ => Self::Unknown(line.to_owned()),
        }
    }

    /// Whether the agent has finished.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Committed
                | Self::Kept
                | Self::Restored(_)
                | Self::RestoreFailed(_)
                | Self::Refused(_)
        )
    }

    /// Why a restore happened, in words.
    pub fn reason(why: &str) -> &'static str {
        match why {
            "activation-failed" => "switch-to-configuration test failed",
            "inhibited" => "the switch is inhibited (a component changed that needs a reboot)",
            "confirm-timeout" => "the confirmation did not arrive in time",
            "aborted" => "the deploy was aborted (a health check failed)",
            "commit-failed" => "setting the profile or the boot entry failed",
            _ => "the agent gave up",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_switch_to_configuration_ng_output() {
        // As switch-to-configuration-ng prints it (nixpkgs 26.05).
        let out = "would stop the following units: old-worker.service\n\
                   would NOT stop the following changed units: getty@tty1.service\n\
                   would activate the configuration...\n\
                   would restart systemd\n\
                   would reload the following units: dbus-broker.service\n\
                   would restart the following units: nginx.service, sshd.service\n\
                   would start the following units: new-worker.service\n";
        let dry = DryRun::parse(out);
        assert_eq!(dry.stop, ["old-worker.service"]);
        assert_eq!(dry.restart, ["nginx.service", "sshd.service"]);
        assert_eq!(dry.reload, ["dbus-broker.service"]);
        assert_eq!(dry.start, ["new-worker.service"]);
        assert!(dry.restart_systemd);
        assert_eq!(
            dry.summary(),
            "would restart systemd; stop old-worker.service; restart nginx.service, sshd.service; \
             reload dbus-broker.service; start new-worker.service"
        );
        assert_eq!(
            DryRun::parse("would activate the configuration...\n").summary(),
            "no unit would change"
        );
    }

    #[test]
    fn reads_agent_states() {
        assert_eq!(
            AgentState::parse("restored:confirm-timeout\n"),
            AgentState::Restored("confirm-timeout".into())
        );
        assert!(AgentState::parse("committed").is_final());
        assert!(!AgentState::parse("awaiting-confirmation").is_final());
        assert_eq!(AgentState::parse(""), AgentState::Unknown(String::new()));
    }
}

//! Desired against actual, drift, and what to do about it.

use serde::{Deserialize, Serialize};

/// What a host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Desired {
    /// The commit of its `release/<host>` branch, evaluated to a closure.
    Release {
        /// The commit.
        rev: String,
        /// Its system's output path.
        closure: String,
    },
    /// A known-good mark pinned by configuration (its closure, once read from the host).
    Mark {
        /// The mark's name.
        mark: String,
        /// Its closure, when known.
        closure: Option<String>,
    },
    /// Leave the host alone.
    Hold,
    /// Nothing to converge to: no `release/<host>` branch (yet).
    NoRelease,
}

impl Desired {
    /// The closure the host should run, where there is one.
    pub fn closure(&self) -> Option<&str> {
        match self {
            Self::Release { closure, .. } => Some(closure),
            Self::Mark { closure, .. } => closure.as_deref(),
            Self::Hold | Self::NoRelease => None,
        }
    }

    /// A short name for tables: the commit's first 7 digits, `mark:<name>`, `hold`, `-`.
    pub fn short(&self) -> String {
        match self {
            Self::Release { rev, .. } => rev.chars().take(7).collect(),
            Self::Mark { mark, .. } => format!("mark:{mark}"),
            Self::Hold => "hold".into(),
            Self::NoRelease => "-".into(),
        }
    }

    /// What identifies this desired state for the memory of failed closures: a closure
    /// that failed its gates is not tried again until this changes.
    pub fn key(&self) -> Option<String> {
        match self {
            Self::Release { rev, closure } => Some(format!("{rev} {closure}")),
            Self::Mark { mark, .. } => Some(format!("mark {mark}")),
            Self::Hold | Self::NoRelease => None,
        }
    }
}

/// What a host runs, as its watcher reports it (canonical store paths; `None`: absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// `/run/current-system`: what runs.
    pub current: Option<String>,
    /// The system profile's target: what the next boot runs, what a rollback knows.
    pub profile: Option<String>,
    /// `/run/booted-system`: what the machine booted.
    pub booted: Option<String>,
    /// The closure of the host's latest known-good mark.
    pub known_good: Option<String>,
}

/// How a host runs something other than what Waymark put there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Drift {
    /// Runs (with its profile on it) a closure other than its latest known-good one:
    /// `switch-to-configuration switch` or `nixos-rebuild switch` by hand.
    HandSwitch,
    /// The profile moved and the running system did not (`nixos-rebuild boot`,
    /// `nix-env --set`): the next boot runs something else.
    ProfileNotActivated,
    /// Runs what it booted, which is not its profile: booted into another generation
    /// (the boot menu, a fallback after a failed boot).
    BootedOther,
    /// Runs the closure it should, without its known-good mark (a hand deploy of the
    /// right closure, a mark removed).
    Unmarked,
}

impl Drift {
    /// Its name in tables and events.
    pub fn name(self) -> &'static str {
        match self {
            Self::HandSwitch => "hand-switch",
            Self::ProfileNotActivated => "profile-not-activated",
            Self::BootedOther => "booted-other",
            Self::Unmarked => "unmarked",
        }
    }
}

impl Facts {
    /// The drift these facts show, if any. A host with no known-good mark at all has not
    /// been deployed by Waymark yet: its first deploy adopts it, so that is no drift.
    pub fn drift(&self) -> Option<Drift> {
        let current = self.current.as_deref()?;
        let known_good = self.known_good.as_deref()?;
        if let Some(profile) = self.profile.as_deref()
            && profile != current
        {
            return Some(if self.booted.as_deref() == Some(current) {
                Drift::BootedOther
            } else {
                Drift::ProfileNotActivated
            });
        }
        (current != known_good).then_some(Drift::HandSwitch)
    }

    /// [`Facts::drift`], told apart from what the host should run: the desired closure
    /// running unmarked is [`Drift::Unmarked`], not a hand switch.
    pub fn drift_from(&self, desired: &Desired) -> Option<Drift> {
        match self.drift() {
            Some(Drift::HandSwitch) if self.current.as_deref() == desired.closure() => {
                Some(Drift::Unmarked)
            }
            d => d,
        }
    }

    /// Whether the host runs `closure`, with its profile on it and marked known-good.
    pub fn runs(&self, closure: &str) -> bool {
        self.current.as_deref() == Some(closure)
            && self.profile.as_deref().is_none_or(|p| p == closure)
            && self.known_good.as_deref() == Some(closure)
    }
}

/// What the loop does about a host's drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Report it and leave the host as it is (a person decides).
    #[default]
    Report,
    /// Deploy the desired closure again through the gates.
    Restore,
}

/// What to do with a host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs what it should: nothing.
    Converged,
    /// Left alone (held, or nothing to converge to).
    Leave,
    /// Drift under policy `report`: say so, change nothing.
    Report(Drift),
    /// Deploy the desired state through the gates (`allow_drift` to replace a drifted
    /// system: policy `restore`).
    Deploy {
        /// Whether the deploy may replace a system that is not the latest known-good.
        allow_drift: bool,
    },
    /// The desired closure is not known yet (a pinned mark not read yet).
    Unknown,
}

/// Decides what a host needs, from what it should run and what it runs.
pub fn decide(desired: &Desired, facts: &Facts, policy: Policy) -> Decision {
    if matches!(desired, Desired::Hold | Desired::NoRelease) {
        return Decision::Leave;
    }
    let Some(closure) = desired.closure() else {
        return Decision::Unknown;
    };
    if facts.runs(closure) {
        return Decision::Converged;
    }
    match (facts.drift_from(desired), policy) {
        (Some(drift), Policy::Report) => Decision::Report(drift),
        (Some(_), Policy::Restore) => Decision::Deploy { allow_drift: true },
        (None, _) => Decision::Deploy { allow_drift: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "/nix/store/aaa-system";
    const B: &str = "/nix/store/bbb-system";
    const C: &str = "/nix/store/ccc-system";

    fn facts(current: &str, profile: &str, booted: Option<&str>, kg: Option<&str>) -> Facts {
        Facts {
            current: Some(current.into()),
            profile: Some(profile.into()),
            booted: booted.map(Into::into),
            known_good: kg.map(Into::into),
        }
    }

    fn release(closure: &str) -> Desired {
        Desired::Release {
            rev: "0123456789abcdef".into(),
            closure: closure.into(),
        }
    }

    #[test]
    fn drift_kinds_are_told_apart() {
        // Runs its known-good closure: no drift, whatever it booted.
        assert_eq!(facts(A, A, Some(C), Some(A)).drift(), None);
        // A hand switch: current and profile moved together off the mark.
        assert_eq!(
            facts(B, B, Some(A), Some(A)).drift(),
            Some(Drift::HandSwitch)
        );
        // The profile moved, the running system did not.
        assert_eq!(
            facts(A, B, Some(C), Some(A)).drift(),
            Some(Drift::ProfileNotActivated)
        );
        // Runs what it booted, which is not its profile.
        assert_eq!(
            facts(C, A, Some(C), Some(A)).drift(),
            Some(Drift::BootedOther)
        );
        // The desired closure, unmarked; another closure unmarked is a hand switch.
        assert_eq!(
            facts(B, B, None, Some(A)).drift_from(&release(B)),
            Some(Drift::Unmarked)
        );
        assert_eq!(
            facts(B, B, None, Some(A)).drift_from(&release(C)),
            Some(Drift::HandSwitch)
        );
        // Never marked (a host Waymark has not deployed yet), nothing known: no drift.
        assert_eq!(facts(B, B, None, None).drift(), None);
        assert_eq!(Facts::default().drift(), None);
        // No profile link (a host installed without one): only current against the mark.
        let no_profile = Facts {
            profile: None,
            ..facts(A, A, None, Some(A))
        };
        assert_eq!(no_profile.drift(), None);
    }

    #[test]
    fn decisions_follow_desired_facts_and_policy() {
        let good = facts(A, A, None, Some(A));
        assert_eq!(
            decide(&release(A), &good, Policy::Report),
            Decision::Converged
        );
        // A new release on an undrifted host is deployed under either policy.
        for p in [Policy::Report, Policy::Restore] {
            assert_eq!(
                decide(&release(B), &good, p),
                Decision::Deploy { allow_drift: false }
            );
        }
        // Drift: reported, or restored with the drift allowed.
        let hand = facts(C, C, None, Some(A));
        assert_eq!(
            decide(&release(A), &hand, Policy::Report),
            Decision::Report(Drift::HandSwitch)
        );
        assert_eq!(
            decide(&release(A), &hand, Policy::Restore),
            Decision::Deploy { allow_drift: true }
        );
        // Hold and no release: left alone, drift or not.
        assert_eq!(
            decide(&Desired::Hold, &hand, Policy::Restore),
            Decision::Leave
        );
        assert_eq!(
            decide(&Desired::NoRelease, &hand, Policy::Restore),
            Decision::Leave
        );
        // A pinned mark whose closure is not known yet.
        let pin = Desired::Mark {
            mark: "m".into(),
            closure: None,
        };
        assert_eq!(decide(&pin, &good, Policy::Report), Decision::Unknown);
        // The first deploy of a never-marked host.
        assert_eq!(
            decide(&release(A), &facts(B, B, None, None), Policy::Report),
            Decision::Deploy { allow_drift: false }
        );
        // Running the desired closure unmarked is not converged.
        assert_eq!(
            decide(&release(B), &facts(B, B, None, Some(A)), Policy::Report),
            Decision::Report(Drift::Unmarked)
        );
    }

    #[test]
    fn desired_keys_and_names() {
        assert_eq!(release(A).short(), "0123456");
        assert_ne!(release(A).key(), release(B).key());
        assert_eq!(Desired::Hold.key(), None);
        assert_eq!(Drift::ProfileNotActivated.name(), "profile-not-activated");
        assert_eq!(
            serde_json::to_value(Drift::BootedOther).unwrap(),
            "booted-other"
        );
    }
}

//! One host's state machine: a dirty flag (an event is never dropped, a burst is one
//! pass), backoff, `noncompliant`, and the closures that failed their gates.
//!
//! Times are milliseconds since the Unix epoch, given by the caller, so the machine is
//! persisted and restored as is and tested without a clock.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::{Decision, Drift};

/// Where a host stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing known yet (its watcher has not reported).
    #[default]
    Unknown,
    /// Runs what it should.
    Converged,
    /// Has work waiting (an event to look at, a deploy not started yet).
    Pending,
    /// A deploy runs.
    Deploying,
    /// The last attempt failed to reach or finish; retried at `next_try`.
    Backoff,
    /// The desired closure failed its gates here; the host runs its known-good closure
    /// and the closure is not tried again until the desired revision changes.
    Failed,
    /// Too many failed attempts in a row: left alone until a new event.
    Noncompliant,
    /// Drifted, under policy `report`: left as it is.
    Drifted,
    /// Held, or no release to converge to.
    Held,
}

impl Phase {
    /// Its name in tables and events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Converged => "converged",
            Self::Pending => "pending",
            Self::Deploying => "deploying",
            Self::Backoff => "backoff",
            Self::Failed => "failed",
            Self::Noncompliant => "noncompliant",
            Self::Drifted => "drifted",
            Self::Held => "held",
        }
    }
}

/// The loop's pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The first retry's wait; each further one doubles it.
    pub backoff_base_ms: u64,
    /// The longest wait between retries.
    pub backoff_cap_ms: u64,
    /// Failed attempts in a row after which a host is `noncompliant`.
    pub max_attempts: u32,
    /// The shortest time between two deploys of one host (its rate limit; other hosts
    /// are not held back by it).
    pub min_interval_ms: u64,
    /// After a deploy, how long the loop waits for the host's watcher to report what it
    /// runs before it looks at the host again.
    pub settle_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            backoff_base_ms: 5_000,
            backoff_cap_ms: 300_000,
            max_attempts: 5,
            min_interval_ms: 10_000,
            settle_ms: 1_000,
        }
    }
}

impl Timing {
    /// The wait before retry number `attempts` (1: the first retry): doubling, capped.
    pub fn backoff(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(32);
        self.backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_cap_ms)
    }
}

/// How a deploy of the host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The host runs the desired closure, known-good (`changed`: it was deployed now).
    Good {
        /// Whether something was deployed (not only found in place).
        changed: bool,
    },
    /// A gate failed or refused; the host runs what it ran before.
    GateFailed(String),
    /// It could not start or finish (unreachable, evaluation, interrupted): retried.
    Error(String),
}

/// One host's state, persisted whole by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMachine {
    /// Where it stands.
    pub phase: Phase,
    /// Something happened that the loop has not looked at yet.
    pub dirty: bool,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// Not before this time (backoff, settling).
    pub next_try_ms: Option<u64>,
    /// When its last deploy started (its rate limit).
    pub last_start_ms: Option<u64>,
    /// Why it is not converged, in one line.
    pub reason: Option<String>,
    /// Its drift, as last seen.
    pub drift: Option<Drift>,
    /// Desired states ([`crate::Desired::key`]) whose closure failed its gates here.
    pub failed: BTreeSet<String>,
    /// The desired state it was last looked at for.
    pub desired_key: Option<String>,
    /// Whether this controller run deployed something to it.
    #[serde(default)]
    pub changed: bool,
}

impl HostMachine {
    /// Records an event about the host (its facts or its desired state changed): it is
    /// dirty until the loop looks at it. `new` says the event is news (another desired
    /// state, other facts), which ends a backoff and a `noncompliant`; a repeat is
    /// only looked at.
    pub fn touch(&mut self, desired_key: Option<&str>, new: bool) {
        self.dirty = true;
        let other_desired = self.desired_key.as_deref() != desired_key;
        if other_desired {
            self.desired_key = desired_key.map(str::to_owned);
        }
        if new || other_desired {
            self.attempts = 0;
            self.next_try_ms = None;
            if matches!(self.phase, Phase::Noncompliant | Phase::Backoff) {
                self.phase = Phase::Pending;
            }
        }
    }

    /// Whether the loop should look at it now.
    pub fn due(&self, now_ms: u64, timing: &Timing) -> bool {
        self.dirty && self.phase != Phase::Deploying && self.wake_at(timing) <= now_ms
    }

    /// The earliest time it may be looked at (when dirty): after its backoff or settling
    /// and its rate limit.
    pub fn wake_at(&self, timing: &Timing) -> u64 {
        let limit = self
            .last_start_ms
            .map_or(0, |t| t.saturating_add(timing.min_interval_ms));
        self.next_try_ms.unwrap_or(0).max(limit)
    }

    /// Takes the loop's decision for a due host; returns `Some(allow_drift)` when a
    /// deploy is to start now (the phase is then `deploying`).
    pub fn settle(&mut self, decision: &Decision, now_ms: u64) -> Option<bool> {
        self.dirty = false;
        self.drift = match decision {
            Decision::Report(d) => Some(*d),
            _ => None,
        };
        match decision {
            Decision::Converged => {
                self.phase = Phase::Converged;
                self.attempts = 0;
                self.reason = None;
                None
            }
            Decision::Leave => {
                self.phase = Phase::Held;
                self.reason = None;
                None
            }
            Decision::Report(drift) => {
                self.phase = Phase::Drifted;
                self.reason = Some(format!("drift: {} (policy report)", drift.name()));
                None
            }
            Decision::Unknown => {
                self.phase = Phase::Pending;
                None
            }
            Decision::Deploy { allow_drift } => {
                if let Some(key) = &self.desired_key
                    && self.failed.contains(key)
                {
                    // Not every pass: a new release brings a new key.
                    self.phase = Phase::Failed;
                    return None;
                }
                if self.phase == Phase::Noncompliant {
                    return None;
                }
                self.phase = Phase::Deploying;
                self.last_start_ms = Some(now_ms);
                Some(*allow_drift)
            }
        }
    }

    /// Takes the end of a deploy.
    pub fn finish(&mut self, attempt: Attempt, now_ms: u64, timing: &Timing) {
        match attempt {
            Attempt::Good { changed } => {
                self.phase = Phase::Converged;
                self.attempts = 0;
                self.reason = None;
                self.changed |= changed;
                // Looked at again once the watcher had time to report the new system
                // and its mark, so a stale report does not start another deploy.
                self.dirty = true;
                self.next_try_ms = Some(now_ms + timing.settle_ms);
            }
            Attempt::GateFailed(reason) => {
                if let Some(key) = &self.desired_key {
                    self.failed.insert(key.clone());
                }
                self.phase = Phase::Failed;
                self.attempts += 1;
                self.reason = Some(reason);
                self.next_try_ms = Some(now_ms + timing.settle_ms);
            }
            Attempt::Error(reason) => {
                self.attempts += 1;
                if self.attempts >= timing.max_attempts {
                    self.phase = Phase::Noncompliant;
                    self.reason = Some(format!(
                        "noncompliant after {} failed attempts: {reason}",
                        self.attempts
                    ));
                    self.next_try_ms = None;
                    self.dirty = false;
                } else {
                    self.phase = Phase::Backoff;
                    self.reason = Some(reason);
                    self.next_try_ms = Some(now_ms + timing.backoff(self.attempts));
                    self.dirty = true;
                }
            }
        }
    }

    /// Whether it still has work: dirty (also waiting for a retry) or deploying.
    pub fn pending(&self) -> bool {
        self.phase == Phase::Deploying || (self.dirty && self.phase != Phase::Noncompliant)
    }

    /// After a restart: every host is looked at again once its watcher reports (a
    /// converged one is then found converged, not redeployed); a deploy that was
    /// running when the controller died is never taken as done.
    pub fn recover(&mut self) {
        if self.phase == Phase::Deploying {
            self.phase = Phase::Pending;
        }
        self.dirty = true;
        self.changed = false;
    }
}

/// The first host among `waits_for` (a host's `dependsOn` and build host) that still
/// has work of its own: the host is not started before it is done. A host that
/// failed or is noncompliant does not hold the others back (the deploy skips what
/// depends on a failed host by itself).
pub fn blocked_by<'a>(
    waits_for: &'a [String],
    machine: impl Fn(&str) -> Option<&'a HostMachine>,
) -> Option<&'a str> {
    waits_for
        .iter()
        .find(|d| machine(d).is_some_and(HostMachine::pending))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            backoff_base_ms: 1_000,
            backoff_cap_ms: 8_000,
            max_attempts: 4,
            min_interval_ms: 500,
            settle_ms: 100,
        }
    }

    const DEPLOY: Decision = Decision::Deploy { allow_drift: false };

    #[test]
    fn a_host_waits_for_the_hosts_it_depends_on() {
        let mut hosts = std::collections::BTreeMap::new();
        let mut db = HostMachine::default();
        db.touch(Some("r1"), true);
        hosts.insert("db".to_owned(), db);
        hosts.insert("builder".to_owned(), HostMachine::default());
        let deps = vec!["builder".to_owned(), "db".to_owned()];
        assert_eq!(blocked_by(&deps, |h| hosts.get(h)), Some("db"));
        // Deploying still blocks; converged, failed or noncompliant does not.
        let db = hosts.get_mut("db").unwrap();
        db.settle(&DEPLOY, 0);
        assert_eq!(blocked_by(&deps, |h| hosts.get(h)), Some("db"));
        hosts
            .get_mut("db")
            .unwrap()
            .finish(Attempt::GateFailed("x".into()), 0, &timing());
        assert_eq!(blocked_by(&deps, |h| hosts.get(h)), None);
        // Unknown names (not converged here) do not block.
        assert_eq!(blocked_by(&["mail".to_owned()], |h| hosts.get(h)), None);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let t = timing();
        let waits: Vec<u64> = (1..=6).map(|a| t.backoff(a)).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]);
        assert_eq!(t.backoff(u32::MAX), 8_000);
    }

    #[test]
    fn a_burst_is_one_pass_and_an_event_during_a_deploy_is_kept() {
        let t = timing();
        let mut m = HostMachine::default();
        for _ in 0..10 {
            m.touch(Some("r1"), true);
        }
        assert!(m.due(0, &t));
        assert_eq!(m.settle(&DEPLOY, 0), Some(false));
        assert!(!m.due(0, &t), "deploying: not looked at twice");
        // An event while it deploys is not lost: the host is looked at after.
        m.touch(Some("r2"), true);
        assert!(!m.due(10, &t));
        m.finish(Attempt::Good { changed: true }, 10, &t);
        assert!(m.dirty);
        assert!(!m.due(50, &t), "settling, and the rate limit");
        assert!(m.due(600, &t));
        assert_eq!(m.desired_key.as_deref(), Some("r2"));
    }

    #[test]
    fn errors_back_off_then_noncompliant_until_a_new_event() {
        let t = timing();
        let mut m = HostMachine::default();
        m.touch(Some("r1"), true);
        let mut now = 0;
        let mut waits = Vec::new();
        loop {
            assert!(m.due(now, &t), "{m:?}");
            assert_eq!(m.settle(&DEPLOY, now), Some(false));
            m.finish(Attempt::Error("ssh: connection refused".into()), now, &t);
            if m.phase == Phase::Noncompliant {
                break;
            }
            assert_eq!(m.phase, Phase::Backoff);
            let at = m.wake_at(&t);
            waits.push(at - now);
            assert!(!m.due(at - 1, &t));
            now = at;
        }
        assert_eq!(waits, [1_000, 2_000, 4_000]);
        assert_eq!(m.attempts, 4);
        assert!(m.reason.as_deref().unwrap().contains("connection refused"));
        assert!(!m.pending() && !m.due(u64::MAX, &t));
        // The same event again changes nothing; a new one resets it.
        m.touch(Some("r1"), false);
        assert_eq!(m.settle(&DEPLOY, now + 1), None);
        assert_eq!(m.phase, Phase::Noncompliant);
        m.touch(Some("r1"), true);
        assert_eq!(m.attempts, 0);
        assert!(m.due(now + 10_000, &t));
        assert_eq!(m.settle(&DEPLOY, now + 10_000), Some(false));
    }

    #[test]
    fn a_closure_that_failed_its_gates_waits_for_a_new_release() {
        let t = timing();
        let mut m = HostMachine::default();
        m.touch(Some("r1"), true);
        assert_eq!(m.settle(&DEPLOY, 0), Some(false));
        m.finish(Attempt::GateFailed("switch test failed".into()), 0, &t);
        assert_eq!(m.phase, Phase::Failed);
        // Its watcher reports the host back on known-good: looked at, not retried.
        for now in [1_000, 5_000, 60_000] {
            m.touch(Some("r1"), true);
            assert_eq!(m.settle(&DEPLOY, now), None);
            assert_eq!(m.phase, Phase::Failed);
        }
        // A newer commit is tried.
        m.touch(Some("r2"), true);
        assert_eq!(m.settle(&DEPLOY, 70_000), Some(false));
        // The memory survives a restart (it is persisted as is).
        let back: HostMachine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(back.failed.contains("r1"));
    }

    #[test]
    fn a_deploy_cut_by_a_restart_is_looked_at_again() {
        let mut m = HostMachine::default();
        m.touch(Some("r1"), true);
        m.settle(&DEPLOY, 0);
        let mut back: HostMachine =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        back.recover();
        assert_eq!(back.phase, Phase::Pending);
        assert!(back.pending() && back.due(100_000, &timing()));
    }

    #[test]
    fn report_converged_and_held_settle_without_a_deploy() {
        let mut m = HostMachine::default();
        m.touch(Some("r1"), true);
        assert_eq!(m.settle(&Decision::Report(Drift::HandSwitch), 0), None);
        assert_eq!(
            (m.phase, m.drift),
            (Phase::Drifted, Some(Drift::HandSwitch))
        );
        m.touch(Some("r1"), true);
        assert_eq!(m.settle(&Decision::Converged, 1), None);
        assert_eq!(
            (m.phase, m.drift, m.pending()),
            (Phase::Converged, None, false)
        );
        m.touch(None, true);
        assert_eq!(m.settle(&Decision::Leave, 2), None);
        assert_eq!(m.phase, Phase::Held);
    }
}

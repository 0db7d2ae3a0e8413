//! The exit status of a run, from where each host ended.

use crate::machine::{HostMachine, Phase};

/// `waymark converge`'s exit statuses (docs/converge.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Every host converged, nothing changed.
    Converged = 0,
    /// Every host converged, some by a deploy of this run.
    Changed = 2,
    /// Some hosts converged, some failed (gates, drift reported, noncompliant).
    Partial = 3,
    /// Every host that had something to converge to failed.
    AllFailed = 4,
    /// Work was still under way or waiting for a retry when the run ended.
    Pending = 5,
}

/// Counts of where hosts ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Converged (held hosts not counted).
    pub converged: usize,
    /// Converged by a deploy of this run.
    pub changed: usize,
    /// Failed, noncompliant or drifted.
    pub failed: usize,
    /// Still deploying, waiting for a retry, or never heard from.
    pub pending: usize,
}

impl Summary {
    /// Counts `hosts`.
    pub fn of<'a>(hosts: impl IntoIterator<Item = &'a HostMachine>) -> Self {
        let mut s = Self::default();
        for m in hosts {
            if m.changed {
                s.changed += 1;
            }
            if m.pending() {
                s.pending += 1;
                continue;
            }
            match m.phase {
                Phase::Converged => s.converged += 1,
                Phase::Failed | Phase::Noncompliant | Phase::Drifted => s.failed += 1,
                Phase::Held => {}
                Phase::Unknown | Phase::Pending | Phase::Deploying | Phase::Backoff => {
                    s.pending += 1;
                }
            }
        }
        s
    }

    /// The exit status.
    pub fn exit_code(&self) -> ExitCode {
        if self.pending > 0 {
            ExitCode::Pending
        } else if self.failed > 0 && self.converged > 0 {
            ExitCode::Partial
        } else if self.failed > 0 {
            ExitCode::AllFailed
        } else if self.changed > 0 {
            ExitCode::Changed
        } else {
            ExitCode::Converged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(phase: Phase, changed: bool, dirty: bool) -> HostMachine {
        HostMachine {
            phase,
            dirty,
            changed,
            ..HostMachine::default()
        }
    }

    #[test]
    fn exit_codes() {
        let code = |hosts: &[HostMachine]| Summary::of(hosts).exit_code() as u8;
        let conv = host(Phase::Converged, false, false);
        let changed = host(Phase::Converged, true, false);
        let failed = host(Phase::Failed, false, false);
        let held = host(Phase::Held, false, false);
        let waiting = host(Phase::Backoff, false, true);
        assert_eq!(code(&[conv.clone(), held.clone()]), 0);
        assert_eq!(code(&[]), 0);
        assert_eq!(code(&[conv.clone(), changed.clone()]), 2);
        assert_eq!(code(&[changed.clone(), failed.clone()]), 3);
        assert_eq!(code(&[failed.clone(), held]), 4);
        assert_eq!(
            code(&[
                host(Phase::Noncompliant, false, false),
                host(Phase::Drifted, false, false)
            ]),
            4
        );
        assert_eq!(code(&[changed, failed, waiting]), 5);
        assert_eq!(code(&[host(Phase::Unknown, false, false)]), 5);
        // A converged host looked at again after its deploy is still pending.
        assert_eq!(code(&[host(Phase::Converged, true, true)]), 5);
    }
}

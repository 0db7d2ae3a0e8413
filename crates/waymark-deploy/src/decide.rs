//! The gates' decisions about a host, apart from how its state was read: what a
//! rollback goes back to, whether there is anything to do, whether what the target
//! runs may be replaced, whether a restore left it as it was, and what the exit
//! statuses of the remote scripts mean. No I/O here: the pipeline reads the target,
//! these decide, and they are tested without a host or root.

use waymark_known_good::Record;

/// The launch script's status when another deploy holds the target's activation lock.
pub const EXIT_BUSY: i32 = 75;
/// The launch script's status when the agent could not be started (nothing activated).
pub const EXIT_AGENT_NOT_STARTED: i32 = 76;
/// The confirmation script's status when the agent's window had closed already.
pub const EXIT_CONFIRM_LATE: i32 = 3;

/// The mark a rollback goes to among a target's marks (oldest first): the latest,
/// `previous` (the latest mark of another closure than the latest's: marking one
/// closure again does not make it its own predecessor), or the mark named.
pub fn rollback_target<'r>(marks: &'r [Record], to: Option<&str>) -> Option<&'r Record> {
    let latest = marks.last();
    match to {
        None => latest,
        Some("previous") => {
            let latest = latest?;
            marks.iter().rev().find(|m| m.closure != latest.closure)
        }
        Some(name) => marks.iter().find(|m| m.mark == name),
    }
}

/// Whether the target already is where the deploy would take it: it runs `closure`,
/// boots it (its system profile), and its latest mark is that closure.
pub fn already_there(
    running: Option<&str>,
    profile: Option<&str>,
    latest: Option<&Record>,
    closure: &str,
) -> bool {
    running == Some(closure)
        && profile == Some(closure)
        && latest.is_some_and(|l| l.closure == closure)
}

/// What the target runs, against its marks: may the deploy replace it?
#[derive(Debug, Clone, PartialEq)]
pub enum Baseline<'r> {
    /// No mark yet: the first deploy (a failure restores what runs now).
    First,
    /// It runs its latest known-good closure.
    KnownGood,
    /// Another deploy's agent is at work there (its directory): not a hand deploy, and
    /// not to be overwritten now.
    Busy(String),
    /// It runs another closure than its latest mark (`latest`): a hand deploy.
    /// `allowed` where the operator said so (`--allow-drift`) or a rollback asks for
    /// exactly this.
    Drift { allowed: bool, latest: &'r Record },
}

/// The diff gate's judgement of what `running` is, given the target's latest mark and
/// the agent directory of a deploy holding its activation lock, if any.
pub fn baseline<'r>(
    latest: Option<&'r Record>,
    running: &str,
    active: Option<&str>,
    allow_drift: bool,
    rollback: bool,
) -> Baseline<'r> {
    match latest {
        None => Baseline::First,
        Some(l) if l.closure == running => Baseline::KnownGood,
        Some(l) => match active {
            Some(dir) => Baseline::Busy(dir.to_owned()),
            None => Baseline::Drift {
                allowed: allow_drift || rollback,
                latest: l,
            },
        },
    }
}

/// Whether the agent's restore left the target as it was: it runs `rollback_to`, and
/// its boot default is not the closure that failed.
pub fn restore_verified(
    running: Option<&str>,
    profile: Option<&str>,
    rollback_to: &str,
    failed: Option<&str>,
) -> bool {
    running == Some(rollback_to) && (profile.is_none() || profile != failed)
}

/// Whether the agent's commit left the target as the goal says: it runs
/// `expected_running` (the new closure, or for a boot-only goal the previous one) and
/// boots `closure`.
pub fn commit_verified(
    running: Option<&str>,
    profile: Option<&str>,
    expected_running: &str,
    closure: &str,
) -> bool {
    running == Some(expected_running) && profile == Some(closure)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G0: &str = "/nix/store/00000000000000000000000000000000-nixos-system-web1-g0";
    const G1: &str = "/nix/store/11111111111111111111111111111111-nixos-system-web1-g1";
    const G2: &str = "/nix/store/22222222222222222222222222222222-nixos-system-web1-g2";

    fn mark(name: &str, closure: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "schema": waymark_known_good::SCHEMA,
            "target": "web1",
            "mark": name,
            "seq": 1,
            "closure": closure,
            "drv": null,
            "rev": "1a2b3c4d",
            "marked_at": "2026-12-06T04:00:00Z",
            "evidence": {
                "schema": waymark_evidence::SCHEMA,
                "target": "web1",
                "closure": closure,
                "gates": []
            },
            "tool_version": "0",
            "roots": { "closure": "/x", "drv": null }
        }))
        .unwrap()
    }

    #[test]
    fn a_rollback_goes_to_the_latest_the_previous_closure_or_the_mark_named() {
        let marks = [
            mark("m1", G0),
            mark("m2", G1),
            mark("m3", G2),
            mark("m4", G2),
        ];
        assert_eq!(rollback_target(&marks, None).unwrap().mark, "m4");
        // Two marks of g2 in a row: the previous closure is g1, not g2 again.
        assert_eq!(
            rollback_target(&marks, Some("previous")).unwrap().mark,
            "m2"
        );
        assert_eq!(rollback_target(&marks, Some("m1")).unwrap().closure, G0);
        assert!(rollback_target(&marks, Some("m9")).is_none());
        assert!(rollback_target(&marks[..1], Some("previous")).is_none());
        assert!(rollback_target(&[], None).is_none());
    }

    #[test]
    fn nothing_to_do_only_where_it_runs_boots_and_is_marked_with_the_closure() {
        let latest = mark("m1", G1);
        assert!(already_there(Some(G1), Some(G1), Some(&latest), G1));
        // Runs it but boots another (a `test` activation), or is not marked with it.
        assert!(!already_there(Some(G1), Some(G0), Some(&latest), G1));
        assert!(!already_there(
            Some(G1),
            Some(G1),
            Some(&mark("m0", G0)),
            G1
        ));
        assert!(!already_there(Some(G1), Some(G1), None, G1));
    }

    #[test]
    fn drift_is_refused_unless_allowed_and_another_deploy_is_not_drift() {
        let latest = mark("m1", G1);
        assert_eq!(baseline(None, G0, None, false, false), Baseline::First);
        assert_eq!(
            baseline(Some(&latest), G1, None, false, false),
            Baseline::KnownGood
        );
        assert_eq!(
            baseline(Some(&latest), G0, None, false, false),
            Baseline::Drift {
                allowed: false,
                latest: &latest
            }
        );
        assert_eq!(
            baseline(Some(&latest), G0, None, true, false),
            Baseline::Drift {
                allowed: true,
                latest: &latest
            }
        );
        assert_eq!(
            baseline(Some(&latest), G0, None, false, true),
            Baseline::Drift {
                allowed: true,
                latest: &latest
            },
            "a rollback replaces what runs by design"
        );
        assert_eq!(
            baseline(
                Some(&latest),
                G2,
                Some("/run/waymark/deploy/r-web1"),
                false,
                false
            ),
            Baseline::Busy("/run/waymark/deploy/r-web1".into())
        );
    }

    #[test]
    fn a_restore_counts_only_where_the_old_closure_runs_and_the_failed_one_does_not_boot() {
        assert!(restore_verified(Some(G0), Some(G0), G0, Some(G1)));
        assert!(restore_verified(Some(G0), None, G0, Some(G1)));
        assert!(
            !restore_verified(Some(G1), Some(G0), G0, Some(G1)),
            "still runs it"
        );
        assert!(
            !restore_verified(Some(G0), Some(G1), G0, Some(G1)),
            "boots it"
        );
        assert!(!restore_verified(None, Some(G0), G0, Some(G1)));
    }

    #[test]
    fn a_commit_counts_only_where_the_goal_left_the_target() {
        assert!(commit_verified(Some(G1), Some(G1), G1, G1));
        // Boot-only: the previous closure runs, the new one boots.
        assert!(commit_verified(Some(G0), Some(G1), G0, G1));
        assert!(!commit_verified(Some(G1), Some(G0), G1, G1));
        assert!(!commit_verified(None, Some(G1), G1, G1));
    }

    #[test]
    fn the_scripts_statuses_are_the_ones_they_are_given() {
        // The launch and confirmation scripts are written with these constants, so they
        // agree by construction; what must hold is that none is taken by what the
        // scripts run (ssh's 255, a shell's 126/127, a signal's 128+N, 0 and 1).
        for code in [EXIT_BUSY, EXIT_AGENT_NOT_STARTED, EXIT_CONFIRM_LATE] {
            assert!(code > 1 && code < 126, "{code}");
        }
        let distinct: std::collections::BTreeSet<i32> =
            [EXIT_BUSY, EXIT_AGENT_NOT_STARTED, EXIT_CONFIRM_LATE].into();
        assert_eq!(distinct.len(), 3);
    }
}

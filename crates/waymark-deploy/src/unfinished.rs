//! What an interrupted deploy left unfinished on a host, and how the next deploy tells
//! it from a hand deploy.
//!
//! A deploy commits on the target (its agent, once confirmed) before it marks the
//! closure known-good there, on the build host and here. A deployer stopped in between
//! (Ctrl-C, SIGTERM, SIGKILL, a connection cut after the confirmation landed) leaves a
//! host that runs a committed closure with some of its marks missing. Two records make
//! that tellable: the confirmation leaves the deploy's evidence in the agent's
//! directory on the target before it confirms ([`AgentSeen`]), and this machine keeps
//! a journal of the deploy (the same evidence) until its record is written
//! ([`Journal`]). From those, [`unfinished`] decides; no I/O here.

use std::path::{Path, PathBuf};

use waymark_evidence::{Evidence, Gate};
use waymark_known_good::Record;

use crate::activation::AgentState;

/// An agent's directory on the target whose deploy left its evidence there and did not
/// say it marked the closure, as the probe read it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSeen {
    /// `/run/waymark/deploy/<run>-<host>`.
    pub dir: String,
    /// The agent's last state.
    pub state: AgentState,
    /// The evidence the confirmation left; `None` when it is not readable.
    pub evidence: Option<Evidence>,
}

/// A deploy's journal on this machine: written before the confirmation, removed once
/// the deploy's record is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Journal {
    pub path: PathBuf,
    pub evidence: Evidence,
}

/// What the target says of itself, from the probe.
pub struct TargetNow<'a> {
    pub host: &'a str,
    pub running: Option<&'a str>,
    /// Where the system profile points (the boot default).
    pub profile: Option<&'a str>,
    /// Its latest known-good mark.
    pub latest: Option<&'a Record>,
}

/// What the next deploy finishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Unfinished {
    /// Waymark's agent committed this closure after every gate to the commit passed and
    /// the target still runs it as committed, but the deploy ended before its marks:
    /// mark it on the target (unless its latest mark is that closure already), then on
    /// the build host and here.
    Committed {
        dir: String,
        evidence: Box<Evidence>,
        mark_target: bool,
    },
    /// The target's latest mark is this machine's interrupted deploy: the build host's
    /// mark, this machine's record and the release tag are missing.
    Marked { record: Box<Record> },
}

impl Unfinished {
    /// The closure the unfinished deploy committed.
    pub fn closure(&self) -> &str {
        match self {
            Self::Committed { evidence, .. } => &evidence.closure,
            Self::Marked { record } => &record.closure,
        }
    }
}

/// Whether `evidence` is of a deploy that commits only the boot default (the target
/// keeps running what it ran).
fn boot_only(evidence: &Evidence) -> bool {
    evidence.gates.iter().any(|g| g.gate == Gate::Boot)
}

/// What an interrupted deploy left on the host, if anything. `recorded` says whether
/// this machine holds the record of a mark.
///
/// Only what the agent's own states prove is finished: a committed agent whose closure
/// the target still runs as committed (the profile, and the running system unless the
/// goal was `boot`); or this machine's journal of the closure the target's latest mark
/// and running system are, with no record of that mark here. Anything else (an agent
/// still at work, a target switched since, another machine's deploy) is left to the
/// drift check.
pub fn unfinished(
    now: &TargetNow<'_>,
    agents: &[AgentSeen],
    journals: &[Journal],
    recorded: impl Fn(&Record) -> bool,
) -> Option<Unfinished> {
    // Newest first: the directories are named after their run, which begins with its
    // UTC time.
    let mut newest_first: Vec<&AgentSeen> = agents.iter().collect();
    newest_first.sort_by(|a, b| b.dir.cmp(&a.dir));
    let committed = newest_first.into_iter().find_map(|a| {
        let e = a.evidence.as_ref()?;
        let holds = a.state == AgentState::Committed
            && e.target == now.host
            && e.rev.is_some()
            && now.profile == Some(e.closure.as_str())
            && (boot_only(e) || now.running == Some(e.closure.as_str()));
        holds.then(|| (a.dir.clone(), Box::new(e.clone())))
    });
    if let Some((dir, evidence)) = committed {
        let mark_target = now.latest.is_none_or(|l| l.closure != evidence.closure);
        return Some(Unfinished::Committed {
            dir,
            evidence,
            mark_target,
        });
    }
    let latest = now.latest?;
    let ours = journals
        .iter()
        .any(|j| j.evidence.target == now.host && same_deploy(&j.evidence, &latest.evidence));
    let runs_it = now.profile == Some(latest.closure.as_str())
        && (boot_only(&latest.evidence) || now.running == Some(latest.closure.as_str()));
    (ours && runs_it && !recorded(latest)).then(|| Unfinished::Marked {
        record: Box::new(latest.clone()),
    })
}

/// Whether two evidence documents are of one deploy: the same closure and commit, and
/// the same first gate started at the same time (a mark made of the same closure by
/// another run or by hand has other gates, or none).
pub fn same_deploy(a: &Evidence, b: &Evidence) -> bool {
    let first = |e: &Evidence| e.gates.first().map(|g| (g.gate, g.started_at.clone()));
    a.closure == b.closure && a.rev == b.rev && first(a).is_some() && first(a) == first(b)
}

/// Where this machine keeps the journals of `host`'s deploys under way.
pub fn journal_dir(records_dir: &Path, host: &str) -> PathBuf {
    records_dir.join(".under-way").join(host)
}

/// The journals of `host` kept in `records_dir`; unreadable ones are skipped (a
/// journal only ever adds a completion, never blocks a deploy).
pub fn read_journals(records_dir: &Path, host: &str) -> Vec<Journal> {
    std::fs::read_dir(journal_dir(records_dir, host))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let evidence = Evidence::parse(&std::fs::read(e.path()).ok()?).ok()?;
            Some(Journal {
                path: e.path(),
                evidence,
            })
        })
        .collect()
}

/// Reads the probe's `agent=`, `agent-state=` and `agent-evidence=` lines, which come
/// in that order, one of each per directory.
pub fn parse_agents(lines: &str) -> Vec<AgentSeen> {
    let mut agents: Vec<AgentSeen> = Vec::new();
    for line in lines.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match (key, agents.last_mut()) {
            ("agent", _) => agents.push(AgentSeen {
                dir: value.to_owned(),
                state: AgentState::Unknown(String::new()),
                evidence: None,
            }),
            ("agent-state", Some(a)) => a.state = AgentState::parse(value),
            ("agent-evidence", Some(a)) => a.evidence = Evidence::parse(value.as_bytes()).ok(),
            _ => {}
        }
    }
    agents
}

#[cfg(test)]
mod tests {
    use super::*;
    use waymark_evidence::{GateResult, Outcome};

    const G0: &str = "/nix/store/00000000000000000000000000000000-nixos-system-web1-g0";
    const G1: &str = "/nix/store/11111111111111111111111111111111-nixos-system-web1-g1";

    fn evidence(closure: &str, last: Gate) -> Evidence {
        let gate = |gate| GateResult {
            gate,
            result: Outcome::Passed,
            started_at: "2026-12-06T04:00:00Z".into(),
            duration_ms: 1,
            summary: None,
        };
        Evidence {
            schema: waymark_evidence::SCHEMA.into(),
            target: "web1".into(),
            closure: closure.into(),
            drv: None,
            rev: Some("1a2b3c4d".into()),
            gates: vec![gate(Gate::Build), gate(Gate::Test), gate(last)],
            diff: None,
        }
    }

    fn record(closure: &str) -> Record {
        let e = evidence(closure, Gate::Switch);
        serde_json::from_value(serde_json::json!({
            "schema": waymark_known_good::SCHEMA,
            "target": "web1",
            "mark": "20261206T040000Z-1a2b3c4",
            "seq": 1,
            "closure": closure,
            "drv": null,
            "rev": "1a2b3c4d",
            "marked_at": "2026-12-06T04:00:00Z",
            "evidence": e,
            "tool_version": "0",
            "roots": { "closure": "/x", "drv": null }
        }))
        .unwrap()
    }

    fn agent(dir: &str, state: &str, e: Option<Evidence>) -> AgentSeen {
        AgentSeen {
            dir: dir.into(),
            state: AgentState::parse(state),
            evidence: e,
        }
    }

    fn now<'a>(running: &'a str, profile: &'a str, latest: Option<&'a Record>) -> TargetNow<'a> {
        TargetNow {
            host: "web1",
            running: Some(running),
            profile: Some(profile),
            latest,
        }
    }

    #[test]
    fn a_committed_agent_whose_closure_runs_is_finished_not_drift() {
        let old = record(G0);
        let agents = [agent(
            "/run/waymark/deploy/r1-web1",
            "committed",
            Some(evidence(G1, Gate::Switch)),
        )];
        let got = unfinished(&now(G1, G1, Some(&old)), &agents, &[], |_| true);
        assert_eq!(
            got,
            Some(Unfinished::Committed {
                dir: "/run/waymark/deploy/r1-web1".into(),
                evidence: Box::new(evidence(G1, Gate::Switch)),
                mark_target: true
            })
        );
        // Its mark made already (the mark ran, the note that it did was lost): the
        // target is not marked twice.
        let marked = record(G1);
        let got = unfinished(&now(G1, G1, Some(&marked)), &agents, &[], |_| false);
        assert!(matches!(
            got,
            Some(Unfinished::Committed {
                mark_target: false,
                ..
            })
        ));
    }

    #[test]
    fn what_the_agent_does_not_prove_is_left_to_the_drift_check() {
        let old = record(G0);
        let e = || Some(evidence(G1, Gate::Switch));
        for (agents, running, profile) in [
            // Switched by hand since the agent committed.
            (vec![agent("/d/r1-web1", "committed", e())], G0, G1),
            (vec![agent("/d/r1-web1", "committed", e())], G1, G0),
            // Still at work, restored, or kept (goal test): nothing committed.
            (vec![agent("/d/r1-web1", "committing", e())], G1, G1),
            (
                vec![agent("/d/r1-web1", "restored:confirm-timeout", e())],
                G1,
                G1,
            ),
            (vec![agent("/d/r1-web1", "kept", e())], G1, G1),
            // No readable evidence.
            (vec![agent("/d/r1-web1", "committed", None)], G1, G1),
        ] {
            assert_eq!(
                unfinished(&now(running, profile, Some(&old)), &agents, &[], |_| true),
                None
            );
        }
        // Another host's agent.
        let mut other = evidence(G1, Gate::Switch);
        other.target = "web2".into();
        let agents = [agent("/d/r1-web2", "committed", Some(other))];
        assert_eq!(
            unfinished(&now(G1, G1, Some(&old)), &agents, &[], |_| true),
            None
        );
    }

    #[test]
    fn the_boot_goal_commits_the_profile_only() {
        let agents = [agent(
            "/d/r1-web1",
            "committed",
            Some(evidence(G1, Gate::Boot)),
        )];
        assert!(unfinished(&now(G0, G1, None), &agents, &[], |_| true).is_some());
        let agents = [agent(
            "/d/r1-web1",
            "committed",
            Some(evidence(G1, Gate::Switch)),
        )];
        assert_eq!(unfinished(&now(G0, G1, None), &agents, &[], |_| true), None);
    }

    #[test]
    fn the_newest_agent_counts() {
        let agents = [
            agent(
                "/d/20261205T000000Z-1-web1",
                "committed",
                Some(evidence(G0, Gate::Switch)),
            ),
            agent(
                "/d/20261206T000000Z-1-web1",
                "committed",
                Some(evidence(G1, Gate::Switch)),
            ),
        ];
        let got = unfinished(&now(G1, G1, None), &agents, &[], |_| true).unwrap();
        assert_eq!(got.closure(), G1);
    }

    #[test]
    fn a_marked_target_is_finished_here_only_from_this_machines_journal() {
        let latest = record(G1);
        let journal = Journal {
            path: "/state/j.json".into(),
            evidence: evidence(G1, Gate::Switch),
        };
        let got = unfinished(
            &now(G1, G1, Some(&latest)),
            &[],
            std::slice::from_ref(&journal),
            |_| false,
        );
        assert_eq!(
            got,
            Some(Unfinished::Marked {
                record: Box::new(latest.clone())
            })
        );
        // A mark of the same closure and commit made by another run is not this one's.
        let mut elsewhere = latest.clone();
        elsewhere.evidence.gates[0].started_at = "2026-12-06T05:00:00Z".into();
        assert_eq!(
            unfinished(
                &now(G1, G1, Some(&elsewhere)),
                &[],
                std::slice::from_ref(&journal),
                |_| false
            ),
            None
        );
        // Recorded already, no journal (another machine's deploy), or it no longer runs.
        assert_eq!(
            unfinished(
                &now(G1, G1, Some(&latest)),
                &[],
                std::slice::from_ref(&journal),
                |_| true
            ),
            None
        );
        assert_eq!(
            unfinished(&now(G1, G1, Some(&latest)), &[], &[], |_| false),
            None
        );
        assert_eq!(
            unfinished(&now(G0, G0, Some(&latest)), &[], &[journal], |_| false),
            None
        );
    }

    #[test]
    fn reads_the_probes_agent_lines() {
        let e = serde_json::to_string(&evidence(G1, Gate::Switch)).unwrap();
        let out = format!(
            "running={G1}\nagent=/run/waymark/deploy/a-web1\nagent-state=committed\nagent-evidence={e}\n\
             agent=/run/waymark/deploy/b-web1\nagent-state=\nagent-evidence=not json\n"
        );
        let agents = parse_agents(&out);
        assert_eq!(agents.len(), 2);
        assert_eq!(agents[0].state, AgentState::Committed);
        assert_eq!(agents[0].evidence.as_ref().unwrap().closure, G1);
        assert_eq!(agents[1].evidence, None);
    }
}

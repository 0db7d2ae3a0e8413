//! The queue's words and its decisions, as pure functions: what a submission does to the
//! jobs of its deployment, what a cancel does to a job in each phase, which queued job
//! runs next (fair share), what a restart does to a job it finds running, and what a
//! deployment's state is. No I/O: the storage and the runner apply what these decide.

use serde::{Deserialize, Serialize};

/// How a submission treats the jobs its deployment already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Supersede the queued job; cancel a running one that is still evaluating or
    /// building (an activation finishes or restores first).
    #[default]
    Replace,
    /// Wait behind the running job (never cancelled); a queued job is superseded, so
    /// at most one waits: the newest.
    Queue,
    /// Refuse (409) while a job is queued or running.
    Reject,
    /// The queued or running job with the same kind, revision and configuration, if
    /// any; otherwise as `replace`.
    Attach,
}

/// Priority classes, highest first; within a class, tenants share fairly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Before everything else.
    High,
    /// The default.
    #[default]
    Normal,
    /// After every other class.
    Low,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Self; 3] = [Self::High, Self::Normal, Self::Low];

    /// The stored name (also the JSON name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The class of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The rank stored beside the name, for ordering in SQL (0 first).
    pub fn rank(self) -> i64 {
        match self {
            Self::High => 0,
            Self::Normal => 1,
            Self::Low => 2,
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Deploy the deployment's source.
    Deploy,
    /// Deploy with the configuration `null` (the flake removes what it added), then
    /// forget the deployment.
    Teardown,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Teardown => "teardown",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "deploy" => Some(Self::Deploy),
            "teardown" => Some(Self::Teardown),
            _ => None,
        }
    }
}

/// A job's state. `queued` and `running` are live; the rest are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Waiting for a worker (at most one per deployment, enforced by the database).
    Queued,
    /// Claimed by a worker (at most one per deployment, enforced by the database).
    Running,
    /// Every host good: deployed, or already running this closure known-good.
    Succeeded,
    /// A gate failed or nothing could start; every host runs what it ran before.
    Failed,
    /// Cancelled with a reason (before activation, or restored after it).
    Cancelled,
    /// A newer job of the same deployment took its place before it ran.
    Superseded,
    /// The service stopped after its activation began and cannot tell how it ended:
    /// never replayed; the next deploy of its hosts finishes or refuses it.
    NeedsReconcile,
}

impl JobState {
    /// Every state.
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::Superseded,
        Self::NeedsReconcile,
    ];

    /// The stored name (also the JSON name).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
            Self::NeedsReconcile => "needs-reconcile",
        }
    }

    /// The state of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// How far a running job got: what a cancel and a restart may do depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not started, or evaluating the fleet.
    Evaluating,
    /// Building closures (and the checks before activation: diff, dry-activate).
    Building,
    /// A host's activation began (switch test onwards): never torn, never replayed.
    Activating,
}

impl Phase {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Evaluating => "evaluating",
            Self::Building => "building",
            Self::Activating => "activating",
        }
    }

    /// The phase of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Evaluating, Self::Building, Self::Activating]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The phase a deploy event moves a job to (never back), from the event's `event`
    /// and `gate` fields (docs/deploy-events-schema.json).
    #[must_use]
    pub fn after_event(self, event: &str, gate: Option<&str>) -> Self {
        let next = match (event, gate) {
            // The switch test is the first gate that changes what a host runs.
            ("start", Some("test" | "switch" | "boot")) => Self::Activating,
            ("start" | "build", _) => Self::Building,
            _ => self,
        };
        self.max(next)
    }
}

/// The job a submission meets, as far as its mode cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The job's id.
    pub id: i64,
    /// Its kind.
    pub kind: JobKind,
    /// Its source: revision and the hash of its configuration.
    pub source: String,
    /// Where a running job is (`Evaluating` for a queued one).
    pub phase: Phase,
}

/// What a submission does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submit {
    /// Refused: a job is queued or running (`reject`). 409.
    Conflict {
        /// The job in the way.
        id: i64,
    },
    /// The existing job stands for the submission (`attach`). 200.
    Attach {
        /// That job.
        id: i64,
    },
    /// A new queued job. 201.
    Enqueue {
        /// The queued job it supersedes.
        supersede: Option<i64>,
        /// The running job to cancel (still evaluating or building).
        cancel_running: Option<i64>,
    },
}

/// Decides what a submission of `kind` with `source` does, given the deployment's queued
/// and running jobs.
pub fn decide_submit(
    mode: Mode,
    kind: JobKind,
    source: &str,
    queued: Option<&Existing>,
    running: Option<&Existing>,
) -> Submit {
    let same = |e: &&Existing| e.kind == kind && e.source == source;
    match mode {
        Mode::Reject => {
            if let Some(e) = queued.or(running) {
                return Submit::Conflict { id: e.id };
            }
        }
        Mode::Attach => {
            if let Some(e) = queued.filter(same).or(running.filter(same)) {
                return Submit::Attach { id: e.id };
            }
        }
        Mode::Queue => {
            return Submit::Enqueue {
                supersede: queued.map(|e| e.id),
                cancel_running: None,
            };
        }
        Mode::Replace => {}
    }
    Submit::Enqueue {
        supersede: queued.map(|e| e.id),
        cancel_running: running
            .filter(|r| cancel_action(r.phase, Cause::Superseded) == CancelAction::Signal)
            .map(|r| r.id),
    }
}

/// Why a running job is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A person (or panel) cancelled it with a reason.
    Requested,
    /// A newer job replaced it.
    Superseded,
}

/// What a cancel does to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAction {
    /// Stop it through the engine's cancel: before activation nothing was touched; once
    /// a host's agent runs, it is confirmed nothing more and restores by itself.
    Signal,
    /// Leave it: its activation finishes (a newer job waits behind it).
    LetFinish,
}

/// Decides what a cancel does to a running job in `phase`: a requested cancel always
/// stops it (an activation restores, never torn); a supersede never interrupts an
/// activation, which finishes first.
pub fn cancel_action(phase: Phase, cause: Cause) -> CancelAction {
    match (cause, phase) {
        (Cause::Requested, _) | (Cause::Superseded, Phase::Evaluating | Phase::Building) => {
            CancelAction::Signal
        }
        (Cause::Superseded, Phase::Activating) => CancelAction::LetFinish,
    }
}

/// What a restart does to a job it finds `running` (its worker died with the service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Back to the queue: nothing was activated.
    Requeue,
    /// A newer job is already queued: this one is superseded by it.
    Supersede,
    /// Cancelled before activation: it ends cancelled, not re-run.
    Cancel,
    /// Its activation began: never replayed; the next deploy finishes or refuses it.
    Reconcile,
}

/// Decides what a restart does to a job found running in `phase`.
pub fn recover(phase: Phase, cancel_requested: bool, newer_queued: bool) -> Recovery {
    match phase {
        Phase::Activating => Recovery::Reconcile,
        Phase::Evaluating | Phase::Building if cancel_requested => Recovery::Cancel,
        Phase::Evaluating | Phase::Building if newer_queued => Recovery::Supersede,
        Phase::Evaluating | Phase::Building => Recovery::Requeue,
    }
}

/// Decides a finished run's state from its worst host result and whether it was
/// cancelled: good hosts are a success even when a cancel came too late to stop them;
/// a host that needs a human (restore failed or unverifiable) needs reconciling.
pub fn final_state(result: &str, cancelled: bool) -> JobState {
    match result {
        "deployed" | "unchanged" => JobState::Succeeded,
        "needs-human" => JobState::NeedsReconcile,
        "cancelled" => JobState::Cancelled,
        _ if cancelled => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

/// A deployment's state, as the panel shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Nothing queued or running; the last job (if any) did not fail.
    Idle,
    /// A job waits, none runs.
    Queued,
    /// A deploy job evaluates or builds.
    Building,
    /// A deploy job activates hosts.
    Deploying,
    /// A teardown job runs.
    Destroying,
    /// Nothing queued or running, and the last finished job failed (or needs a human).
    Failed,
}

/// Decides a deployment's state from its running job, whether one is queued, and how its
/// last finished job ended (superseded and cancelled jobs do not count as an end).
pub fn deployment_state(
    running: Option<(JobKind, Phase)>,
    queued: bool,
    last_final: Option<JobState>,
) -> DeploymentState {
    match running {
        Some((JobKind::Teardown, _)) => DeploymentState::Destroying,
        Some((JobKind::Deploy, Phase::Activating)) => DeploymentState::Deploying,
        Some((JobKind::Deploy, _)) => DeploymentState::Building,
        None if queued => DeploymentState::Queued,
        None => match last_final {
            Some(JobState::Failed | JobState::NeedsReconcile) => DeploymentState::Failed,
            _ => DeploymentState::Idle,
        },
    }
}

/// A queued job that could run now, as the fair-share pick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The job.
    pub id: i64,
    /// Its tenant.
    pub tenant: String,
    /// Its class.
    pub priority: Priority,
}

/// Picks the next job: the highest class with a candidate; within it, the tenant with
/// the fewest running jobs (ties: the one whose oldest candidate is oldest); that
/// tenant's oldest candidate. `candidates` are oldest first; `running` counts running
/// jobs per tenant.
pub fn pick_next<'a>(
    candidates: &'a [Candidate],
    running: &dyn Fn(&str) -> usize,
) -> Option<&'a Candidate> {
    let class = candidates.iter().map(|c| c.priority).min()?;
    // The first candidate of each tenant in the class is that tenant's oldest; `min_by_key`
    // keeps the first of equal keys, so ties go to the oldest.
    candidates
        .iter()
        .filter(|c| c.priority == class)
        .min_by_key(|c| running(&c.tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, kind: JobKind, source: &str, phase: Phase) -> Existing {
        Existing {
            id,
            kind,
            source: source.into(),
            phase,
        }
    }

    #[test]
    fn replace_supersedes_the_queued_and_cancels_a_building_job() {
        let q = job(2, JobKind::Deploy, "a", Phase::Evaluating);
        let r = job(1, JobKind::Deploy, "b", Phase::Building);
        assert_eq!(
            decide_submit(Mode::Replace, JobKind::Deploy, "c", Some(&q), Some(&r)),
            Submit::Enqueue {
                supersede: Some(2),
                cancel_running: Some(1)
            }
        );
    }

    #[test]
    fn replace_never_cancels_an_activation() {
        let r = job(1, JobKind::Deploy, "b", Phase::Activating);
        assert_eq!(
            decide_submit(Mode::Replace, JobKind::Deploy, "c", None, Some(&r)),
            Submit::Enqueue {
                supersede: None,
                cancel_running: None
            }
        );
    }

    #[test]
    fn queue_waits_behind_the_running_job_and_keeps_one_waiting() {
        let q = job(2, JobKind::Deploy, "a", Phase::Evaluating);
        let r = job(1, JobKind::Deploy, "b", Phase::Building);
        assert_eq!(
            decide_submit(Mode::Queue, JobKind::Deploy, "c", Some(&q), Some(&r)),
            Submit::Enqueue {
                supersede: Some(2),
                cancel_running: None
            }
        );
    }

    #[test]
    fn reject_refuses_while_anything_is_queued_or_running() {
        let r = job(1, JobKind::Deploy, "b", Phase::Building);
        assert_eq!(
            decide_submit(Mode::Reject, JobKind::Deploy, "c", None, Some(&r)),
            Submit::Conflict { id: 1 }
        );
        assert_eq!(
            decide_submit(Mode::Reject, JobKind::Deploy, "c", None, None),
            Submit::Enqueue {
                supersede: None,
                cancel_running: None
            }
        );
    }

    #[test]
    fn attach_finds_the_same_source_only() {
        let q = job(2, JobKind::Deploy, "a", Phase::Evaluating);
        let r = job(1, JobKind::Deploy, "b", Phase::Building);
        assert_eq!(
            decide_submit(Mode::Attach, JobKind::Deploy, "b", Some(&q), Some(&r)),
            Submit::Attach { id: 1 }
        );
        assert_eq!(
            decide_submit(Mode::Attach, JobKind::Deploy, "a", Some(&q), Some(&r)),
            Submit::Attach { id: 2 }
        );
        // A teardown is not the same job as a deploy of the same source.
        assert!(matches!(
            decide_submit(Mode::Attach, JobKind::Teardown, "a", Some(&q), None),
            Submit::Enqueue {
                supersede: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn a_requested_cancel_always_signals_a_supersede_spares_activations() {
        for phase in [Phase::Evaluating, Phase::Building, Phase::Activating] {
            assert_eq!(cancel_action(phase, Cause::Requested), CancelAction::Signal);
        }
        assert_eq!(
            cancel_action(Phase::Activating, Cause::Superseded),
            CancelAction::LetFinish
        );
    }

    #[test]
    fn recovery_requeues_before_activation_and_never_replays_after() {
        assert_eq!(recover(Phase::Building, false, false), Recovery::Requeue);
        assert_eq!(recover(Phase::Evaluating, false, true), Recovery::Supersede);
        assert_eq!(recover(Phase::Building, true, false), Recovery::Cancel);
        assert_eq!(
            recover(Phase::Activating, false, false),
            Recovery::Reconcile
        );
        assert_eq!(recover(Phase::Activating, true, true), Recovery::Reconcile);
    }

    #[test]
    fn phases_only_move_forward() {
        let p = Phase::Evaluating.after_event("build", None);
        assert_eq!(p, Phase::Building);
        let p = p.after_event("start", Some("test"));
        assert_eq!(p, Phase::Activating);
        assert_eq!(p.after_event("start", Some("build")), Phase::Activating);
        assert_eq!(
            Phase::Evaluating.after_event("start", Some("dry-activate")),
            Phase::Building
        );
    }

    #[test]
    fn final_states() {
        assert_eq!(final_state("unchanged", false), JobState::Succeeded);
        assert_eq!(final_state("deployed", true), JobState::Succeeded);
        assert_eq!(final_state("failed", true), JobState::Cancelled);
        assert_eq!(final_state("error", false), JobState::Failed);
        assert_eq!(final_state("needs-human", true), JobState::NeedsReconcile);
    }

    #[test]
    fn deployment_states() {
        use DeploymentState as D;
        assert_eq!(
            deployment_state(Some((JobKind::Teardown, Phase::Building)), true, None),
            D::Destroying
        );
        assert_eq!(
            deployment_state(Some((JobKind::Deploy, Phase::Activating)), false, None),
            D::Deploying
        );
        assert_eq!(
            deployment_state(Some((JobKind::Deploy, Phase::Evaluating)), false, None),
            D::Building
        );
        assert_eq!(
            deployment_state(None, true, Some(JobState::Failed)),
            D::Queued
        );
        assert_eq!(
            deployment_state(None, false, Some(JobState::Failed)),
            D::Failed
        );
        assert_eq!(
            deployment_state(None, false, Some(JobState::Succeeded)),
            D::Idle
        );
        assert_eq!(deployment_state(None, false, None), D::Idle);
    }

    #[test]
    fn fair_share_within_the_highest_class() {
        let c = |id, tenant: &str, priority| Candidate {
            id,
            tenant: tenant.into(),
            priority,
        };
        let cands = vec![
            c(1, "a", Priority::Normal),
            c(2, "a", Priority::Normal),
            c(3, "b", Priority::Normal),
            c(4, "c", Priority::Low),
        ];
        // Tenant a runs two jobs, b none: b goes first although a's job is older.
        let running = |t: &str| if t == "a" { 2 } else { 0 };
        assert_eq!(pick_next(&cands, &running).map(|c| c.id), Some(3));
        // Equal shares: the oldest.
        assert_eq!(pick_next(&cands, &|_| 0).map(|c| c.id), Some(1));
        // A higher class wins over any share.
        let mut with_high = cands.clone();
        with_high.push(c(5, "a", Priority::High));
        assert_eq!(pick_next(&with_high, &running).map(|c| c.id), Some(5));
        assert_eq!(pick_next(&[], &|_| 0), None);
    }
}

//! The storage interface the service is written against: one trait, synchronous (called
//! from `spawn_blocking`), whose every method is one transaction. The `SQLite` backend is
//! `sqlite.rs`; a `PostgreSQL` one implements the same methods (a claim is `SELECT … FOR
//! UPDATE SKIP LOCKED`, a submission locks its deployment's row).

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::model::{Cause, JobKind, JobState, Mode, Phase, Priority, Recovery};

/// A deployment: a selection of the fleet's hosts and where its source comes from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Deployment {
    /// Its name, unique within its tenant.
    pub name: String,
    /// Its tenant (never shown to another).
    #[serde(skip)]
    pub tenant: String,
    /// The fleet's flake (FLAKE or FLAKE#ATTR), without a revision.
    pub flake: String,
    /// The hosts: names, `@tag`, globs, as `waymark deploy --on` takes them.
    pub hosts: Vec<String>,
    /// The goal of its deploys (`switch` unless said).
    pub goal: String,
    /// The flake input the job's configuration document is given as.
    pub config_input: String,
    /// The revision of its newest submitted job.
    pub desired_rev: Option<String>,
    /// The revision its last succeeded deploy applied.
    pub applied_rev: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A job, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub tenant: String,
    pub deployment: String,
    pub kind: JobKind,
    pub state: JobState,
    pub phase: Phase,
    pub priority: Priority,
    pub mode: Mode,
    pub rev: String,
    /// The configuration document (JSON), if any.
    pub config: Option<Value>,
    /// The revision and the configuration's hash: what `attach` compares.
    pub source: String,
    pub idempotency_key: Option<String>,
    /// Why it ended as it did (cancel reason, failure, superseding job).
    pub reason: Option<String>,
    /// The deploy's worst host result (`deployed`, `unchanged`, `failed`, …).
    pub result: Option<String>,
    /// Nix's build counters, summed over the hosts.
    pub counters: Value,
    /// Per host: gate reached, result, change.
    pub hosts: Value,
    pub superseded_by: Option<i64>,
    /// Set while a cancel of the running job is pending.
    pub cancel_requested: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A submission.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    pub deployment: String,
    pub kind: JobKind,
    pub priority: Priority,
    pub mode: Mode,
    pub rev: String,
    pub config: Option<Value>,
    pub source: String,
    pub idempotency_key: Option<String>,
    /// A hash of the whole request: the same key with another request is refused.
    pub request_hash: String,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job (its superseded and cancelled predecessors named in the events).
    Created(Job),
    /// An existing job stands for it (attach, or the same idempotency key).
    Existing(Job),
    /// Refused: this job is queued or running (`reject`).
    Conflict(Job),
    /// The idempotency key was used for another request.
    KeyReused,
    /// No such deployment (or another tenant's).
    NoDeployment,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// The job was queued: it is cancelled now.
    Now(Job),
    /// The job runs: the cancel is pending, the worker stops it.
    Pending(Job),
    /// The job had already ended.
    AlreadyFinal(Job),
    /// No such job (or another tenant's).
    NotFound,
}

/// One stored event: the stream SSE and polling read, in `seq` order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventRow {
    /// Sequence number, increasing over the whole service.
    pub seq: i64,
    /// The job.
    pub job: i64,
    /// The deployment.
    pub deployment: String,
    /// The event (`type` says which).
    pub data: Value,
}

/// Which jobs a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub deployment: Option<String>,
    pub state: Option<JobState>,
    /// Only jobs older than this id (the cursor).
    pub before: Option<i64>,
    pub limit: usize,
}

/// A deployment's running job (kind, phase), whether one is queued, and its last
/// finished job's state.
pub type LiveJobs = (Option<(JobKind, Phase)>, bool, Option<JobState>);

/// Queue depth of one class.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Depth {
    pub priority: Priority,
    pub queued: i64,
    pub running: i64,
}

/// The storage.
pub trait Store: Send + Sync + 'static {
    /// Creates or updates a deployment (its source settings); the stored one.
    fn put_deployment(&self, d: &Deployment) -> Result<Deployment>;
    /// A tenant's deployment.
    fn deployment(&self, tenant: &str, name: &str) -> Result<Option<Deployment>>;
    /// A tenant's deployments by name, after `after`.
    fn deployments(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>>;
    /// Forgets a deployment that was never deployed and has no live job; whether it did.
    fn forget(&self, tenant: &str, name: &str) -> Result<bool>;
    /// The deployment's running job (kind, phase), whether one is queued, and its last
    /// finished job's state: what its state is decided from.
    fn deployment_jobs(&self, tenant: &str, name: &str) -> Result<LiveJobs>;
    /// Submits a job under its mode (`model::decide_submit`), in one transaction.
    fn submit(&self, job: &NewJob) -> Result<Submitted>;
    /// A tenant's job.
    fn job(&self, tenant: &str, id: i64) -> Result<Option<Job>>;
    /// A tenant's jobs, newest first.
    fn jobs(&self, tenant: &str, filter: &JobFilter) -> Result<Vec<Job>>;
    /// Cancels a tenant's job with a reason.
    fn cancel(&self, tenant: &str, id: i64, reason: &str) -> Result<Cancelled>;
    /// Claims the next job for `worker` (fair share, host locks), if any can run.
    fn claim(&self, worker: &str) -> Result<Option<Job>>;
    /// Records a running job's progress, if `worker` still holds it.
    fn progress(
        &self,
        worker: &str,
        id: i64,
        phase: Phase,
        counters: &Value,
        hosts: &Value,
    ) -> Result<()>;
    /// Ends a running job that `worker` still holds; releases its hosts. A succeeded
    /// teardown forgets its deployment. A job taken over by another worker (its lease
    /// ran out) is left as the takeover decided.
    fn finish(
        &self,
        worker: &str,
        id: i64,
        state: JobState,
        result: Option<&str>,
        reason: Option<&str>,
    ) -> Result<()>;
    /// Pending cancels among `ids`: reason and cause.
    fn cancel_requests(&self, ids: &[i64]) -> Result<Vec<(i64, String, Cause)>>;
    /// Appends an event of a job; its sequence number.
    fn append_event(&self, job: i64, data: &Value) -> Result<i64>;
    /// A tenant's events after `after` (of one job, or all), oldest first.
    fn events(
        &self,
        tenant: &str,
        job: Option<i64>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>>;
    /// At start: every job left running by a dead worker, decided by `model::recover`.
    fn recover(&self) -> Result<Vec<(i64, Recovery)>>;
    /// Renews `worker`'s lease and decides the jobs of workers whose lease ran out (as
    /// `recover`): how replicas sharing one database take over a dead one's jobs. A
    /// single-process store has no other workers: nothing to do.
    fn heartbeat(&self, worker: &str) -> Result<Vec<(i64, Recovery)>> {
        let _ = worker;
        Ok(Vec::new())
    }
    /// How long a worker's lease lasts without a renewal, where other processes may take
    /// over its jobs once it ran out (a shared database); `None` for a store of one process.
    fn lease(&self) -> Option<std::time::Duration> {
        None
    }
    /// Queue depth per class.
    fn depth(&self) -> Result<Vec<Depth>>;
    /// Number of jobs per state.
    fn counts(&self) -> Result<Vec<(JobState, i64)>>;
}

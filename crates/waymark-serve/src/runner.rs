//! The workers: claim a job, run it through the executor on a blocking thread, record
//! its events, logs and progress, pass cancels on when `model::cancel_action` says so,
//! and finish it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::executor::{CancelFlag, Executor, Progress, RunSpec};
use crate::logs::Logs;
use crate::model::{self, CancelAction, JobState, Phase};
use crate::store::{Job, Store};

/// What the workers share with the API.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub logs: Arc<dyn Logs>,
    /// Wakes the workers (a job was queued, a cancel was asked).
    pub wake: Notify,
    /// The newest event's sequence number: SSE streams wait on it.
    pub events: watch::Sender<i64>,
}

/// The worker pool.
pub struct Runner {
    shared: Arc<Shared>,
    executor: Arc<dyn Executor>,
    /// Jobs run at the same time.
    workers: usize,
    /// Where configuration documents are written for the flake to read.
    config_dir: PathBuf,
    /// Each tenant's ssh identity file.
    identities: HashMap<String, PathBuf>,
    lease: Mutex<Lease>,
    /// Jobs stopped because the lease was lost: left for the takeover to decide.
    fenced: Mutex<HashSet<i64>>,
}

/// This process's standing as a worker of a shared store.
struct Lease {
    /// This process's name (host, process, start).
    base: String,
    /// Leases lost so far: the name jobs are claimed under (`claimed_by`) is new after
    /// each, so that the jobs claimed under the old one are left to the takeover
    /// (`Store::heartbeat`), whoever runs it.
    lost_count: u32,
    /// When the last renewal that succeeded was sent.
    renewed: Instant,
    /// No renewal for too long: stop running, claim nothing.
    lost: bool,
}

impl Lease {
    fn worker(&self) -> String {
        match self.lost_count {
            0 => self.base.clone(),
            n => format!("{}~{n}", self.base),
        }
    }
}

/// How often a worker renews its lease (a fifth of the PostgreSQL backend's lease: a
/// few missed beats do not lose it).
const HEARTBEAT: Duration = Duration::from_secs(3);
/// How often a worker checks that its lease still holds.
const FENCE_CHECK: Duration = Duration::from_secs(1);

/// What a worker that could not renew its lease in time tells its jobs.
pub const LEASE_LOST: &str = "this replica could not renew its lease on the database: \
    stopped, for another replica to take the job over";

/// Whether a lease last renewed `since` ago is to be given up: a third of the lease
/// before another replica may take the jobs over (the time is counted from when the
/// renewal was sent, before it committed, so this errs early).
pub fn lease_lost(since: Duration, lease: Duration) -> bool {
    since > lease * 2 / 3
}

type Running = Arc<Mutex<HashMap<i64, (CancelFlag, Arc<Mutex<Phase>>)>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Runner {
    /// A pool of `workers` over `shared`'s store, running jobs with `executor`.
    pub fn new(
        shared: Arc<Shared>,
        executor: Arc<dyn Executor>,
        workers: usize,
        config_dir: PathBuf,
        identities: HashMap<String, PathBuf>,
    ) -> Self {
        Self {
            shared,
            executor,
            workers,
            config_dir,
            identities,
            lease: Mutex::new(Lease {
                base: worker_id(),
                lost_count: 0,
                renewed: Instant::now(),
                lost: false,
            }),
            fenced: Mutex::default(),
        }
    }

    /// Runs the workers until the process ends.
    pub async fn run(self) {
        let this = Arc::new(self);
        let running: Running = Arc::default();
        // The lease comes before the first claim: a claimed job of a worker without one
        // is another replica's to take over.
        while this.heartbeat().await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let beat = this.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let _ = beat.heartbeat().await;
            }
        });
        // Apart from the renewals, which may hang on an unreachable database.
        if let Some(lease) = this.shared.store.lease() {
            let (fence, running) = (this.clone(), running.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FENCE_CHECK).await;
                    fence.fence(&running, lease);
                }
            });
        }
        loop {
            while lock(&running).len() < this.workers {
                let worker = {
                    let l = lock(&this.lease);
                    if l.lost {
                        break;
                    }
                    l.worker()
                };
                let store = this.shared.store.clone();
                let name = worker.clone();
                let claimed = tokio::task::spawn_blocking(move || store.claim(&name)).await;
                let Ok(Ok(Some(job))) = claimed else {
                    break;
                };
                this.shared.events.send_modify(|s| *s += 1);
                let flag = CancelFlag::default();
                let phase = Arc::new(Mutex::new(Phase::Evaluating));
                lock(&running).insert(job.id, (flag.clone(), phase.clone()));
                let (this2, running2) = (this.clone(), running.clone());
                tokio::spawn(async move {
                    let id = job.id;
                    this2.run_job(job, &worker, flag, phase).await;
                    lock(&running2).remove(&id);
                    this2.shared.wake.notify_one();
                });
            }
            this.forward_cancels(&running).await;
            tokio::select! {
                () = this.shared.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Renews this worker's lease (under its new name after a lost one); wakes everyone
    /// when it took over a dead worker's jobs.
    async fn heartbeat(&self) -> Result<(), ()> {
        let store = self.shared.store.clone();
        let sent = Instant::now();
        let worker = lock(&self.lease).worker();
        let renewing = worker.clone();
        match tokio::task::spawn_blocking(move || store.heartbeat(&renewing)).await {
            Ok(Ok(recovered)) => {
                let mut l = lock(&self.lease);
                if l.worker() == worker {
                    l.renewed = sent;
                    l.lost = false;
                }
                drop(l);
                if !recovered.is_empty() {
                    self.shared.events.send_modify(|s| *s += 1);
                    self.shared.wake.notify_one();
                }
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// Gives the lease up when it was not renewed in time: every running job is
    /// cancelled (no gate starts after it; a switch test under way restores) and left
    /// unfinished, for a takeover to decide (re-queued before activation,
    /// needs-reconcile after), and nothing is claimed until a renewal under a new name
    /// succeeds.
    fn fence(&self, running: &Running, lease: Duration) {
        {
            let mut l = lock(&self.lease);
            if l.lost || !lease_lost(l.renewed.elapsed(), lease) {
                return;
            }
            l.lost = true;
            l.lost_count += 1;
        }
        for (id, (flag, _)) in lock(running).iter() {
            lock(&self.fenced).insert(*id);
            flag.cancel(LEASE_LOST);
        }
    }

    async fn forward_cancels(&self, running: &Running) {
        let ids: Vec<i64> = lock(running).keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let store = self.shared.store.clone();
        let Ok(Ok(requests)) =
            tokio::task::spawn_blocking(move || store.cancel_requests(&ids)).await
        else {
            return;
        };
        let running = lock(running);
        for (id, reason, cause) in requests {
            if let Some((flag, phase)) = running.get(&id)
                && model::cancel_action(*lock(phase), cause) == CancelAction::Signal
            {
                flag.cancel(&reason);
            }
        }
    }

    async fn run_job(&self, job: Job, worker: &str, flag: CancelFlag, phase: Arc<Mutex<Phase>>) {
        let store = self.shared.store.clone();
        let deployment = {
            let (t, n) = (job.tenant.clone(), job.deployment.clone());
            let s = store.clone();
            tokio::task::spawn_blocking(move || s.deployment(&t, &n)).await
        };
        let Ok(Ok(Some(deployment))) = deployment else {
            self.finish(
                worker,
                job.id,
                JobState::Failed,
                None,
                Some("its deployment is gone"),
            )
            .await;
            return;
        };
        let config = match self.write_config(&job) {
            Ok(dir) => Some((deployment.config_input.clone(), dir)),
            Err(e) => {
                self.finish(worker, job.id, JobState::Failed, None, Some(&e))
                    .await;
                return;
            }
        };
        let spec = RunSpec {
            job: job.id,
            kind: job.kind,
            flake: deployment.flake.clone(),
            rev: job.rev.clone(),
            hosts: deployment.hosts.clone(),
            goal: deployment.goal.clone(),
            config,
            identity: self.identities.get(&job.tenant).cloned(),
        };
        let progress = JobProgress {
            shared: self.shared.clone(),
            worker: worker.to_owned(),
            job: job.id,
            phase,
            redact: spec
                .identity
                .as_ref()
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty()),
            state: Mutex::default(),
        };
        let executor = self.executor.clone();
        let flag2 = flag.clone();
        let outcome =
            tokio::task::spawn_blocking(move || executor.run(&spec, &progress, &flag2)).await;
        let (state, result, reason) = match outcome {
            Ok(o) => {
                let cancelled = flag.reason();
                let state = model::final_state(&o.result, cancelled.is_some());
                let reason = match state {
                    JobState::Cancelled => cancelled,
                    JobState::Succeeded => None,
                    _ => o.message,
                };
                (state, Some(o.result), reason)
            }
            Err(_) => (
                JobState::Failed,
                None,
                Some("the executor stopped unexpectedly".into()),
            ),
        };
        if lock(&self.fenced).remove(&job.id) {
            return; // its end is the takeover's to decide
        }
        self.finish(worker, job.id, state, result.as_deref(), reason.as_deref())
            .await;
    }

    /// The job's configuration as `config.json` in a directory of its own (a `path:`
    /// flake input); a teardown's, and a job's without one, is `null`. Every job gets
    /// it: the flake's own default for that input is then never fetched, which Nix 2.8
    /// cannot do at a pinned revision for a relative `path:` input (a flake without
    /// the input only gets a warning).
    fn write_config(&self, job: &Job) -> Result<PathBuf, String> {
        let doc = match (job.kind, &job.config) {
            (model::JobKind::Deploy, Some(c)) => c.clone(),
            (model::JobKind::Teardown | model::JobKind::Deploy, _) => Value::Null,
        };
        let dir = self.config_dir.join(job.id.to_string());
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join("config.json"), doc.to_string()))
            .map_err(|e| format!("writing the configuration of job {}: {e}", job.id))?;
        Ok(dir)
    }

    async fn finish(
        &self,
        worker: &str,
        id: i64,
        state: JobState,
        result: Option<&str>,
        reason: Option<&str>,
    ) {
        let store = self.shared.store.clone();
        let (result, reason) = (result.map(str::to_owned), reason.map(str::to_owned));
        let worker = worker.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            store.finish(&worker, id, state, result.as_deref(), reason.as_deref())
        })
        .await;
        self.shared.events.send_modify(|s| *s += 1);
    }
}

/// This process's worker name: unique among replicas (the host, the process and its
/// start), since several share one database's leases.
fn worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{host}-pid{}-{started:x}", std::process::id())
}

#[derive(Default)]
struct ProgressState {
    counters: BTreeMap<String, Value>,
    hosts: serde_json::Map<String, Value>,
}

/// A running job's events, logs and progress, recorded as they come.
struct JobProgress {
    shared: Arc<Shared>,
    /// The name the job was claimed under: progress from a run that lost the job
    /// changes nothing.
    worker: String,
    job: i64,
    phase: Arc<Mutex<Phase>>,
    /// The identity file's path: never shown in a log line.
    redact: Option<String>,
    state: Mutex<ProgressState>,
}

const COUNTERS: [&str; 6] = [
    "total",
    "built",
    "substituted",
    "running",
    "failed",
    "waiting",
];

fn log_line(ev: &Value) -> String {
    let s = |k: &str| ev[k].as_str().unwrap_or("").to_owned();
    match s("event").as_str() {
        "start" => format!("{}: {} started", s("host"), s("gate")),
        "end" => format!(
            "{}: {} {}{}",
            s("host"),
            s("gate"),
            s("result"),
            ev["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        "note" => format!("{}: {}", s("host"), s("message")),
        "host" => format!("{}: {} ({})", s("host"), s("result"), s("message")),
        "summary" => format!("summary: exit status {}", ev["exit_code"]),
        other => other.to_owned(),
    }
}

impl JobProgress {
    fn clean(&self, line: &str) -> String {
        match &self.redact {
            Some(p) => line.replace(p.as_str(), "<identity file>"),
            None => line.to_owned(),
        }
    }
}

impl Progress for JobProgress {
    fn event(&self, mut ev: Value) {
        let kind = ev["event"].as_str().unwrap_or("").to_owned();
        let host = ev["host"].as_str().unwrap_or("").to_owned();
        // A host report's log goes to the job's log, not into every event.
        let host_log: Vec<String> = match ev.get_mut("log").map(Value::take) {
            Some(Value::Array(lines)) => lines
                .into_iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if let Some(obj) = ev.as_object_mut() {
            obj.remove("log");
        }
        let phase = {
            let mut p = lock(&self.phase);
            *p = p.after_event(&kind, ev["gate"].as_str());
            *p
        };
        let (counters, hosts) = {
            let mut st = lock(&self.state);
            match kind.as_str() {
                "build" => {
                    let c: serde_json::Map<String, Value> = COUNTERS
                        .iter()
                        .map(|k| ((*k).to_owned(), ev[*k].clone()))
                        .collect();
                    st.counters.insert(host.clone(), Value::Object(c));
                }
                "start" | "end" => {
                    let entry = st.hosts.entry(host.clone()).or_insert_with(|| json!({}));
                    entry["gate"] = ev["gate"].clone();
                    if kind == "end" {
                        entry["gate_result"] = ev["result"].clone();
                    }
                }
                "host" => {
                    let entry = st.hosts.entry(host.clone()).or_insert_with(|| json!({}));
                    for k in [
                        "result", "reached", "change", "message", "closure", "running", "mark",
                    ] {
                        entry[k] = ev[k].clone();
                    }
                }
                _ => {}
            }
            let mut sum: serde_json::Map<String, Value> = COUNTERS
                .iter()
                .map(|k| ((*k).to_owned(), json!(0)))
                .collect();
            for c in st.counters.values() {
                for k in COUNTERS {
                    let n = sum[k].as_u64().unwrap_or(0) + c[k].as_u64().unwrap_or(0);
                    sum[k] = json!(n);
                }
            }
            (Value::Object(sum), Value::Object(st.hosts.clone()))
        };
        let store = &self.shared.store;
        let _ = store.progress(&self.worker, self.job, phase, &counters, &hosts);
        let data = json!({"type": "deploy", "job": self.job, "phase": phase, "deploy": ev});
        if let Ok(seq) = store.append_event(self.job, &data) {
            self.shared.events.send_replace(seq);
        }
        let mut text = self.clean(&log_line(&ev));
        for l in host_log {
            text.push('\n');
            text.push_str(&self.clean(&format!("{host}: {l}")));
        }
        let _ = self.shared.logs.append(self.job, &text);
    }

    fn log(&self, line: &str) {
        let _ = self.shared.logs.append(self.job, &self.clean(line));
    }
}

//! The PostgreSQL backend: the store several replicas share (`--database postgres://…`).
//!
//! The invariants are the database's, as in SQLite: one queued and one running job per
//! deployment (partial unique indexes), one job per idempotency key and tenant, one
//! running job per host (`host_locks`' primary key). Beyond one process:
//! - claims lock their candidates with `FOR UPDATE SKIP LOCKED`, so replicas claim
//!   disjoint jobs; a host lock or running-job index a concurrent claim took first makes
//!   the claim roll back and try again;
//! - events get their sequence number from one counter row, taken last in the
//!   transaction and held until it commits: sequence numbers become visible in order,
//!   so a reader resuming after N never skips an event committed late;
//! - every transaction that writes an event also `NOTIFY`s it (delivered at commit);
//!   [`Postgres::listen`] turns that into the process's wake-ups, so SSE streams and
//!   workers of every replica see every replica's events;
//! - each worker holds a lease (`workers`), renewed by [`Store::heartbeat`]; the jobs
//!   of a worker whose lease ran out are decided by `model::recover` by whichever
//!   replica notices first (re-queued before activation, needs-reconcile after);
//! - migrations are versioned (`schema_migrations`) and applied under an advisory lock:
//!   replicas starting together apply them once.
//!
//! Logs live in the database too (`log_lines`, logs.rs): replicas on different machines share no
//! directory, and a table gives the same append-only, numbered lines transactionally.

mod db;
mod logs;
mod queue;
mod schema;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls};

use db::{Conn, Db, Tx};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{self, Cause, Existing, JobKind, JobState, Phase, Recovery};
use crate::rows::{self, DEPLOYMENT_COLS, JOB_COLS, corrupt, json_col};
use crate::store::{
    Cancelled, Deployment, Depth, EventRow, Job, JobFilter, NewJob, Store, Submitted,
};

/// The advisory lock migrations are applied under (any constant the service owns).
const MIGRATION_LOCK: i64 = 0x7761_796d_6172_6b01;
/// The channel events are announced on (payload: the sequence number).
const CHANNEL: &str = "waymark_events";
/// How long a worker's lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(15);
/// Idle connections kept: above the number of requests in flight at once, since a
/// connection past it is closed after its call and the next call pays a new backend
/// (PostgreSQL forks one per connection, some milliseconds of CPU).
const POOL: usize = 64;

/// The PostgreSQL store (and logs).
pub struct Postgres {
    url: String,
    idle: Mutex<Vec<Conn>>,
}

fn now() -> String {
    waymark_deploy::now()
}

fn job_by_id(tx: &mut Db<'_, impl GenericClient>, id: i64) -> Result<Job> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id WHERE j.id = $1"
    );
    match tx.query_opt(&sql, &[&id])? {
        Some(row) => rows::job(&row),
        None => Err(corrupt("job reference", &id.to_string())),
    }
}

/// Appends an event; its sequence number.
fn insert_event(
    tx: &mut Db<'_, impl GenericClient>,
    tenant: &str,
    job: i64,
    deployment: &str,
    data: &Value,
) -> Result<i64> {
    first_seq(&insert_events(
        tx,
        &[(tenant, job, deployment, data.to_string())],
    )?)
}

fn first_seq(seqs: &[i64]) -> Result<i64> {
    seqs.first()
        .copied()
        .ok_or_else(|| corrupt("event sequence", "none returned"))
}

/// Appends events (tenant, job, deployment, data) with consecutive sequence numbers, in
/// one statement: the counter row, the rows, one `NOTIFY` each. The counter row stays
/// locked until the transaction ends, so events commit in sequence order; every event
/// writer waits for it, so a transaction takes it once, last, and holds it for this
/// statement and the commit only.
fn insert_events(
    tx: &mut Db<'_, impl GenericClient>,
    events: &[(&str, i64, &str, String)],
) -> Result<Vec<i64>> {
    let n = events.len() as i64;
    let tenants: Vec<&str> = events.iter().map(|e| e.0).collect();
    let jobs: Vec<i64> = events.iter().map(|e| e.1).collect();
    let deployments: Vec<&str> = events.iter().map(|e| e.2).collect();
    let data: Vec<&str> = events.iter().map(|e| e.3.as_str()).collect();
    tx.query(
        "WITH s AS (UPDATE event_seq SET seq = seq + $1 RETURNING seq), \
           e AS (SELECT s.seq - $1 + u.ord AS seq, u.t, u.j, u.d, u.x FROM s, \
             unnest($2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[]) \
               WITH ORDINALITY AS u(t, j, d, x, ord)), \
           i AS (INSERT INTO events (seq, tenant, job_id, deployment, data) \
             SELECT seq, t, j, d, x FROM e) \
         SELECT seq, pg_notify($6, seq::TEXT)::TEXT FROM e ORDER BY seq",
        &[&n, &tenants, &jobs, &deployments, &data, &CHANNEL],
    )?
    .iter()
    .map(|r| Ok(r.try_get(0)?))
    .collect()
}

/// A job's state event (tenant, job, deployment, data), for [`insert_events`].
fn state_data(job: &Job) -> (&str, i64, &str, String) {
    let data = json!({
        "type": "state",
        "job": job.id,
        "kind": job.kind,
        "state": job.state,
        "phase": job.phase,
        "reason": job.reason,
        "result": job.result,
    });
    (&job.tenant, job.id, &job.deployment, data.to_string())
}

fn state_event(tx: &mut Db<'_, impl GenericClient>, job: &Job) -> Result<i64> {
    first_seq(&insert_events(tx, &[state_data(job)])?)
}

fn existing(job: &Job) -> Existing {
    Existing {
        id: job.id,
        kind: job.kind,
        source: job.source.clone(),
        phase: job.phase,
    }
}

fn live_jobs(
    tx: &mut Db<'_, impl GenericClient>,
    deployment_id: i64,
) -> Result<(Option<Job>, Option<Job>)> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
         WHERE j.deployment_id = $1 AND j.state IN ('queued', 'running')"
    );
    let (mut queued, mut running) = (None, None);
    for row in tx.query(&sql, &[&deployment_id])? {
        let job = rows::job(&row)?;
        match job.state {
            JobState::Queued => queued = Some(job),
            _ => running = Some(job),
        }
    }
    Ok((queued, running))
}

/// Locks the deployment of job `id` (every writer of a job locks its deployment first:
/// one lock order, no deadlock between a submission and a worker).
fn lock_deployment_of(tx: &mut Tx<'_, '_>, id: i64) -> Result<Option<i64>> {
    Ok(tx
        .query_opt(
            "SELECT d.id FROM deployments d JOIN jobs j ON j.deployment_id = d.id \
             WHERE j.id = $1 FOR UPDATE OF d",
            &[&id],
        )?
        .map(|r| r.try_get(0))
        .transpose()?)
}

/// Whether a failed transaction may simply be run again: another transaction won a
/// race (a serialization failure, a deadlock, a unique index a concurrent claim took).
fn retryable(e: &Error) -> bool {
    match e {
        Error::Postgres(e) => matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        ),
        _ => false,
    }
}

impl Postgres {
    /// Connects to `url` and brings the schema up to date (under an advisory lock, so
    /// replicas starting together apply each migration once).
    pub fn open(url: &str) -> Result<Self> {
        let this = Self {
            url: url.to_owned(),
            idle: Mutex::new(Vec::new()),
        };
        let mut conn = this.connect()?;
        let client = &mut conn.client;
        client.query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
        let migrated = schema::migrate(client);
        let unlocked = client.query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
        migrated?;
        unlocked?;
        this.put(conn);
        Ok(this)
    }

    fn connect(&self) -> Result<Conn> {
        Ok(Conn::new(Client::connect(&self.url, NoTls)?))
    }

    fn get(&self) -> Result<Conn> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self.connect(),
        }
    }

    fn put(&self, client: Conn) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < POOL && !client.is_closed() {
            idle.push(client);
        }
    }

    /// Runs `f` with a pooled connection (kept after a failed call unless it closed: a
    /// failed transaction was rolled back, and a new connection costs a new backend).
    fn with<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        let mut conn = self.get()?;
        let out = f(&mut conn.db());
        self.put(conn);
        out
    }

    /// Runs `f` in one transaction, again when it lost a race to another one.
    fn tx<T>(&self, mut f: impl FnMut(&mut Tx<'_, '_>) -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut conn = self.get()?;
            let out = conn.transaction(&mut f);
            self.put(conn);
            match out {
                Err(e) if tries < 20 && retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(tries * 2));
                }
                out => return out,
            }
        }
    }

    /// Listens for events on a connection of its own, on a thread of its own, calling
    /// `on_event` with each event's sequence number (and with 0 after a reconnect:
    /// whatever was missed meanwhile is read from the table by whoever is woken).
    pub fn listen(self: &Arc<Self>, on_event: impl Fn(i64) + Send + 'static) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("waymark-listen".into())
            .spawn(move || {
                loop {
                    let Ok(Conn { mut client, .. }) = this.connect() else {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    };
                    if client.batch_execute(&format!("LISTEN {CHANNEL}")).is_err() {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                    on_event(0);
                    let mut notes = client.notifications();
                    let mut it = notes.blocking_iter();
                    while let Ok(Some(n)) =
                        postgres::fallible_iterator::FallibleIterator::next(&mut it)
                    {
                        on_event(n.payload().parse().unwrap_or(0));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
            .ok();
    }

    /// Decides every running job whose worker holds no lease (all of them when `only`
    /// is None at a single-process start is NOT what replicas want: see `recover`).
    fn recover_orphans(&self) -> Result<Vec<(i64, Recovery)>> {
        self.tx(|tx| {
            let orphans: Vec<(i64, i64)> = tx
                .query(
                    "SELECT j.id, j.deployment_id FROM jobs j WHERE j.state = 'running' \
                     AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = j.claimed_by \
                       AND w.lease_until > now()) \
                     ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                    &[],
                )?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_>>()?;
            let mut out = Vec::new();
            let at = now();
            for (id, deployment_id) in orphans {
                tx.execute(
                    "SELECT 1 FROM deployments WHERE id = $1 FOR UPDATE",
                    &[&deployment_id],
                )?;
                let row = tx.query_one(
                    "SELECT phase, cancel_requested, state FROM jobs WHERE id = $1",
                    &[&id],
                )?;
                let phase: String = row.try_get(0)?;
                let cancel: Option<String> = row.try_get(1)?;
                let state: String = row.try_get(2)?;
                if state != "running" {
                    continue;
                }
                let phase = Phase::parse(&phase).ok_or_else(|| corrupt("job phase", &phase))?;
                let newer: Option<i64> = tx
                    .query_opt(
                        "SELECT id FROM jobs WHERE deployment_id = $1 AND state = 'queued'",
                        &[&deployment_id],
                    )?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let decision = model::recover(phase, cancel.is_some(), newer.is_some());
                match decision {
                    Recovery::Requeue => tx.execute(
                        "UPDATE jobs SET state = 'queued', phase = 'evaluating', started_at = NULL, \
                         claimed_by = NULL, counters = '{}', hosts = '{}' WHERE id = $1",
                        &[&id],
                    )?,
                    Recovery::Supersede => tx.execute(
                        "UPDATE jobs SET state = 'superseded', superseded_by = $2, \
                         reason = 'superseded by job ' || $2::BIGINT, finished_at = $3 WHERE id = $1",
                        &[&id, &newer, &at],
                    )?,
                    Recovery::Cancel => tx.execute(
                        "UPDATE jobs SET state = 'cancelled', reason = cancel_requested, \
                         cancel_requested = NULL, finished_at = $2 WHERE id = $1",
                        &[&id, &at],
                    )?,
                    Recovery::Reconcile => tx.execute(
                        "UPDATE jobs SET state = 'needs-reconcile', finished_at = $2, reason = \
                         'the service stopped while activating: not replayed; the next deploy of \
                         these hosts finishes or refuses what it left' WHERE id = $1",
                        &[&id, &at],
                    )?,
                };
                tx.execute("DELETE FROM host_locks WHERE job_id = $1", &[&id])?;
                let job = job_by_id(tx, id)?;
                state_event(tx, &job)?;
                out.push((id, decision));
            }
            tx.execute(
                "DELETE FROM workers WHERE lease_until < now() - interval '1 hour'",
                &[],
            )?;
            Ok(out)
        })
    }
}

impl Store for Postgres {
    fn put_deployment(&self, d: &Deployment) -> Result<Deployment> {
        let hosts = serde_json::to_string(&d.hosts).unwrap_or_default();
        self.tx(|tx| {
            let sql = format!(
                "INSERT INTO deployments (tenant, name, flake, hosts, goal, config_input, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (tenant, name) DO UPDATE SET flake = excluded.flake, \
                   hosts = excluded.hosts, goal = excluded.goal, \
                   config_input = excluded.config_input, deleted_at = NULL \
                 RETURNING {DEPLOYMENT_COLS}"
            );
            let row = tx.query_one(
                &sql,
                &[
                    &d.tenant,
                    &d.name,
                    &d.flake,
                    &hosts,
                    &d.goal,
                    &d.config_input,
                    &now(),
                ],
            )?;
            rows::deployment(&row)
        })
    }

    fn deployment(&self, tenant: &str, name: &str) -> Result<Option<Deployment>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = $1 AND name = $2 \
                 AND deleted_at IS NULL"
            );
            c.query_opt(&sql, &[&tenant, &name])?
                .map(|r| rows::deployment(&r))
                .transpose()
        })
    }

    fn deployments(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = $1 AND name > $2 \
                 AND deleted_at IS NULL ORDER BY name COLLATE \"C\" LIMIT $3"
            );
            c.query(&sql, &[&tenant, &after.unwrap_or(""), &(limit as i64)])?
                .iter()
                .map(rows::deployment)
                .collect()
        })
    }

    fn forget(&self, tenant: &str, name: &str) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE deployments SET deleted_at = $3 WHERE tenant = $1 AND name = $2 \
                 AND deleted_at IS NULL AND applied_rev IS NULL AND NOT EXISTS (SELECT 1 FROM jobs \
                 WHERE deployment_id = deployments.id AND state IN ('queued', 'running'))",
                &[&tenant, &name, &now()],
            )?;
            Ok(n == 1)
        })
    }

    fn deployment_jobs(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(Option<(JobKind, Phase)>, bool, Option<JobState>)> {
        self.with(|c| {
            let Some(row) = c.query_opt(
                "SELECT id FROM deployments WHERE tenant = $1 AND name = $2",
                &[&tenant, &name],
            )?
            else {
                return Ok((None, false, None));
            };
            let id: i64 = row.try_get(0)?;
            let (queued, running) = live_jobs(c, id)?;
            let last: Option<String> = c
                .query_opt(
                    "SELECT state FROM jobs WHERE deployment_id = $1 \
                     AND state IN ('succeeded', 'failed', 'needs-reconcile') ORDER BY id DESC LIMIT 1",
                    &[&id],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok((
                running.map(|r| (r.kind, r.phase)),
                queued.is_some(),
                last.as_deref().and_then(JobState::parse),
            ))
        })
    }

    fn submit(&self, new: &NewJob) -> Result<Submitted> {
        self.tx(|tx| queue::submit(tx, new))
    }

    fn job(&self, tenant: &str, id: i64) -> Result<Option<Job>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
                 WHERE j.id = $1 AND j.tenant = $2"
            );
            c.query_opt(&sql, &[&id, &tenant])?
                .map(|r| rows::job(&r))
                .transpose()
        })
    }

    fn jobs(&self, tenant: &str, f: &JobFilter) -> Result<Vec<Job>> {
        self.with(|c| {
            let sql = format!(
                "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
                 WHERE j.tenant = $1 AND j.id < $2 AND ($3::TEXT IS NULL OR d.name = $3) \
                 AND ($4::TEXT IS NULL OR j.state = $4) ORDER BY j.id DESC LIMIT $5"
            );
            c.query(
                &sql,
                &[
                    &tenant,
                    &f.before.unwrap_or(i64::MAX),
                    &f.deployment,
                    &f.state.map(JobState::as_str),
                    &(f.limit as i64),
                ],
            )?
            .iter()
            .map(rows::job)
            .collect()
        })
    }

    fn cancel(&self, tenant: &str, id: i64, reason: &str) -> Result<Cancelled> {
        self.tx(|tx| {
            let owned = tx.query_opt(
                "SELECT 1 FROM jobs WHERE id = $1 AND tenant = $2",
                &[&id, &tenant],
            )?;
            if owned.is_none() {
                return Ok(Cancelled::NotFound);
            }
            lock_deployment_of(tx, id)?;
            let state: String = tx
                .query_one("SELECT state FROM jobs WHERE id = $1", &[&id])?
                .try_get(0)?;
            Ok(match state.as_str() {
                "queued" => {
                    tx.execute(
                        "UPDATE jobs SET state = 'cancelled', reason = $2, finished_at = $3 WHERE id = $1",
                        &[&id, &reason, &now()],
                    )?;
                    let job = job_by_id(tx, id)?;
                    state_event(tx, &job)?;
                    Cancelled::Now(job)
                }
                "running" => {
                    tx.execute(
                        "UPDATE jobs SET cancel_requested = $2, cancel_cause = 'requested' WHERE id = $1",
                        &[&id, &reason],
                    )?;
                    // The running worker may be another replica's: it is woken by this.
                    tx.execute("SELECT pg_notify($1, '0')", &[&CHANNEL])?;
                    Cancelled::Pending(job_by_id(tx, id)?)
                }
                _ => Cancelled::AlreadyFinal(job_by_id(tx, id)?),
            })
        })
    }

    fn claim(&self, worker: &str) -> Result<Option<Job>> {
        self.tx(|tx| queue::claim(tx, worker))
    }

    fn progress(
        &self,
        worker: &str,
        id: i64,
        phase: Phase,
        counters: &Value,
        hosts: &Value,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET phase = $2, counters = $3, hosts = $4 WHERE id = $1 \
                 AND state = 'running' AND claimed_by = $5",
                &[
                    &id,
                    &phase.as_str(),
                    &counters.to_string(),
                    &hosts.to_string(),
                    &worker,
                ],
            )?;
            Ok(())
        })
    }

    fn finish(
        &self,
        worker: &str,
        id: i64,
        state: JobState,
        result: Option<&str>,
        reason: Option<&str>,
    ) -> Result<()> {
        self.tx(|tx| {
            lock_deployment_of(tx, id)?;
            let at = now();
            let changed = tx.execute(
                "UPDATE jobs SET state = $2, result = $3, reason = coalesce($4, reason), \
                 finished_at = $5, cancel_requested = NULL WHERE id = $1 AND state = 'running' \
                 AND claimed_by = $6",
                &[&id, &state.as_str(), &result, &reason, &at, &worker],
            )?;
            if changed == 1 {
                tx.execute("DELETE FROM host_locks WHERE job_id = $1", &[&id])?;
                let job = job_by_id(tx, id)?;
                if state == JobState::Succeeded {
                    match job.kind {
                        JobKind::Deploy => tx.execute(
                            "UPDATE deployments SET applied_rev = $2 \
                             WHERE id = (SELECT deployment_id FROM jobs WHERE id = $1)",
                            &[&id, &job.rev],
                        )?,
                        JobKind::Teardown => tx.execute(
                            "UPDATE deployments SET deleted_at = $2, applied_rev = NULL, desired_rev = NULL \
                             WHERE id = (SELECT deployment_id FROM jobs WHERE id = $1)",
                            &[&id, &at],
                        )?,
                    };
                }
                state_event(tx, &job)?;
            }
            Ok(())
        })
    }

    fn cancel_requests(&self, ids: &[i64]) -> Result<Vec<(i64, String, Cause)>> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id, cancel_requested, cancel_cause FROM jobs WHERE id = ANY($1) \
                 AND state = 'running' AND cancel_requested IS NOT NULL",
                &[&ids],
            )?;
            rows.iter()
                .map(|r| {
                    let cause: Option<String> = r.try_get(2)?;
                    let cause = if cause.as_deref() == Some("superseded") {
                        Cause::Superseded
                    } else {
                        Cause::Requested
                    };
                    Ok((r.try_get(0)?, r.try_get(1)?, cause))
                })
                .collect()
        })
    }

    fn append_event(&self, job: i64, data: &Value) -> Result<i64> {
        self.tx(|tx| {
            let row = tx.query_one(
                "SELECT j.tenant, d.name FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
                 WHERE j.id = $1",
                &[&job],
            )?;
            let (tenant, deployment): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            insert_event(tx, &tenant, job, &deployment, data)
        })
    }

    fn events(
        &self,
        tenant: &str,
        job: Option<i64>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        self.with(|c| {
            c.query(
                "SELECT seq, job_id, deployment, data FROM events WHERE tenant = $1 AND seq > $2 \
                 AND ($3::BIGINT IS NULL OR job_id = $3) ORDER BY seq LIMIT $4",
                &[&tenant, &after, &job, &(limit as i64)],
            )?
            .iter()
            .map(|r| {
                let data: String = r.try_get(3)?;
                Ok(EventRow {
                    seq: r.try_get(0)?,
                    job: r.try_get(1)?,
                    deployment: r.try_get(2)?,
                    data: json_col("event", &data)?,
                })
            })
            .collect()
        })
    }

    /// At start: only the jobs of workers whose lease ran out (another replica's live
    /// jobs are its own).
    fn recover(&self) -> Result<Vec<(i64, Recovery)>> {
        self.recover_orphans()
    }

    fn heartbeat(&self, worker: &str) -> Result<Vec<(i64, Recovery)>> {
        let lease = format!("{} seconds", LEASE.as_secs());
        self.with(|c| {
            c.execute(
                "INSERT INTO workers (id, lease_until) VALUES ($1, now() + $2::TEXT::INTERVAL) \
                 ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until",
                &[&worker, &lease],
            )?;
            Ok(())
        })?;
        self.recover_orphans()
    }

    fn lease(&self) -> Option<Duration> {
        Some(LEASE)
    }

    fn depth(&self) -> Result<Vec<Depth>> {
        self.with(|c| {
            let counted = c
                .query(rows::DEPTH_QUERY, &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>>>()?;
            Ok(rows::depth(counted))
        })
    }

    fn counts(&self) -> Result<Vec<(JobState, i64)>> {
        self.with(|c| {
            let counted = c
                .query(rows::COUNTS_QUERY, &[])?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>>>()?;
            Ok(rows::counts(counted))
        })
    }
}

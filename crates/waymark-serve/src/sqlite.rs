//! The `SQLite` backend: one database in WAL mode in the state directory, migrations by
//! `PRAGMA user_version`, one connection behind a mutex (`SQLite` has one writer anyway;
//! every method is one short transaction, `BEGIN IMMEDIATE` where it writes).
//!
//! The invariants live in the schema, not in this code: one queued and one running job
//! per deployment (partial unique indexes), one job per idempotency key and tenant, one
//! running job per host (`host_locks`' primary key), and every row carries its tenant.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::model::{
    self, Candidate, Cause, Existing, JobKind, JobState, Phase, Priority, Recovery, Submit,
};
use crate::rows::{self, DEPLOYMENT_COLS, JOB_COLS, corrupt, json_col};
use crate::store::{
    Cancelled, Deployment, Depth, EventRow, Job, JobFilter, NewJob, Store, Submitted,
};

/// The schema, one file per version (`user_version` = how many are applied); a new
/// version is a new file, never an edit of an applied one.
const MIGRATIONS: &[&str] = &[include_str!("migrations/0001-initial.sql")];

/// The `SQLite` store.
pub struct Sqlite {
    conn: Mutex<Connection>,
    /// Ends the checkpoint thread.
    stop: Arc<AtomicBool>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn now() -> String {
    waymark_deploy::now()
}

fn job_by_id(tx: &Connection, id: i64) -> Result<Job> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id WHERE j.id = ?1"
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query([id])?;
    match rows.next()? {
        Some(row) => rows::job(row),
        None => Err(corrupt("job reference", &id.to_string())),
    }
}

/// Appends a state event of `job` (as it is now) in the same transaction.
fn state_event(tx: &Connection, job: &Job) -> Result<i64> {
    let data = json!({
        "type": "state",
        "job": job.id,
        "kind": job.kind,
        "state": job.state,
        "phase": job.phase,
        "reason": job.reason,
        "result": job.result,
    });
    insert_event(tx, &job.tenant, job.id, &job.deployment, &data)
}

fn insert_event(
    tx: &Connection,
    tenant: &str,
    job: i64,
    deployment: &str,
    data: &Value,
) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO events (tenant, job_id, deployment, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![tenant, job, deployment, data.to_string()])?;
    Ok(tx.last_insert_rowid())
}

fn existing(job: &Job) -> Existing {
    Existing {
        id: job.id,
        kind: job.kind,
        source: job.source.clone(),
        phase: job.phase,
    }
}

impl Sqlite {
    /// Opens (creating) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        // WAL: readers never wait for the writer. `synchronous = NORMAL` keeps every
        // committed transaction through a crash of the process (kill -9); a power loss
        // may lose the last ones (docs/serve.md).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        // Checkpoints on a thread of their own, on a connection of their own: left to
        // SQLite, the commit that crosses the WAL's threshold copies the pages back and
        // syncs, and the request that made it waits (the submissions' latency tail).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let _ =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|e| Error::io("starting the checkpoint thread for", path)(e))?;
        Ok(Self {
            conn: Mutex::new(conn),
            stop,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (the
        // transaction rolls back on drop), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Schema {
            found: version,
            known,
        });
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}

fn live_jobs(tx: &Connection, deployment_id: i64) -> Result<(Option<Job>, Option<Job>)> {
    let sql = format!(
        "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
         WHERE j.deployment_id = ?1 AND j.state IN ('queued', 'running')"
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query([deployment_id])?;
    let (mut queued, mut running) = (None, None);
    while let Some(row) = rows.next()? {
        let job = rows::job(row)?;
        match job.state {
            JobState::Queued => queued = Some(job),
            _ => running = Some(job),
        }
    }
    Ok((queued, running))
}

impl Store for Sqlite {
    fn put_deployment(&self, d: &Deployment) -> Result<Deployment> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO deployments (tenant, name, flake, hosts, goal, config_input, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (tenant, name) DO UPDATE SET flake = excluded.flake, \
               hosts = excluded.hosts, goal = excluded.goal, \
               config_input = excluded.config_input, deleted_at = NULL",
            params![
                d.tenant,
                d.name,
                d.flake,
                serde_json::to_string(&d.hosts).unwrap_or_default(),
                d.goal,
                d.config_input,
                now()
            ],
        )?;
        let sql =
            format!("SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = ?1 AND name = ?2");
        let stored =
            tx.query_row(&sql, params![d.tenant, d.name], |r| Ok(rows::deployment(r)))??;
        tx.commit()?;
        Ok(stored)
    }

    fn deployment(&self, tenant: &str, name: &str) -> Result<Option<Deployment>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL"
        );
        conn.query_row(&sql, params![tenant, name], |r| Ok(rows::deployment(r)))
            .optional()?
            .transpose()
    }

    fn deployments(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE tenant = ?1 AND name > ?2 \
             AND deleted_at IS NULL ORDER BY name LIMIT ?3"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![tenant, after.unwrap_or(""), limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(rows::deployment(row)?);
        }
        Ok(out)
    }

    fn forget(&self, tenant: &str, name: &str) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE deployments SET deleted_at = ?3 WHERE tenant = ?1 AND name = ?2 \
             AND deleted_at IS NULL AND applied_rev IS NULL AND NOT EXISTS (SELECT 1 FROM jobs \
             WHERE deployment_id = deployments.id AND state IN ('queued', 'running'))",
            params![tenant, name, now()],
        )?;
        Ok(n == 1)
    }

    fn deployment_jobs(&self, tenant: &str, name: &str) -> Result<crate::store::LiveJobs> {
        let conn = self.conn();
        let id: Option<i64> = conn
            .query_row(
                "SELECT id FROM deployments WHERE tenant = ?1 AND name = ?2",
                params![tenant, name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok((None, false, None));
        };
        let (queued, running) = live_jobs(&conn, id)?;
        let last: Option<String> = conn
            .query_row(
                "SELECT state FROM jobs WHERE deployment_id = ?1 \
                 AND state IN ('succeeded', 'failed', 'needs-reconcile') ORDER BY id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        Ok((
            running.map(|r| (r.kind, r.phase)),
            queued.is_some(),
            last.as_deref().and_then(JobState::parse),
        ))
    }

    fn submit(&self, new: &NewJob) -> Result<Submitted> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = &new.idempotency_key {
            let found: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, request_hash FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2",
                    params![new.tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, hash)) = found {
                return Ok(if hash == new.request_hash {
                    Submitted::Existing(job_by_id(&tx, id)?)
                } else {
                    Submitted::KeyReused
                });
            }
        }
        let deployment_id: Option<i64> = tx
            .query_row(
                "SELECT id FROM deployments WHERE tenant = ?1 AND name = ?2 AND deleted_at IS NULL",
                params![new.tenant, new.deployment],
                |r| r.get(0),
            )
            .optional()?;
        let Some(deployment_id) = deployment_id else {
            return Ok(Submitted::NoDeployment);
        };
        let (queued, running) = live_jobs(&tx, deployment_id)?;
        let decision = model::decide_submit(
            new.mode,
            new.kind,
            &new.source,
            queued.as_ref().map(existing).as_ref(),
            running.as_ref().map(existing).as_ref(),
        );
        let (supersede, cancel_running) = match decision {
            Submit::Conflict { id } => return Ok(Submitted::Conflict(job_by_id(&tx, id)?)),
            Submit::Attach { id } => return Ok(Submitted::Existing(job_by_id(&tx, id)?)),
            Submit::Enqueue {
                supersede,
                cancel_running,
            } => (supersede, cancel_running),
        };
        let at = now();
        // The queued job leaves the queue first: the index allows one queued job.
        if let Some(old) = supersede {
            tx.execute(
                "UPDATE jobs SET state = 'superseded', finished_at = ?2 WHERE id = ?1",
                params![old, at],
            )?;
        }
        tx.prepare_cached(
            "INSERT INTO jobs (tenant, deployment_id, kind, state, phase, priority, priority_rank, \
             mode, rev, config, source, idempotency_key, request_hash, created_at) \
             VALUES (?1, ?2, ?3, 'queued', 'evaluating', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            new.tenant,
            deployment_id,
            new.kind.as_str(),
            new.priority.as_str(),
            new.priority.rank(),
            serde_json::to_value(new.mode)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned)),
            new.rev,
            new.config.as_ref().map(Value::to_string),
            new.source,
            new.idempotency_key,
            new.request_hash,
            at,
        ])?;
        let id = tx.last_insert_rowid();
        let reason = format!("superseded by job {id}");
        if let Some(old) = supersede {
            tx.execute(
                "UPDATE jobs SET superseded_by = ?2, reason = ?3 WHERE id = ?1",
                params![old, id, reason],
            )?;
            state_event(&tx, &job_by_id(&tx, old)?)?;
        }
        if let Some(run) = cancel_running {
            tx.execute(
                "UPDATE jobs SET cancel_requested = ?2, cancel_cause = 'superseded' WHERE id = ?1",
                params![run, reason],
            )?;
        }
        if new.kind == JobKind::Deploy {
            tx.execute(
                "UPDATE deployments SET desired_rev = ?2 WHERE id = ?1",
                params![deployment_id, new.rev],
            )?;
        }
        let job = job_by_id(&tx, id)?;
        state_event(&tx, &job)?;
        tx.commit()?;
        Ok(Submitted::Created(job))
    }

    fn job(&self, tenant: &str, id: i64) -> Result<Option<Job>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
             WHERE j.id = ?1 AND j.tenant = ?2"
        );
        conn.query_row(&sql, params![id, tenant], |r| Ok(rows::job(r)))
            .optional()?
            .transpose()
    }

    fn jobs(&self, tenant: &str, f: &JobFilter) -> Result<Vec<Job>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
             WHERE j.tenant = ?1 AND j.id < ?2 AND (?3 IS NULL OR d.name = ?3) \
             AND (?4 IS NULL OR j.state = ?4) ORDER BY j.id DESC LIMIT ?5"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![
            tenant,
            f.before.unwrap_or(i64::MAX),
            f.deployment,
            f.state.map(JobState::as_str),
            f.limit as i64
        ])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(rows::job(row)?);
        }
        Ok(out)
    }

    fn cancel(&self, tenant: &str, id: i64, reason: &str) -> Result<Cancelled> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: Option<String> = tx
            .query_row(
                "SELECT state FROM jobs WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                |r| r.get(0),
            )
            .optional()?;
        let out = match found.as_deref() {
            None => return Ok(Cancelled::NotFound),
            Some("queued") => {
                tx.execute(
                    "UPDATE jobs SET state = 'cancelled', reason = ?2, finished_at = ?3 WHERE id = ?1",
                    params![id, reason, now()],
                )?;
                let job = job_by_id(&tx, id)?;
                state_event(&tx, &job)?;
                Cancelled::Now(job)
            }
            Some("running") => {
                tx.execute(
                    "UPDATE jobs SET cancel_requested = ?2, cancel_cause = 'requested' WHERE id = ?1",
                    params![id, reason],
                )?;
                Cancelled::Pending(job_by_id(&tx, id)?)
            }
            Some(_) => Cancelled::AlreadyFinal(job_by_id(&tx, id)?),
        };
        tx.commit()?;
        Ok(out)
    }

    fn claim(&self, worker: &str) -> Result<Option<Job>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let locked: HashSet<String> = {
            let mut stmt = tx.prepare_cached("SELECT host FROM host_locks")?;
            stmt.query_map([], |r| r.get(0))?
                .collect::<std::result::Result<_, _>>()?
        };
        let mut running: HashMap<String, usize> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT tenant, count(*) FROM jobs WHERE state = 'running' GROUP BY tenant",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                running.insert(r.get(0)?, r.get::<_, i64>(1)? as usize);
            }
        }
        // The oldest queued jobs of each class whose deployment runs nothing and whose
        // hosts are free.
        let mut candidates = Vec::new();
        let mut hosts_of: HashMap<i64, Vec<String>> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT j.id, j.tenant, j.priority, d.hosts FROM jobs j \
                 JOIN deployments d ON d.id = j.deployment_id \
                 WHERE j.state = 'queued' AND NOT EXISTS (SELECT 1 FROM jobs r \
                   WHERE r.deployment_id = j.deployment_id AND r.state = 'running') \
                 ORDER BY j.priority_rank, j.id LIMIT 500",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let hosts: String = r.get(3)?;
                let hosts: Vec<String> =
                    serde_json::from_str(&hosts).map_err(|_| corrupt("hosts", &hosts))?;
                if hosts.iter().any(|h| locked.contains(h)) {
                    continue;
                }
                let priority: String = r.get(2)?;
                let id = r.get(0)?;
                candidates.push(Candidate {
                    id,
                    tenant: r.get(1)?,
                    priority: Priority::parse(&priority)
                        .ok_or_else(|| corrupt("priority", &priority))?,
                });
                hosts_of.insert(id, hosts);
            }
        }
        let count = |t: &str| running.get(t).copied().unwrap_or(0);
        let Some(pick) = model::pick_next(&candidates, &count) else {
            return Ok(None);
        };
        let id = pick.id;
        tx.execute(
            "UPDATE jobs SET state = 'running', phase = 'evaluating', started_at = ?2, \
             claimed_by = ?3 WHERE id = ?1",
            params![id, now(), worker],
        )?;
        for host in hosts_of.get(&id).into_iter().flatten() {
            tx.execute(
                "INSERT INTO host_locks (host, job_id, tenant) VALUES (?1, ?2, ?3)",
                params![host, id, pick.tenant],
            )?;
        }
        let job = job_by_id(&tx, id)?;
        state_event(&tx, &job)?;
        tx.commit()?;
        Ok(Some(job))
    }

    fn progress(
        &self,
        worker: &str,
        id: i64,
        phase: Phase,
        counters: &Value,
        hosts: &Value,
    ) -> Result<()> {
        let conn = self.conn();
        conn.prepare_cached(
            "UPDATE jobs SET phase = ?2, counters = ?3, hosts = ?4 WHERE id = ?1 AND state = 'running' \
             AND claimed_by = ?5",
        )?
        .execute(params![id, phase.as_str(), counters.to_string(), hosts.to_string(), worker])?;
        Ok(())
    }

    fn finish(
        &self,
        worker: &str,
        id: i64,
        state: JobState,
        result: Option<&str>,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let at = now();
        let changed = tx.execute(
            "UPDATE jobs SET state = ?2, result = ?3, reason = coalesce(?4, reason), \
             finished_at = ?5, cancel_requested = NULL WHERE id = ?1 AND state = 'running' \
             AND claimed_by = ?6",
            params![id, state.as_str(), result, reason, at, worker],
        )?;
        if changed == 1 {
            tx.execute("DELETE FROM host_locks WHERE job_id = ?1", [id])?;
            let job = job_by_id(&tx, id)?;
            if state == JobState::Succeeded {
                match job.kind {
                    JobKind::Deploy => tx.execute(
                        "UPDATE deployments SET applied_rev = ?2 \
                         WHERE id = (SELECT deployment_id FROM jobs WHERE id = ?1)",
                        params![id, job.rev],
                    )?,
                    JobKind::Teardown => tx.execute(
                        "UPDATE deployments SET deleted_at = ?2, applied_rev = NULL, desired_rev = NULL \
                         WHERE id = (SELECT deployment_id FROM jobs WHERE id = ?1)",
                        params![id, at],
                    )?,
                };
            }
            state_event(&tx, &job)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn cancel_requests(&self, ids: &[i64]) -> Result<Vec<(i64, String, Cause)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT cancel_requested, cancel_cause FROM jobs WHERE id = ?1 AND state = 'running' \
             AND cancel_requested IS NOT NULL",
        )?;
        let mut out = Vec::new();
        for &id in ids {
            let found: Option<(String, String)> = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((reason, cause)) = found {
                let cause = if cause == "superseded" {
                    Cause::Superseded
                } else {
                    Cause::Requested
                };
                out.push((id, reason, cause));
            }
        }
        Ok(out)
    }

    fn append_event(&self, job: i64, data: &Value) -> Result<i64> {
        let conn = self.conn();
        let (tenant, deployment): (String, String) = conn
            .prepare_cached(
                "SELECT j.tenant, d.name FROM jobs j JOIN deployments d ON d.id = j.deployment_id \
                 WHERE j.id = ?1",
            )?
            .query_row([job], |r| Ok((r.get(0)?, r.get(1)?)))?;
        insert_event(&conn, &tenant, job, &deployment, data)
    }

    fn events(
        &self,
        tenant: &str,
        job: Option<i64>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, job_id, deployment, data FROM events WHERE tenant = ?1 AND seq > ?2 \
             AND (?3 IS NULL OR job_id = ?3) ORDER BY seq LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![tenant, after, job, limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let data: String = r.get(3)?;
            out.push(EventRow {
                seq: r.get(0)?,
                job: r.get(1)?,
                deployment: r.get(2)?,
                data: json_col("event", &data)?,
            });
        }
        Ok(out)
    }

    fn recover(&self) -> Result<Vec<(i64, Recovery)>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let running: Vec<(i64, i64, String, Option<String>)> = {
            let mut stmt = tx.prepare(
                "SELECT id, deployment_id, phase, cancel_requested FROM jobs WHERE state = 'running'",
            )?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<std::result::Result<_, _>>()?
        };
        let mut out = Vec::new();
        let at = now();
        for (id, deployment_id, phase, cancel) in running {
            let phase = Phase::parse(&phase).ok_or_else(|| corrupt("job phase", &phase))?;
            let newer: Option<i64> = tx
                .query_row(
                    "SELECT id FROM jobs WHERE deployment_id = ?1 AND state = 'queued'",
                    [deployment_id],
                    |r| r.get(0),
                )
                .optional()?;
            let decision = model::recover(phase, cancel.is_some(), newer.is_some());
            match decision {
                Recovery::Requeue => tx.execute(
                    "UPDATE jobs SET state = 'queued', phase = 'evaluating', started_at = NULL, \
                     claimed_by = NULL, counters = '{}', hosts = '{}' WHERE id = ?1",
                    [id],
                )?,
                Recovery::Supersede => tx.execute(
                    "UPDATE jobs SET state = 'superseded', superseded_by = ?2, \
                     reason = 'superseded by job ' || ?2, finished_at = ?3 WHERE id = ?1",
                    params![id, newer, at],
                )?,
                Recovery::Cancel => tx.execute(
                    "UPDATE jobs SET state = 'cancelled', reason = cancel_requested, \
                     cancel_requested = NULL, finished_at = ?2 WHERE id = ?1",
                    params![id, at],
                )?,
                Recovery::Reconcile => tx.execute(
                    "UPDATE jobs SET state = 'needs-reconcile', finished_at = ?2, reason = \
                     'the service stopped while activating: not replayed; the next deploy of \
                     these hosts finishes or refuses what it left' WHERE id = ?1",
                    params![id, at],
                )?,
            };
            tx.execute("DELETE FROM host_locks WHERE job_id = ?1", [id])?;
            state_event(&tx, &job_by_id(&tx, id)?)?;
            out.push((id, decision));
        }
        tx.commit()?;
        Ok(out)
    }

    fn depth(&self) -> Result<Vec<Depth>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(rows::DEPTH_QUERY)?;
        let counted = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows::depth(counted))
    }

    fn counts(&self) -> Result<Vec<(JobState, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(rows::COUNTS_QUERY)?;
        let counted = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows::counts(counted))
    }
}

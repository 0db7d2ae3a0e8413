//! The queue's two writing transactions: a submission under its mode, and a claim.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::db::Tx;
use super::{existing, insert_events, job_by_id, live_jobs, now, state_data, state_event};
use crate::error::Result;
use crate::model::{self, Candidate, JobKind, Priority, Submit};
use crate::rows::corrupt;
use crate::store::{Job, NewJob, Submitted};

pub(super) fn submit(tx: &mut Tx<'_, '_>, new: &NewJob) -> Result<Submitted> {
    if let Some(key) = &new.idempotency_key {
        let found = tx.query_opt(
            "SELECT id, request_hash FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
            &[&new.tenant, key],
        )?;
        if let Some(row) = found {
            let (id, hash): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            return Ok(if hash == new.request_hash {
                Submitted::Existing(job_by_id(tx, id)?)
            } else {
                Submitted::KeyReused
            });
        }
    }
    // The deployment's row is the submission's lock: two submissions to one deployment
    // (from any replicas) decide one after the other.
    let Some(row) = tx.query_opt(
        "SELECT id FROM deployments WHERE tenant = $1 AND name = $2 AND deleted_at IS NULL \
         FOR UPDATE",
        &[&new.tenant, &new.deployment],
    )?
    else {
        return Ok(Submitted::NoDeployment);
    };
    let deployment_id: i64 = row.try_get(0)?;
    let (queued, running) = live_jobs(tx, deployment_id)?;
    let decision = model::decide_submit(
        new.mode,
        new.kind,
        &new.source,
        queued.as_ref().map(existing).as_ref(),
        running.as_ref().map(existing).as_ref(),
    );
    let (supersede, cancel_running) = match decision {
        Submit::Conflict { id } => return Ok(Submitted::Conflict(job_by_id(tx, id)?)),
        Submit::Attach { id } => return Ok(Submitted::Existing(job_by_id(tx, id)?)),
        Submit::Enqueue {
            supersede,
            cancel_running,
        } => (supersede, cancel_running),
    };
    let at = now();
    if let Some(old) = supersede {
        tx.execute(
            "UPDATE jobs SET state = 'superseded', finished_at = $2 WHERE id = $1",
            &[&old, &at],
        )?;
    }
    let mode = serde_json::to_value(new.mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned));
    let id: i64 = tx
        .query_one(
            "INSERT INTO jobs (tenant, deployment_id, kind, state, phase, priority, priority_rank, \
             mode, rev, config, source, idempotency_key, request_hash, created_at) \
             VALUES ($1, $2, $3, 'queued', 'evaluating', $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             RETURNING id",
            &[
                &new.tenant,
                &deployment_id,
                &new.kind.as_str(),
                &new.priority.as_str(),
                &new.priority.rank(),
                &mode,
                &new.rev,
                &new.config.as_ref().map(Value::to_string),
                &new.source,
                &new.idempotency_key,
                &new.request_hash,
                &at,
            ],
        )?
        .try_get(0)?;
    let reason = format!("superseded by job {id}");
    if let Some(run) = cancel_running {
        tx.execute(
            "UPDATE jobs SET cancel_requested = $2, cancel_cause = 'superseded' WHERE id = $1",
            &[&run, &reason],
        )?;
    }
    if new.kind == JobKind::Deploy {
        tx.execute(
            "UPDATE deployments SET desired_rev = $2 WHERE id = $1",
            &[&deployment_id, &new.rev],
        )?;
    }
    let old = match supersede {
        Some(old) => {
            tx.execute(
                "UPDATE jobs SET superseded_by = $2, reason = $3 WHERE id = $1",
                &[&old, &id, &reason],
            )?;
            Some(job_by_id(tx, old)?)
        }
        None => None,
    };
    let job = job_by_id(tx, id)?;
    // Events last, with nothing between them and the commit: the event counter is the
    // transaction's last lock, and every event writer waits for it.
    let mut events: Vec<_> = old.iter().map(state_data).collect();
    events.push(state_data(&job));
    insert_events(tx, &events)?;
    Ok(Submitted::Created(job))
}

pub(super) fn claim(tx: &mut Tx<'_, '_>, worker: &str) -> Result<Option<Job>> {
    // Only under a lease with time left (healthy renewals keep 12 s of its 15): a job
    // claimed without one would be any replica's to take over while it runs.
    let leased = tx.query_opt(
        "SELECT 1 FROM workers WHERE id = $1 AND lease_until > now() + interval '5 seconds'",
        &[&worker],
    )?;
    if leased.is_none() {
        return Ok(None);
    }
    // Candidates: the oldest queued jobs of each class whose deployment runs nothing,
    // locked so that another replica's claim skips them.
    let rows = tx.query(
        "SELECT j.id, j.tenant, j.priority, d.hosts, j.deployment_id FROM jobs j \
         JOIN deployments d ON d.id = j.deployment_id \
         WHERE j.state = 'queued' AND NOT EXISTS (SELECT 1 FROM jobs r \
           WHERE r.deployment_id = j.deployment_id AND r.state = 'running') \
         ORDER BY j.priority_rank, j.id LIMIT 200 FOR UPDATE OF j SKIP LOCKED",
        &[],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    let locked: HashSet<String> = tx
        .query("SELECT host FROM host_locks", &[])?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    let mut running: HashMap<String, usize> = HashMap::new();
    for r in tx.query(
        "SELECT tenant, count(*) FROM jobs WHERE state = 'running' GROUP BY tenant",
        &[],
    )? {
        running.insert(r.try_get(0)?, r.try_get::<_, i64>(1)? as usize);
    }
    let mut candidates = Vec::new();
    let mut hosts_of: HashMap<i64, (Vec<String>, i64)> = HashMap::new();
    for r in &rows {
        let hosts: String = r.try_get(3)?;
        let hosts: Vec<String> =
            serde_json::from_str(&hosts).map_err(|_| corrupt("hosts", &hosts))?;
        if hosts.iter().any(|h| locked.contains(h)) {
            continue;
        }
        let priority: String = r.try_get(2)?;
        let id: i64 = r.try_get(0)?;
        candidates.push(Candidate {
            id,
            tenant: r.try_get(1)?,
            priority: Priority::parse(&priority).ok_or_else(|| corrupt("priority", &priority))?,
        });
        hosts_of.insert(id, (hosts, r.try_get(4)?));
    }
    let count = |t: &str| running.get(t).copied().unwrap_or(0);
    let Some(pick) = model::pick_next(&candidates, &count) else {
        return Ok(None);
    };
    let id = pick.id;
    let (hosts, _deployment) = hosts_of.remove(&id).unwrap_or_default();
    // A concurrent claim of the same deployment or host fails these statements on the
    // unique indexes: the transaction rolls back and is tried again.
    tx.execute(
        "UPDATE jobs SET state = 'running', phase = 'evaluating', started_at = $2, \
         claimed_by = $3 WHERE id = $1",
        &[&id, &now(), &worker],
    )?;
    for host in &hosts {
        tx.execute(
            "INSERT INTO host_locks (host, job_id) VALUES ($1, $2)",
            &[host, &id],
        )?;
    }
    let job = job_by_id(tx, id)?;
    state_event(tx, &job)?;
    Ok(Some(job))
}

//! Jobs and deployments read back from either backend: the columns both select, in one
//! order, and one decoder over a row of either database.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{JobKind, JobState, Phase, Priority};
use crate::store::{Deployment, Depth, Job};

/// A job's columns (`j` the job, `d` its deployment), in the order [`job`] reads them.
pub const JOB_COLS: &str = "j.id, j.tenant, d.name, j.kind, j.state, j.phase, j.priority, j.mode, \
    j.rev, j.config, j.source, j.idempotency_key, j.reason, j.result, j.counters, j.hosts, \
    j.superseded_by, j.cancel_requested, j.created_at, j.started_at, j.finished_at";

/// Counts of live jobs by class and state, in the order [`depth`] reads them.
pub const DEPTH_QUERY: &str = "SELECT priority, state, count(*) FROM jobs \
    WHERE state IN ('queued', 'running') GROUP BY priority, state";

/// Counts of jobs by state, as [`counts`] reads them.
pub const COUNTS_QUERY: &str = "SELECT state, count(*) FROM jobs GROUP BY state";

/// A deployment's columns, in the order [`deployment`] reads them.
pub const DEPLOYMENT_COLS: &str =
    "tenant, name, flake, hosts, goal, config_input, desired_rev, applied_rev, created_at";

/// A stored value the service cannot read.
pub fn corrupt(what: &'static str, value: &str) -> Error {
    Error::Corrupt {
        what,
        value: value.to_owned(),
    }
}

/// A JSON column.
pub fn json_col(what: &'static str, s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|_| corrupt(what, s))
}

/// A result row of either database, read by column index.
pub trait Columns {
    fn text(&self, i: usize) -> Result<String>;
    fn opt_text(&self, i: usize) -> Result<Option<String>>;
    fn int(&self, i: usize) -> Result<i64>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>>;
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.get(i)?)
    }
}

impl Columns for postgres::Row {
    fn text(&self, i: usize) -> Result<String> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        Ok(self.try_get(i)?)
    }
}

/// A job from a row of [`JOB_COLS`].
pub fn job(row: &impl Columns) -> Result<Job> {
    let kind = row.text(3)?;
    let state = row.text(4)?;
    let phase = row.text(5)?;
    let priority = row.text(6)?;
    let mode = row.text(7)?;
    Ok(Job {
        id: row.int(0)?,
        tenant: row.text(1)?,
        deployment: row.text(2)?,
        kind: JobKind::parse(&kind).ok_or_else(|| corrupt("job kind", &kind))?,
        state: JobState::parse(&state).ok_or_else(|| corrupt("job state", &state))?,
        phase: Phase::parse(&phase).ok_or_else(|| corrupt("job phase", &phase))?,
        priority: Priority::parse(&priority).ok_or_else(|| corrupt("priority", &priority))?,
        mode: serde_json::from_value(Value::String(mode.clone()))
            .map_err(|_| corrupt("mode", &mode))?,
        rev: row.text(8)?,
        config: row
            .opt_text(9)?
            .map(|c| json_col("configuration", &c))
            .transpose()?,
        source: row.text(10)?,
        idempotency_key: row.opt_text(11)?,
        reason: row.opt_text(12)?,
        result: row.opt_text(13)?,
        counters: json_col("counters", &row.text(14)?)?,
        hosts: json_col("hosts", &row.text(15)?)?,
        superseded_by: row.opt_int(16)?,
        cancel_requested: row.opt_text(17)?,
        created_at: row.text(18)?,
        started_at: row.opt_text(19)?,
        finished_at: row.opt_text(20)?,
    })
}

/// A deployment from a row of [`DEPLOYMENT_COLS`].
pub fn deployment(row: &impl Columns) -> Result<Deployment> {
    let hosts = row.text(3)?;
    Ok(Deployment {
        tenant: row.text(0)?,
        name: row.text(1)?,
        flake: row.text(2)?,
        hosts: serde_json::from_str(&hosts).map_err(|_| corrupt("hosts", &hosts))?,
        goal: row.text(4)?,
        config_input: row.text(5)?,
        desired_rev: row.opt_text(6)?,
        applied_rev: row.opt_text(7)?,
        created_at: row.text(8)?,
    })
}

/// Queue depth per class, every class listed, from the (priority, state, count) rows of
/// [`DEPTH_QUERY`].
pub fn depth(rows: impl IntoIterator<Item = (String, String, i64)>) -> Vec<Depth> {
    let mut out: Vec<Depth> = Priority::ALL
        .into_iter()
        .map(|priority| Depth {
            priority,
            queued: 0,
            running: 0,
        })
        .collect();
    for (priority, state, n) in rows {
        if let Some(d) = out.iter_mut().find(|d| d.priority.as_str() == priority) {
            if state == "queued" {
                d.queued = n;
            } else {
                d.running = n;
            }
        }
    }
    out
}

/// Jobs per state, every state listed, from the (state, count) rows of [`COUNTS_QUERY`].
pub fn counts(rows: impl IntoIterator<Item = (String, i64)>) -> Vec<(JobState, i64)> {
    let found: std::collections::HashMap<String, i64> = rows.into_iter().collect();
    JobState::ALL
        .into_iter()
        .map(|s| (s, found.get(s.as_str()).copied().unwrap_or(0)))
        .collect()
}

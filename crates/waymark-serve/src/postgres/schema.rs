//! The PostgreSQL schema: versioned migrations, applied in order and recorded in
//! `schema_migrations` (the caller holds the advisory lock).

use postgres::Client;

use crate::error::{Error, Result};

/// The schema, one entry per version.
pub(super) const MIGRATIONS: &[&str] = &[r"
CREATE TABLE deployments (
  id BIGSERIAL PRIMARY KEY,
  tenant TEXT NOT NULL,
  name TEXT NOT NULL,
  flake TEXT NOT NULL,
  hosts TEXT NOT NULL,
  goal TEXT NOT NULL,
  config_input TEXT NOT NULL,
  desired_rev TEXT,
  applied_rev TEXT,
  created_at TEXT NOT NULL,
  deleted_at TEXT,
  UNIQUE (tenant, name)
);
CREATE TABLE jobs (
  id BIGSERIAL PRIMARY KEY,
  tenant TEXT NOT NULL,
  deployment_id BIGINT NOT NULL REFERENCES deployments (id),
  kind TEXT NOT NULL CHECK (kind IN ('deploy', 'teardown')),
  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
    'cancelled', 'superseded', 'needs-reconcile')),
  phase TEXT NOT NULL CHECK (phase IN ('evaluating', 'building', 'activating')),
  priority TEXT NOT NULL,
  priority_rank BIGINT NOT NULL,
  mode TEXT NOT NULL,
  rev TEXT NOT NULL,
  config TEXT,
  source TEXT NOT NULL,
  idempotency_key TEXT,
  request_hash TEXT NOT NULL,
  reason TEXT,
  result TEXT,
  counters TEXT NOT NULL DEFAULT '{}',
  hosts TEXT NOT NULL DEFAULT '{}',
  superseded_by BIGINT,
  cancel_requested TEXT,
  cancel_cause TEXT,
  claimed_by TEXT,
  created_at TEXT NOT NULL,
  started_at TEXT,
  finished_at TEXT
);
CREATE UNIQUE INDEX jobs_one_queued ON jobs (deployment_id) WHERE state = 'queued';
CREATE UNIQUE INDEX jobs_one_running ON jobs (deployment_id) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs (priority_rank, id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (claimed_by) WHERE state = 'running';
CREATE INDEX jobs_tenant ON jobs (tenant, id);
CREATE INDEX jobs_deployment ON jobs (deployment_id, id);
CREATE TABLE host_locks (
  host TEXT PRIMARY KEY,
  job_id BIGINT NOT NULL REFERENCES jobs (id)
);
CREATE TABLE event_seq (
  one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
  seq BIGINT NOT NULL
);
INSERT INTO event_seq VALUES (true, 0);
CREATE TABLE events (
  seq BIGINT PRIMARY KEY,
  tenant TEXT NOT NULL,
  job_id BIGINT NOT NULL,
  deployment TEXT NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX events_job ON events (job_id, seq);
CREATE TABLE workers (
  id TEXT PRIMARY KEY,
  lease_until TIMESTAMPTZ NOT NULL
);
CREATE TABLE log_heads (
  job_id BIGINT PRIMARY KEY,
  lines BIGINT NOT NULL
);
CREATE TABLE log_lines (
  job_id BIGINT NOT NULL,
  line BIGINT NOT NULL,
  text TEXT NOT NULL,
  PRIMARY KEY (job_id, line)
);
"];

pub(super) fn migrate(client: &mut Client) -> Result<()> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
           version INTEGER PRIMARY KEY,
           applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )?;
    let version: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )?
        .try_get(0)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Schema {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
        tx.commit()?;
    }
    Ok(())
}

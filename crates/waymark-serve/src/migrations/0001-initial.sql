-- Schema version 1: deployments, jobs, host locks, events.
CREATE TABLE deployments (
  id INTEGER PRIMARY KEY,
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
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant TEXT NOT NULL,
  deployment_id INTEGER NOT NULL REFERENCES deployments (id),
  kind TEXT NOT NULL CHECK (kind IN ('deploy', 'teardown')),
  state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed',
    'cancelled', 'superseded', 'needs-reconcile')),
  phase TEXT NOT NULL CHECK (phase IN ('evaluating', 'building', 'activating')),
  priority TEXT NOT NULL,
  priority_rank INTEGER NOT NULL,
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
  superseded_by INTEGER,
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
CREATE INDEX jobs_tenant ON jobs (tenant, id);
CREATE INDEX jobs_deployment ON jobs (deployment_id, id);
CREATE TABLE host_locks (
  host TEXT PRIMARY KEY,
  job_id INTEGER NOT NULL REFERENCES jobs (id),
  tenant TEXT NOT NULL
);
CREATE TABLE events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  tenant TEXT NOT NULL,
  job_id INTEGER NOT NULL,
  deployment TEXT NOT NULL,
  data TEXT NOT NULL
);
CREATE INDEX events_tenant ON events (tenant, seq);
CREATE INDEX events_job ON events (job_id, seq);

//! The `Store` contract, run against both backends by one body per test (`both!`): the
//! invariants the database enforces, concurrent claims from several handles on one
//! database (replicas), event sequence numbers without gaps, leases and take-over, and
//! the logs.

mod backends;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use waymark_serve::model::{JobKind, JobState, Mode, Phase, Priority, Recovery};
use waymark_serve::store::{Cancelled, Deployment, JobFilter, NewJob, Store, Submitted};
use waymark_serve::{Logs, Postgres};

/// Opens another handle on the test's database (another replica, for PostgreSQL).
type Open = dyn Fn() -> Arc<dyn Store>;

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("serve.sqlite");
                let open = move || -> std::sync::Arc<dyn waymark_serve::Store> {
                    std::sync::Arc::new(waymark_serve::Sqlite::open(&path).unwrap())
                };
                super::$name(&open, false);
            }
            #[test]
            fn postgres() {
                let Some(url) = super::backends::fresh_database() else { return };
                let open = move || -> std::sync::Arc<dyn waymark_serve::Store> {
                    std::sync::Arc::new(waymark_serve::Postgres::open(&url).unwrap())
                };
                super::$name(&open, true);
            }
        }
    )*};
}

both!(
    invariants_hold,
    concurrent_claims_run_each_job_once,
    events_are_numbered_without_gaps,
);

fn deployment(store: &dyn Store, tenant: &str, name: &str, hosts: &[&str]) {
    store
        .put_deployment(&Deployment {
            name: name.into(),
            tenant: tenant.into(),
            flake: "/srv/fleet".into(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            goal: "switch".into(),
            config_input: "panel".into(),
            desired_rev: None,
            applied_rev: None,
            created_at: String::new(),
        })
        .unwrap();
}

fn new_job(tenant: &str, deployment: &str, rev: &str, mode: Mode) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        deployment: deployment.into(),
        kind: JobKind::Deploy,
        priority: Priority::Normal,
        mode,
        rev: rev.into(),
        config: None,
        source: rev.into(),
        idempotency_key: None,
        request_hash: rev.into(),
    }
}

fn created(s: Submitted) -> i64 {
    match s {
        Submitted::Created(j) => j.id,
        other => panic!("not created: {other:?}"),
    }
}

fn invariants_hold(open: &Open, _pg: bool) {
    let store = open();
    deployment(&*store, "acme", "shop", &["web1"]);
    deployment(&*store, "acme", "blog", &["web1", "web2"]);
    deployment(&*store, "globex", "shop", &["db1"]);
    let first = created(
        store
            .submit(&new_job("acme", "shop", "aaaaaaa", Mode::Replace))
            .unwrap(),
    );
    let second = created(
        store
            .submit(&new_job("acme", "shop", "bbbbbbb", Mode::Replace))
            .unwrap(),
    );
    // One queued job per deployment: the first is superseded by the second.
    let old = store.job("acme", first).unwrap().unwrap();
    assert_eq!(old.state, JobState::Superseded);
    assert_eq!(old.superseded_by, Some(second));
    // Tenants: another tenant's job is not found, its deployment of the same name apart.
    assert_eq!(store.job("globex", second).unwrap(), None);
    assert_eq!(
        store.cancel("globex", second, "not mine").unwrap(),
        Cancelled::NotFound
    );
    // One running job per host: shop (web1) runs, blog (web1, web2) waits for web1.
    let blog = created(
        store
            .submit(&new_job("acme", "blog", "ccccccc", Mode::Replace))
            .unwrap(),
    );
    store.heartbeat("w1").unwrap();
    let claimed = store.claim("w1").unwrap().unwrap();
    assert_eq!(claimed.id, second);
    assert_eq!(
        store.claim("w1").unwrap(),
        None,
        "blog shares web1 with shop"
    );
    // reject names the running job.
    match store
        .submit(&new_job("acme", "shop", "ddddddd", Mode::Reject))
        .unwrap()
    {
        Submitted::Conflict(j) => assert_eq!(j.id, second),
        other => panic!("{other:?}"),
    }
    // A queued job behind the running one, superseded by a newer one (queue mode).
    let q1 = created(
        store
            .submit(&new_job("acme", "shop", "eeeeeee", Mode::Queue))
            .unwrap(),
    );
    let q2 = created(
        store
            .submit(&new_job("acme", "shop", "fffffff", Mode::Queue))
            .unwrap(),
    );
    assert_eq!(
        store.job("acme", q1).unwrap().unwrap().state,
        JobState::Superseded
    );
    store
        .finish("w1", second, JobState::Succeeded, Some("deployed"), None)
        .unwrap();
    let d = store.deployment("acme", "shop").unwrap().unwrap();
    assert_eq!(d.applied_rev.as_deref(), Some("bbbbbbb"));
    // web1 is free again: the oldest of shop's q2 and blog runs first.
    let next = store.claim("w1").unwrap().unwrap();
    assert_eq!(next.id, blog);
    assert_eq!(
        store.cancel("acme", q2, "changed my mind").unwrap(),
        Cancelled::Now(store.job("acme", q2).unwrap().unwrap())
    );
    assert_eq!(
        store.job("acme", q2).unwrap().unwrap().reason.as_deref(),
        Some("changed my mind")
    );
    let listed = store
        .jobs(
            "acme",
            &JobFilter {
                deployment: Some("shop".into()),
                limit: 10,
                ..JobFilter::default()
            },
        )
        .unwrap();
    let ids: Vec<i64> = listed.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![q2, q1, second, first]);
}

fn concurrent_claims_run_each_job_once(open: &Open, pg: bool) {
    let store = open();
    // 30 deployments, some sharing hosts; every one with a queued job.
    let mut ids = HashSet::new();
    for i in 0..30 {
        let name = format!("d{i}");
        let host = format!("h{}", i % 20);
        deployment(&*store, "acme", &name, &[&host]);
        ids.insert(created(
            store
                .submit(&new_job("acme", &name, "aaaaaaa", Mode::Replace))
                .unwrap(),
        ));
    }
    // Four replicas (SQLite: four handles on one file), claiming and finishing at once;
    // each checks that no host it holds is held by another run.
    let running_hosts = Arc::new(std::sync::Mutex::new(HashMap::<String, i64>::new()));
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let store = if pg { open() } else { store.clone() };
            let running_hosts = running_hosts.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut idle = 0;
                store.heartbeat(&format!("w{w}")).unwrap();
                while idle < 50 {
                    let Some(job) = store.claim(&format!("w{w}")).unwrap() else {
                        idle += 1;
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    idle = 0;
                    let d = store.deployment("acme", &job.deployment).unwrap().unwrap();
                    for h in &d.hosts {
                        let prev = running_hosts.lock().unwrap().insert(h.clone(), job.id);
                        assert_eq!(prev, None, "host {h} held by two jobs");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    for h in &d.hosts {
                        running_hosts.lock().unwrap().remove(h);
                    }
                    store
                        .finish(
                            &format!("w{w}"),
                            job.id,
                            JobState::Succeeded,
                            Some("deployed"),
                            None,
                        )
                        .unwrap();
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut ran: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    ran.sort_unstable();
    let unique: HashSet<i64> = ran.iter().copied().collect();
    assert_eq!(unique.len(), ran.len(), "a job ran twice: {ran:?}");
    assert_eq!(unique, ids, "every job ran");
}

fn events_are_numbered_without_gaps(open: &Open, pg: bool) {
    let store = open();
    deployment(&*store, "acme", "shop", &["web1"]);
    let job = created(
        store
            .submit(&new_job("acme", "shop", "aaaaaaa", Mode::Replace))
            .unwrap(),
    );
    // Writers on several handles while a reader follows: it sees every event once, in
    // order, and never a later one before an earlier one (its cursor would skip it).
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = if pg { open() } else { store.clone() };
            std::thread::spawn(move || {
                for i in 0..50 {
                    store
                        .append_event(job, &json!({"type": "test", "w": w, "i": i}))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut after = 0;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while seen.len() < 201 && std::time::Instant::now() < deadline {
        for e in store.events("acme", Some(job), after, 37).unwrap() {
            after = e.seq;
            seen.push(e);
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    // 1 state event (queued) + 200.
    assert_eq!(seen.len(), 201, "events read by cursor");
    for pair in seen.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1, "a gap or a reordering");
    }
    assert!(store.events("globex", None, 0, 10).unwrap().is_empty());
}

/// PostgreSQL only: a replica whose worker stops renewing its lease loses its jobs to
/// another's heartbeat, decided as a restart would (re-queued before activation, left
/// for reconciling after); a live worker's jobs are never taken.
#[test]
fn postgres_expired_leases_are_taken_over() {
    let Some(url) = backends::fresh_database() else {
        return;
    };
    let a = Postgres::open(&url).unwrap();
    let b = Postgres::open(&url).unwrap();
    for (name, host) in [("build", "h1"), ("act", "h2"), ("live", "h3")] {
        deployment(&a, "acme", name, &[host]);
        a.submit(&new_job("acme", name, "aaaaaaa", Mode::Replace))
            .unwrap();
    }
    assert!(a.heartbeat("dead").unwrap().is_empty());
    assert!(b.heartbeat("alive").unwrap().is_empty());
    let building = a.claim("dead").unwrap().unwrap();
    let activating = a.claim("dead").unwrap().unwrap();
    let live = b.claim("alive").unwrap().unwrap();
    a.progress("dead", building.id, Phase::Building, &json!({}), &json!({}))
        .unwrap();
    a.progress(
        "dead",
        activating.id,
        Phase::Activating,
        &json!({}),
        &json!({}),
    )
    .unwrap();
    // A restarting replica's recover takes nothing while the leases hold.
    assert!(b.recover().unwrap().is_empty());
    // The dead worker's lease runs out (moved back rather than waited for).
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute(
            "UPDATE workers SET lease_until = now() - interval '1 second' WHERE id = 'dead'",
            &[],
        )
        .unwrap();
    let mut taken = b.heartbeat("alive").unwrap();
    taken.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(
        taken,
        vec![
            (building.id, Recovery::Requeue),
            (activating.id, Recovery::Reconcile)
        ]
    );
    assert_eq!(
        b.job("acme", building.id).unwrap().unwrap().state,
        JobState::Queued
    );
    assert_eq!(
        b.job("acme", activating.id).unwrap().unwrap().state,
        JobState::NeedsReconcile
    );
    assert_eq!(
        b.job("acme", live.id).unwrap().unwrap().state,
        JobState::Running
    );
    // The re-queued job runs again, on the live replica; the reconciled one never.
    let again = b.claim("alive").unwrap().unwrap();
    assert_eq!(again.id, building.id);
    assert_eq!(b.claim("alive").unwrap(), None);
    // The worker that lost its lease, back: its late progress and ends change nothing
    // (not the run that took its job over, not the reconciled job, not their host locks).
    a.progress(
        "dead",
        building.id,
        Phase::Activating,
        &json!({"stale": 1}),
        &json!({}),
    )
    .unwrap();
    a.finish(
        "dead",
        building.id,
        JobState::Failed,
        Some("failed"),
        Some("stale"),
    )
    .unwrap();
    a.finish(
        "dead",
        activating.id,
        JobState::Succeeded,
        Some("deployed"),
        None,
    )
    .unwrap();
    let j = b.job("acme", building.id).unwrap().unwrap();
    assert_eq!(
        (j.state, j.phase, j.counters),
        (JobState::Running, Phase::Evaluating, json!({}))
    );
    assert_eq!(
        b.job("acme", activating.id).unwrap().unwrap().state,
        JobState::NeedsReconcile
    );
    deployment(&a, "acme", "other", &["h1"]);
    a.submit(&new_job("acme", "other", "bbbbbbb", Mode::Replace))
        .unwrap();
    b.heartbeat("alive").unwrap();
    assert_eq!(
        b.claim("alive").unwrap(),
        None,
        "h1 is still the takeover's"
    );
    // And it claims nothing until its lease is renewed.
    assert_eq!(a.claim("dead").unwrap(), None);
    b.finish(
        "alive",
        building.id,
        JobState::Succeeded,
        Some("deployed"),
        None,
    )
    .unwrap();
    assert_eq!(a.claim("dead").unwrap(), None, "no lease");
    a.heartbeat("dead").unwrap();
    assert!(a.claim("dead").unwrap().is_some());
}

/// PostgreSQL only: a second queued job for one deployment is refused by the database
/// itself, whatever code writes it; so is a second lock on a host.
#[test]
fn postgres_the_database_enforces_the_invariants() {
    let Some(url) = backends::fresh_database() else {
        return;
    };
    let store = Postgres::open(&url).unwrap();
    deployment(&store, "acme", "shop", &["web1"]);
    let id = created(
        store
            .submit(&new_job("acme", "shop", "aaaaaaa", Mode::Replace))
            .unwrap(),
    );
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let dup = c.execute(
        "INSERT INTO jobs (tenant, deployment_id, kind, state, phase, priority, priority_rank, \
         mode, rev, source, request_hash, created_at) SELECT tenant, deployment_id, kind, \
         state, phase, priority, priority_rank, mode, rev, source, request_hash, created_at \
         FROM jobs WHERE id = $1",
        &[&id],
    );
    let err = dup.unwrap_err();
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("jobs_one_queued")
    );
    store.heartbeat("w").unwrap();
    store.claim("w").unwrap().unwrap();
    let lock = c.execute(
        "INSERT INTO host_locks (host, job_id) VALUES ('web1', $1)",
        &[&id],
    );
    let err = lock.unwrap_err();
    assert_eq!(
        err.as_db_error().and_then(|e| e.constraint()),
        Some("host_locks_pkey")
    );
    // Migrations are recorded, and applied once however many replicas open the database.
    let _again = Postgres::open(&url).unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// Both log backends: numbered lines, read by offset, from another handle too.
#[test]
fn logs_are_numbered_lines_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let mut backends: Vec<(Box<dyn Logs>, Box<dyn Logs>)> = vec![(
        Box::new(waymark_serve::FileLogs::new(dir.path().join("logs")).unwrap()),
        Box::new(waymark_serve::FileLogs::new(dir.path().join("logs")).unwrap()),
    )];
    if let Some(url) = backends::fresh_database() {
        backends.push((
            Box::new(Postgres::open(&url).unwrap()),
            Box::new(Postgres::open(&url).unwrap()),
        ));
    }
    for (writer, reader) in backends {
        assert_eq!(writer.append(7, "one").unwrap(), 1);
        assert_eq!(writer.append(7, "two\nthree <b>&").unwrap(), 3);
        let (lines, total) = reader.read(7, 1, 10).unwrap();
        assert_eq!(total, 3);
        assert_eq!(lines, vec![(2, "two".into()), (3, "three <b>&".into())]);
        assert_eq!(reader.read(7, 0, 1).unwrap().0, vec![(1, "one".into())]);
        assert_eq!(reader.read(8, 0, 10).unwrap(), (vec![], 0));
    }
}

//! The `SQLite` store: the database enforces the invariants; claims share fairly; a
//! restart re-queues or reconciles what a dead worker left running.

use serde_json::json;
use waymark_serve::model::{JobKind, JobState, Mode, Phase, Priority, Recovery};
use waymark_serve::store::{Deployment, NewJob, Store, Submitted};
use waymark_serve::{Sqlite, database_path};

fn deployment(tenant: &str, name: &str, hosts: &[&str]) -> Deployment {
    Deployment {
        name: name.into(),
        tenant: tenant.into(),
        flake: "/srv/fleet".into(),
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        goal: "switch".into(),
        config_input: "panel".into(),
        desired_rev: None,
        applied_rev: None,
        created_at: String::new(),
    }
}

fn submit(s: &Sqlite, tenant: &str, name: &str, rev: &str, priority: Priority) -> i64 {
    let new = NewJob {
        tenant: tenant.into(),
        deployment: name.into(),
        kind: JobKind::Deploy,
        priority,
        mode: Mode::Queue,
        rev: rev.into(),
        config: None,
        source: rev.into(),
        idempotency_key: None,
        request_hash: rev.into(),
    };
    match s.submit(&new).unwrap() {
        Submitted::Created(j) => j.id,
        other => panic!("{other:?}"),
    }
}

fn open() -> (tempfile::TempDir, Sqlite) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sqlite::open(&database_path(dir.path())).unwrap();
    (dir, s)
}

#[test]
fn the_database_refuses_a_second_queued_or_running_job_per_deployment() {
    let (dir, s) = open();
    s.put_deployment(&deployment("t", "d", &["h"])).unwrap();
    submit(&s, "t", "d", "aaaaaaa", Priority::Normal);
    drop(s);
    // Around the store: the partial unique index itself refuses.
    let conn = rusqlite::Connection::open(database_path(dir.path())).unwrap();
    let copy = "INSERT INTO jobs (tenant, deployment_id, kind, state, phase, priority, \
        priority_rank, mode, rev, source, request_hash, created_at) SELECT tenant, deployment_id, \
        kind, ?1, phase, priority, priority_rank, mode, rev, source, request_hash, created_at \
        FROM jobs LIMIT 1";
    let err = conn.execute(copy, ["queued"]).unwrap_err().to_string();
    assert!(err.contains("UNIQUE"), "{err}");
    conn.execute(copy, ["running"]).unwrap();
    let err = conn.execute(copy, ["running"]).unwrap_err().to_string();
    assert!(err.contains("UNIQUE"), "{err}");
    let err = conn
        .execute(
            "INSERT INTO host_locks (host, job_id, tenant) VALUES ('h', 1, 't'), ('h', 1, 't')",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("UNIQUE"), "{err}");
}

#[test]
fn claims_take_the_highest_class_then_share_between_tenants_and_respect_hosts() {
    let (_dir, s) = open();
    for (t, d, h) in [
        ("a", "a1", "h1"),
        ("a", "a2", "h2"),
        ("a", "a3", "h3"),
        ("b", "b1", "h4"),
        ("b", "b2", "h1"),
        ("c", "c1", "h5"),
    ] {
        s.put_deployment(&deployment(t, d, &[h])).unwrap();
    }
    let a1 = submit(&s, "a", "a1", "aaaaaa1", Priority::Normal);
    let a2 = submit(&s, "a", "a2", "aaaaaa2", Priority::Normal);
    let a3 = submit(&s, "a", "a3", "aaaaaa3", Priority::Normal);
    let b1 = submit(&s, "b", "b1", "bbbbbb1", Priority::Normal);
    let b2 = submit(&s, "b", "b2", "bbbbbb2", Priority::Normal);
    let c1 = submit(&s, "c", "c1", "ccccccc", Priority::Low);
    let claim = || s.claim("w").unwrap().map(|j| j.id);
    assert_eq!(claim(), Some(a1)); // oldest, all shares equal
    assert_eq!(claim(), Some(b1)); // b runs nothing, a runs one
    // b2 shares host h1 with the running a1: it waits; a's next goes.
    assert_eq!(claim(), Some(a2));
    assert_eq!(claim(), Some(a3));
    assert_eq!(claim(), Some(c1)); // the low class comes last
    assert_eq!(claim(), None);
    s.finish("w", a1, JobState::Succeeded, Some("deployed"), None)
        .unwrap();
    assert_eq!(claim(), Some(b2)); // h1 free again
    let high = {
        s.put_deployment(&deployment("c", "c2", &["h9"])).unwrap();
        submit(&s, "c", "c2", "ccccccd", Priority::High)
    };
    assert_eq!(claim(), Some(high));
}

#[test]
fn a_restart_requeues_before_activation_and_reconciles_after() {
    let (dir, s) = open();
    for d in ["early", "late", "newer", "asked"] {
        s.put_deployment(&deployment("t", d, &[d])).unwrap();
    }
    let early = submit(&s, "t", "early", "aaaaaa1", Priority::Normal);
    let late = submit(&s, "t", "late", "aaaaaa2", Priority::Normal);
    let newer = submit(&s, "t", "newer", "aaaaaa3", Priority::Normal);
    let asked = submit(&s, "t", "asked", "aaaaaa4", Priority::Normal);
    for _ in 0..4 {
        s.claim("w").unwrap().unwrap();
    }
    s.progress("w", early, Phase::Building, &json!({}), &json!({}))
        .unwrap();
    s.progress("w", late, Phase::Activating, &json!({}), &json!({}))
        .unwrap();
    let newest = submit(&s, "t", "newer", "aaaaaa5", Priority::Normal);
    s.cancel("t", asked, "stop").unwrap();
    drop(s);
    // As after kill -9: a new process opens the same database.
    let s = Sqlite::open(&database_path(dir.path())).unwrap();
    let mut got = s.recover().unwrap();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        vec![
            (early, Recovery::Requeue),
            (late, Recovery::Reconcile),
            (newer, Recovery::Supersede),
            (asked, Recovery::Cancel)
        ]
    );
    let state = |id| s.job("t", id).unwrap().unwrap();
    assert_eq!(state(early).state, JobState::Queued);
    assert_eq!(state(late).state, JobState::NeedsReconcile);
    assert_eq!(state(newer).superseded_by, Some(newest));
    assert_eq!(state(asked).reason.as_deref(), Some("stop"));
    // The requeued job runs again, once; its host lock was released.
    assert_eq!(s.claim("w2").unwrap().map(|j| j.id), Some(early));
    assert_eq!(s.claim("w2").unwrap().map(|j| j.id), Some(newest));
    assert_eq!(s.claim("w2").unwrap(), None);
    assert_eq!(s.recover().unwrap().len(), 2);
}

//! Several replicas of the service, each a real process, sharing one PostgreSQL
//! database: jobs spread over them and none runs twice, a replica killed with SIGKILL
//! mid-job is taken over by another (re-queued while building, needs-reconcile once
//! activating, never replayed), and events and logs read from any replica.
//!
//! A replica is this test program run again (`replica_process`, which does nothing
//! unless `WAYMARK_REPLICA_DIR` is set) serving with an executor scripted through files:
//! a job of revision `b…` builds until `DIR/release-REV` exists, `a…` reaches
//! activation and waits the same way; every run is appended to `DIR/ran` as `JOB
//! REPLICA start` when it starts and `JOB REPLICA end` when it returns.
//!
//! A replica cut off from the database (its role refused logins, its connections ended)
//! stops its job before its lease runs out, so the replica that takes the job over never
//! runs it at the same time; back, it claims under a new name.

mod backends;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use waymark_serve::{CancelFlag, Executor, Progress, RunOutcome, RunSpec};

const TOKEN: &str = "token-of-acme";

struct FileScripted {
    dir: PathBuf,
    name: String,
}

fn ev(kind: &str, host: &str, gate: Option<&str>) -> Value {
    let mut v = json!({"event": kind, "host": host, "schema": "waymark.deploy-event/v1",
        "at": "2026-01-01T00:00:00Z"});
    if let Some(g) = gate {
        v["gate"] = json!(g);
    }
    v
}

impl Executor for FileScripted {
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome {
        let mut ran = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ran"))
            .unwrap();
        writeln!(ran, "{} {} start", spec.job, self.name).unwrap();
        let end = || writeln!(&ran, "{} {} end", spec.job, self.name).unwrap();
        let host = spec.hosts[0].clone();
        progress.log(&format!(
            "job {} for {} on {}",
            spec.job, spec.rev, self.name
        ));
        progress.event(ev("start", &host, Some("build")));
        if spec.rev.starts_with('a') {
            progress.event(ev("start", &host, Some("test")));
        }
        let release = self.dir.join(format!("release-{}", spec.rev));
        while !release.exists() {
            if cancel.reason().is_some() {
                end();
                return RunOutcome {
                    result: "failed".into(),
                    message: Some("cancelled".into()),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        end();
        RunOutcome {
            result: "deployed".into(),
            message: None,
        }
    }
}

/// The replica's body, run in a child process of this program.
#[test]
fn replica_process() {
    let Ok(dir) = std::env::var("WAYMARK_REPLICA_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let name = std::env::var("WAYMARK_REPLICA_NAME").unwrap();
    let url = std::env::var("WAYMARK_REPLICA_DATABASE").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut config = waymark_serve::Config::new(dir.join(format!("state-{name}")));
        config.token_files = vec![dir.join("tokens")];
        config.workers = 2;
        config.database = Some(url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let exec: Arc<dyn Executor> = Arc::new(FileScripted {
            dir: dir.clone(),
            name: name.clone(),
        });
        let port_file = dir.join(format!("port-{name}"));
        let serving = tokio::spawn(waymark_serve::serve(config, exec, listener));
        // Written once the database is open: the port is then worth calling.
        for _ in 0..600 {
            if reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::fs::write(&port_file, port.to_string()).unwrap();
        serving.await.unwrap().unwrap();
    });
}

struct Replica {
    name: String,
    child: Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    url: String,
    replicas: Vec<Replica>,
    client: reqwest::Client,
}

impl Cluster {
    async fn start(n: usize) -> Option<Self> {
        let url = tokio::task::spawn_blocking(backends::fresh_database)
            .await
            .unwrap()?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            format!("acme {}\n", waymark_serve::auth::hash_token(TOKEN)),
        )
        .unwrap();
        let mut c = Self {
            dir,
            url,
            replicas: Vec::new(),
            client: reqwest::Client::new(),
        };
        for i in 0..n {
            c.add(&format!("r{i}")).await;
        }
        Some(c)
    }

    async fn add(&mut self, name: &str) {
        let url = self.url.clone();
        self.add_as(name, &url).await;
    }

    async fn add_as(&mut self, name: &str, url: &str) {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WAYMARK_REPLICA_DIR", self.dir.path())
            .env("WAYMARK_REPLICA_NAME", name)
            .env("WAYMARK_REPLICA_DATABASE", url)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let port_file = self.dir.path().join(format!("port-{name}"));
        let deadline = Instant::now() + Duration::from_mins(1);
        while !port_file.exists() {
            assert!(Instant::now() < deadline, "replica {name} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let port = std::fs::read_to_string(&port_file).unwrap();
        self.replicas.push(Replica {
            name: name.into(),
            child,
            base: format!("http://127.0.0.1:{}", port.trim()),
        });
    }

    fn base(&self, name: &str) -> &str {
        &self.replicas.iter().find(|r| r.name == name).unwrap().base
    }

    async fn call(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn deployment(&self, base: &str, name: &str) {
        let (status, body) = self
            .call(
                base,
                reqwest::Method::PUT,
                &format!("/v1/deployments/{name}"),
                Some(json!({"flake": "/srv/fleet", "hosts": [format!("{name}-host")]})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn submit(&self, base: &str, name: &str, rev: &str) -> i64 {
        let (status, body) = self
            .call(
                base,
                reqwest::Method::POST,
                &format!("/v1/deployments/{name}/jobs"),
                Some(json!({"rev": rev})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    }

    async fn job(&self, base: &str, id: i64) -> Value {
        let (status, body) = self
            .call(base, reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn wait_job(
        &self,
        base: &str,
        id: i64,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        // Generous: a take-over waits for a lease to run out (15 s).
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let j = self.job(base, id).await;
            if ok(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id}: never {what}: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn release(&self, rev: &str) {
        std::fs::write(self.dir.path().join(format!("release-{rev}")), "").unwrap();
    }

    /// Every run so far: (job, replica).
    fn ran(&self) -> Vec<(i64, String)> {
        self.runs()
            .into_iter()
            .filter(|(_, _, what)| what == "start")
            .map(|(j, r, _)| (j, r))
            .collect()
    }

    /// Every start and end of a run so far, in order: (job, replica, "start" | "end").
    fn runs(&self) -> Vec<(i64, String, String)> {
        std::fs::read_to_string(self.dir.path().join("ran"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0].parse().unwrap(), f[1].to_owned(), f[2].to_owned())
            })
            .collect()
    }

    fn kill(&mut self, name: &str) {
        let i = self.replicas.iter().position(|r| r.name == name).unwrap();
        let mut r = self.replicas.remove(i);
        r.child.kill().unwrap(); // SIGKILL
        r.child.wait().unwrap();
    }
}

fn rev(prefix: char, i: usize) -> String {
    format!("{prefix}{i:039}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_queue_and_run_each_job_once() {
    let Some(c) = Cluster::start(3).await else {
        return;
    };
    // Six building jobs, submitted to the replicas in turn; two workers each: every
    // replica runs two, since a replica claims no more than it has workers for.
    let mut jobs = Vec::new();
    for i in 0..6 {
        let base = c.replicas[i % 3].base.clone();
        let name = format!("app{i}");
        c.deployment(&base, &name).await;
        jobs.push((c.submit(&base, &name, &rev('b', i)).await, rev('b', i)));
    }
    for (id, _) in &jobs {
        c.wait_job(c.base("r0"), *id, "running", |j| j["state"] == "running")
            .await;
    }
    let ran = c.ran();
    let runners: std::collections::HashSet<&str> = ran.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(runners.len(), 3, "every replica runs jobs: {ran:?}");
    // Logs and events of a job, read from a replica that does not run it.
    let (first_job, first_runner) = ran[0].clone();
    let other = c
        .replicas
        .iter()
        .find(|r| r.name != first_runner)
        .unwrap()
        .base
        .clone();
    let (_, logs) = c
        .call(
            &other,
            reqwest::Method::GET,
            &format!("/v1/jobs/{first_job}/logs"),
            None,
        )
        .await;
    assert!(
        logs["lines"][0]["text"]
            .as_str()
            .unwrap()
            .ends_with(&format!("on {first_runner}")),
        "{logs}"
    );
    // A live SSE stream on that other replica sees the end the runner writes.
    let sse = c
        .client
        .get(format!("{other}/v1/jobs/{first_job}/events"))
        .bearer_auth(TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    for (_, r) in &jobs {
        c.release(r);
    }
    let mut body = String::new();
    let mut stream = sse.bytes_stream();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !body.contains("\"succeeded\"") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .expect("the stream saw the job end")
            .unwrap()
            .unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let ids: Vec<i64> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .map(|s| s.trim().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    for (id, _) in &jobs {
        c.wait_job(c.base("r2"), *id, "succeeded", |j| {
            j["state"] == "succeeded"
        })
        .await;
    }
    let mut ran: Vec<i64> = c.ran().into_iter().map(|(j, _)| j).collect();
    ran.sort_unstable();
    let mut want: Vec<i64> = jobs.iter().map(|(j, _)| *j).collect();
    want.sort_unstable();
    assert_eq!(ran, want, "each job ran exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_taken_over() {
    let Some(mut c) = Cluster::start(2).await else {
        return;
    };
    let r0 = c.base("r0").to_owned();
    c.deployment(&r0, "build").await;
    c.deployment(&r0, "act").await;
    let building = c.submit(&r0, "build", &rev('b', 1)).await;
    let activating = c.submit(&r0, "act", &rev('a', 2)).await;
    for id in [building, activating] {
        c.wait_job(&r0, id, "running", |j| j["state"] == "running")
            .await;
    }
    c.wait_job(&r0, activating, "activating", |j| {
        j["phase"] == "activating"
    })
    .await;
    // Both runs on one replica (start another if they went to different ones: kill
    // the one running `building`, and `activating` must be on it too for the second
    // half, so each case is checked on whichever replica ran it).
    let ran = c.ran();
    let runner_of = |id: i64| ran.iter().find(|(j, _)| *j == id).unwrap().1.clone();
    let (rb, ra) = (runner_of(building), runner_of(activating));
    c.kill(&rb);
    if ra != rb {
        c.kill(&ra);
    }
    // A fresh replica if none is left.
    if c.replicas.is_empty() {
        c.add("r9").await;
    }
    let survivor = c.replicas[0].base.clone();
    let survivor_name = c.replicas[0].name.clone();
    // Re-queued and run again, by the survivor; the activation is never replayed.
    let j = c
        .wait_job(&survivor, building, "re-run", |_| {
            c.ran().iter().filter(|(j, _)| *j == building).count() == 2
        })
        .await;
    assert_eq!(j["state"], "running", "{j}");
    let j = c
        .wait_job(&survivor, activating, "needs-reconcile", |j| {
            j["state"] == "needs-reconcile"
        })
        .await;
    assert!(
        j["reason"].as_str().unwrap().contains("not replayed"),
        "{j}"
    );
    let runs: Vec<(i64, String)> = c.ran();
    assert_eq!(
        runs.iter().filter(|(j, _)| *j == activating).count(),
        1,
        "the activation was replayed: {runs:?}"
    );
    assert_eq!(
        runs.iter().rfind(|(j, _)| *j == building).unwrap().1,
        survivor_name
    );
    c.release(&rev('b', 1));
    c.wait_job(&survivor, building, "succeeded", |j| {
        j["state"] == "succeeded"
    })
    .await;
}

/// Runs `sql` on the test server as its admin.
async fn admin(sql: String) {
    tokio::task::spawn_blocking(move || {
        let url = backends::server().unwrap();
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&sql).unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_stops_its_job_before_another_takes_it_over() {
    let Some(mut c) = Cluster::start(0).await else {
        return;
    };
    // The replica to cut off logs in as a role of its own.
    let role = format!(
        "cut_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let db = c
        .url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    admin(format!("CREATE ROLE {role} LOGIN SUPERUSER")).await;
    let cut_url = c.url.replacen("://waymark@", &format!("://{role}@"), 1);
    assert_ne!(
        cut_url, c.url,
        "the test server's user is not waymark: {}",
        c.url
    );
    c.add_as("cut", &cut_url).await;
    let cut = c.base("cut").to_owned();
    c.deployment(&cut, "build").await;
    let id = c.submit(&cut, "build", &rev('b', 1)).await;
    c.wait_job(&cut, id, "running", |j| j["state"] == "running")
        .await;
    c.add("other").await;
    let other = c.base("other").to_owned();

    // Cut off: no new connection, and the open ones ended.
    let cut_at = Instant::now();
    admin(format!(
        "ALTER ROLE {role} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE usename = '{role}' AND datname = '{db}'"
    ))
    .await;
    // The other replica takes the job over once the lease ran out, and runs it.
    c.wait_job(&other, id, "run again", |_| {
        c.ran().iter().filter(|(j, _)| *j == id).count() == 2
    })
    .await;
    let runs = c.runs();
    let pos = |r: &str, what: &str| {
        runs.iter()
            .position(|(j, name, w)| *j == id && name == r && w == what)
            .unwrap_or_else(|| panic!("no {what} of job {id} on {r}: {runs:?}"))
    };
    assert!(
        pos("cut", "end") < pos("other", "start"),
        "the job ran on both replicas at once: {runs:?}"
    );
    assert!(
        cut_at.elapsed() >= Duration::from_secs(5),
        "taken over before the lease could run out"
    );

    // Back: the job stays the other replica's, and ends there.
    admin(format!("ALTER ROLE {role} LOGIN")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.release(&rev('b', 1));
    let j = c
        .wait_job(&other, id, "succeeded", |j| j["state"] == "succeeded")
        .await;
    assert_eq!(j["result"], "deployed", "{j}");
    assert_eq!(c.ran().iter().filter(|(j, _)| *j == id).count(), 2);
    // It claims again: a job for it alone (the other one gone).
    c.kill("other");
    c.deployment(&cut, "later").await;
    let later = c.submit(&cut, "later", &rev('c', 2)).await;
    c.release(&rev('c', 2));
    c.wait_job(
        &cut,
        later,
        "succeeded on the replica that was cut off",
        |j| j["state"] == "succeeded",
    )
    .await;
}

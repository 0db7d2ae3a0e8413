//! `waymark serve` as a process: `kill -9` under load loses no accepted job and
//! duplicates none; a job deploys for real on simulated hosts (docs/testbed.md), a
//! second one of the same revision is skipped as unchanged, and a kill in the middle of
//! a deploy is recovered without a torn or replayed activation; a job's configuration
//! document decides what the flake deploys, and a teardown forgets its deployment only
//! once it succeeded.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::test_deploy::TestLab;

pub const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");
pub const TOKEN: &str = "test-token";

pub struct Serve {
    child: Child,
    pub base: String,
    pub stderr: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
}

impl Serve {
    /// Starts `cmd serve …` on a free port of loopback; waits for its address.
    pub fn start(mut cmd: Command, state: &Path, workers: u32) -> Self {
        let tokens = state.with_extension("tokens");
        std::fs::write(
            &tokens,
            format!("acme {}\n", waymark_serve::auth::hash_token(TOKEN)),
        )
        .unwrap();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers"])
            .arg(workers.to_string())
            .arg("--state-dir")
            .arg(state)
            .arg("--tokens")
            .arg(&tokens)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let base = loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("serve ended: {}", stderr.lock().unwrap()))
                .unwrap();
            stderr.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.strip_prefix("Serving on ") {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                s2.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self {
            child,
            base,
            stderr,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut r = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        let resp = r.send()?;
        let status = resp.status().as_u16();
        let body = resp.json().unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None, None).unwrap().1
    }

    /// Creates the deployment `site` of the lab's flake with `settings` (the flake added).
    pub fn site(&self, lab: &TestLab, mut settings: Value) {
        settings["flake"] = json!(lab.flake.dir().display().to_string());
        let (status, d) = self
            .call(
                reqwest::Method::PUT,
                "/v1/deployments/site",
                Some(settings),
                None,
            )
            .unwrap();
        assert_eq!(status, 200, "{d}");
    }

    /// Submits a job of `site` at `rev`; its id.
    pub fn submit(&self, rev: &str) -> i64 {
        let (status, job) = self
            .call(
                reqwest::Method::POST,
                "/v1/deployments/site/jobs",
                Some(json!({ "rev": rev })),
                None,
            )
            .unwrap();
        assert_eq!(status, 201, "{job}");
        job["id"].as_i64().unwrap()
    }

    /// The job once it finished.
    pub fn finished(&self, id: i64) -> Value {
        self.wait_job(id, "finished", |j| j["finished_at"].is_string())
    }

    pub fn wait_job(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_mins(5);
        loop {
            let j = self.get(&format!("/v1/jobs/{id}"));
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never {what}: {j}\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `waymark serve` (arguments to follow) in the lab's deployer, deploying to its hosts;
/// with the fault `fault` injected, if any.
pub fn lab_serve_command(lab: &TestLab, fault: Option<&str>) -> Command {
    let mut cmd = lab.fleet.deployer_command(Path::new(WAYMARK)).unwrap();
    cmd.env("WAYMARK_REMOTE_COMMAND", lab.remote_waymark())
        .env("WAYMARK_STATE_DIR", lab.state_dir())
        .env_remove("WAYMARK_FAULT");
    if let Some(f) = fault {
        cmd.env("WAYMARK_FAULT", f);
    }
    cmd
}

fn rev(n: usize) -> String {
    format!("{n:040x}")
}

#[test]
fn kill_9_under_load_loses_no_accepted_job_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut accepted: Vec<(String, i64)> = Vec::new();
    let mut next = 0usize;
    // Killed at a different moment of the load each round.
    for (round, after_ms) in [40u64, 90, 150, 230].into_iter().enumerate() {
        let mut serve = Serve::start(Command::new(WAYMARK), &state, 0);
        for d in 0..20 {
            let (status, body) = serve
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/deployments/d{d}"),
                    Some(json!({"flake": "/srv/fleet", "hosts": [format!("h{d}")]})),
                    None,
                )
                .unwrap();
            assert_eq!(status, 200, "{body}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let (stop, got) = (stop.clone(), got.clone());
                let base = serve.base.clone();
                let start = next + t * 100_000;
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let mut i = start;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("r{round}-k{i}");
                        let resp = client
                            .post(format!("{base}/v1/deployments/d{}/jobs", i % 20))
                            .bearer_auth(TOKEN)
                            .header("Idempotency-Key", &key)
                            .json(&json!({"rev": rev(i), "mode": "queue"}))
                            .send();
                        // Only an answer counts as accepted; a cut connection may or
                        // may not have committed (the retry below tells which).
                        if let Ok(r) = resp
                            && r.status() == 201
                            && let Ok(body) = r.json::<Value>()
                        {
                            got.lock()
                                .unwrap()
                                .push((key, body["id"].as_i64().unwrap()));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(after_ms));
        serve.kill9();
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            s.join().unwrap();
        }
        next += 1_000_000;
        accepted.extend(got.lock().unwrap().drain(..));
    }
    assert!(
        accepted.len() > 20,
        "too few submissions got through: {}",
        accepted.len()
    );
    let serve = Serve::start(Command::new(WAYMARK), &state, 0);
    // Every accepted job is there, and the same key gives the same job (no duplicate).
    for (key, id) in accepted.iter().step_by(7) {
        let j = serve.get(&format!("/v1/jobs/{id}"));
        assert_eq!(j["idempotency_key"], json!(key), "{j}");
        let d = j["deployment"].as_str().unwrap().to_owned();
        let (status, again) = serve
            .call(
                reqwest::Method::POST,
                &format!("/v1/deployments/{d}/jobs"),
                Some(json!({"rev": j["rev"], "mode": "queue"})),
                Some(key),
            )
            .unwrap();
        assert_eq!((status, again["id"].as_i64()), (200, Some(*id)));
    }
    let mut keys = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = serve.get(&format!("/v1/jobs?limit=200{cursor}"));
        for j in page["items"].as_array().unwrap() {
            assert!(
                keys.insert(j["idempotency_key"].as_str().unwrap().to_owned()),
                "duplicate {j}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    for (key, _) in &accepted {
        assert!(keys.contains(key), "accepted job {key} lost");
    }
    // Still one queued job per deployment.
    let queued = serve.get("/v1/jobs?state=queued&limit=200");
    assert_eq!(queued["items"].as_array().unwrap().len(), 20);
}

#[test]
fn jobs_deploy_for_real_skip_when_unchanged_and_survive_kill_9() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    let state = lab.lab.state_dir().with_file_name("serve-state");
    // Every confirmation waits a few seconds: a window to kill the service in.
    let mut serve = Serve::start(
        lab_serve_command(&lab, Some("pause-before-confirm")),
        &state,
        2,
    );
    serve.site(&lab, json!({"hosts": ["web1"]}));
    let rev1 = lab.flake.set_generation("web1", "g1").unwrap();
    let (status, job) = serve
        .call(
            reqwest::Method::POST,
            "/v1/deployments/site/jobs",
            Some(json!({"rev": rev1})),
            None,
        )
        .unwrap();
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_i64().unwrap();
    let j = serve.wait_job(id, "finished", |j| j["finished_at"].is_string());
    assert_eq!(
        (j["state"].as_str(), j["result"].as_str()),
        (Some("succeeded"), Some("deployed")),
        "{j}\n{}",
        serve.stderr.lock().unwrap()
    );
    assert_eq!(j["hosts"]["web1"]["result"], "deployed");
    assert_eq!(j["hosts"]["web1"]["reached"], "mark");
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert_eq!(
        serve.get("/v1/deployments/site")["applied_rev"],
        json!(rev1)
    );
    let events = serve.get(&format!("/v1/jobs/{id}/events?limit=1000"));
    let gates: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "deploy" && e["deploy"]["event"] == "end")
        .map(|e| e["deploy"]["gate"].as_str().unwrap())
        .collect();
    assert_eq!(
        gates,
        ["build", "diff", "dry-activate", "test", "switch", "mark"]
    );
    let logs = serve.get(&format!("/v1/jobs/{id}/logs"));
    assert!(logs["total"].as_u64().unwrap() >= 6, "{logs}");

    // The same revision again: the hosts run it, known-good: unchanged, nothing activated.
    let (_, again) = serve
        .call(
            reqwest::Method::POST,
            "/v1/deployments/site/jobs",
            Some(json!({"rev": rev1})),
            None,
        )
        .unwrap();
    let j = serve.wait_job(again["id"].as_i64().unwrap(), "finished", |j| {
        j["finished_at"].is_string()
    });
    assert_eq!(j["result"], "unchanged", "{j}");

    // kill -9 while the next deploy's activation waits for its confirmation: the
    // restarted service does not replay it but records it needs-reconcile; the host's
    // agent restores by itself (one whole system, never torn); the next job of the same
    // revision finishes the deploy.
    let rev0 = lab.flake.set_generation("web1", "g0").unwrap();
    let (_, job) = serve
        .call(
            reqwest::Method::POST,
            "/v1/deployments/site/jobs",
            Some(json!({"rev": rev0})),
            None,
        )
        .unwrap();
    let id = job["id"].as_i64().unwrap();
    serve.wait_job(id, "at its switch", |j| {
        j["hosts"]["web1"]["gate"] == "switch"
    });
    assert_eq!(serve.get(&format!("/v1/jobs/{id}"))["phase"], "activating");
    serve.kill9();
    let serve = Serve::start(lab_serve_command(&lab, None), &state, 2);
    let j = serve.get(&format!("/v1/jobs/{id}"));
    assert_eq!(j["state"], "needs-reconcile", "{j}");
    assert!(
        j["reason"].as_str().unwrap().contains("not replayed"),
        "{j}"
    );
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let (current, profile, boot) = lab.system("web1");
        if current == profile && profile == boot {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a torn host: {current} {profile} {boot}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(serve.get("/v1/deployments/site")["state"], "failed");
    let (_, job) = serve
        .call(
            reqwest::Method::POST,
            "/v1/deployments/site/jobs",
            Some(json!({"rev": rev0})),
            None,
        )
        .unwrap();
    let j = serve.wait_job(job["id"].as_i64().unwrap(), "finished", |j| {
        j["finished_at"].is_string()
    });
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0));
    assert_eq!(serve.get("/v1/deployments/site")["state"], "idle");
}

/// What a panel's configuration document decides reaches the hosts: the fleet flake
/// reads the `panel` input, and the same revision deploys what each document says. A
/// teardown deploys with the document `null` (the flake's own `hosts.nix`): a failed one
/// leaves the deployment `failed` and known, a succeeded one forgets it.
#[test]
fn configuration_documents_decide_and_teardown_forgets_only_after_success() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    let state = lab.lab.state_dir().with_file_name("serve-state");
    let rev_a = lab.flake.add_config_input("panel").unwrap();
    let serve = Serve::start(lab_serve_command(&lab, None), &state, 2);
    serve.site(&lab, json!({"hosts": ["web1"], "config_input": "panel"}));
    let submit = |rev: &str, generation: &str| {
        let (status, job) = serve
            .call(
                reqwest::Method::POST,
                "/v1/deployments/site/jobs",
                Some(json!({
                    "rev": rev,
                    "config": {"hosts": {"web1": {"generation": generation}}},
                })),
                None,
            )
            .unwrap();
        assert_eq!(status, 201, "{job}");
        serve.wait_job(job["id"].as_i64().unwrap(), "finished", |j| {
            j["finished_at"].is_string()
        })
    };
    let explain = |j: &Value| format!("{j}\n{}", serve.stderr.lock().unwrap());

    // No document: the service gives `null` (the flake's own default is never fetched)
    // and the flake's own hosts.nix decides (g0).
    let (status, job) = serve
        .call(
            reqwest::Method::POST,
            "/v1/deployments/site/jobs",
            Some(json!({"rev": rev_a})),
            None,
        )
        .unwrap();
    assert_eq!(status, 201, "{job}");
    let j = serve.wait_job(job["id"].as_i64().unwrap(), "finished", |j| {
        j["finished_at"].is_string()
    });
    assert_eq!(j["state"], "succeeded", "{}", explain(&j));
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));

    // One revision, two documents, two systems.
    let j = submit(&rev_a, "g1");
    assert_eq!(j["result"], "deployed", "{}", explain(&j));
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    let j = submit(&rev_a, "g0");
    assert_eq!(j["result"], "deployed", "{}", explain(&j));
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));

    // The flake's own choice is a system that does not build: the document still
    // decides (g1), but a teardown (document `null`) fails at the build.
    let rev_b = lab.flake.set_generation("web1", "broken").unwrap();
    let j = submit(&rev_b, "g1");
    assert_eq!(j["result"], "deployed", "{}", explain(&j));
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    let (status, teardown) = serve
        .call(reqwest::Method::DELETE, "/v1/deployments/site", None, None)
        .unwrap();
    assert_eq!(status, 201, "{teardown}");
    assert_eq!(teardown["kind"], "teardown", "{teardown}");
    assert_eq!(teardown["rev"], json!(rev_b), "{teardown}");
    let j = serve.wait_job(teardown["id"].as_i64().unwrap(), "finished", |j| {
        j["finished_at"].is_string()
    });
    assert_eq!(j["state"], "failed", "{}", explain(&j));
    // Still known, failed, on the revision it applied; the host keeps its system.
    let (status, d) = serve
        .call(reqwest::Method::GET, "/v1/deployments/site", None, None)
        .unwrap();
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(d["applied_rev"], json!(rev_b), "{d}");
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));

    // Back on a revision whose own choice builds (g0): the teardown deploys it and the
    // deployment is forgotten.
    let j = submit(&rev_a, "g1");
    assert_eq!(j["result"], "unchanged", "{}", explain(&j));
    let (status, teardown) = serve
        .call(reqwest::Method::DELETE, "/v1/deployments/site", None, None)
        .unwrap();
    assert_eq!(status, 201, "{teardown}");
    assert_eq!(teardown["rev"], json!(rev_a), "{teardown}");
    let j = serve.wait_job(teardown["id"].as_i64().unwrap(), "finished", |j| {
        j["finished_at"].is_string()
    });
    assert_eq!(
        (j["state"].as_str(), j["result"].as_str()),
        (Some("succeeded"), Some("deployed")),
        "{}",
        explain(&j)
    );
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0));
    let (status, d) = serve
        .call(reqwest::Method::GET, "/v1/deployments/site", None, None)
        .unwrap();
    assert_eq!(status, 404, "{d}");
    let list = serve.get("/v1/deployments");
    assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
}

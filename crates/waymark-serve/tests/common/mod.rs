//! The service on a real TCP port with a scripted executor, and a client whose every
//! answer is checked against docs/openapi.json.

#![allow(dead_code)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
#[path = "../backends/mod.rs"]
mod backends;

use waymark_serve::{CancelFlag, Executor, Progress, RunOutcome, RunSpec};

pub const TOKEN_A: &str = "token-of-acme";
pub const TOKEN_B: &str = "token-of-globex";

/// Runs jobs by their revision's first letter: `b` builds until released or cancelled,
/// `a` reaches activation and waits to be released (a cancel there restores: failed),
/// `c` is unchanged at once, `f` fails.
#[derive(Default)]
pub struct Scripted {
    pub released: Mutex<HashSet<String>>,
    pub ran: Mutex<Vec<(i64, String)>>,
}

fn ev(kind: &str, host: &str, gate: Option<&str>) -> Value {
    let mut v = json!({"event": kind, "host": host, "schema": "waymark.deploy-event/v1", "at": "2026-01-01T00:00:00Z"});
    if let Some(g) = gate {
        v["gate"] = json!(g);
    }
    v
}

impl Scripted {
    fn wait(&self, rev: &str, cancel: &CancelFlag) -> bool {
        loop {
            if cancel.reason().is_some() {
                return false;
            }
            if self.released.lock().unwrap().contains(rev) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Executor for Scripted {
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome {
        self.ran.lock().unwrap().push((spec.job, spec.rev.clone()));
        let host = spec.hosts[0].clone();
        progress.log(&format!("job {} for {}", spec.job, spec.rev));
        progress.event(ev("start", &host, Some("build")));
        let mut b = ev("build", &host, None);
        for (k, n) in [
            ("total", 3),
            ("built", 1),
            ("substituted", 1),
            ("running", 1),
            ("failed", 0),
            ("waiting", 0),
        ] {
            b[k] = json!(n);
        }
        b["builder"] = json!("builder");
        progress.event(b);
        let done = |result: &str, message: Option<&str>| RunOutcome {
            result: result.into(),
            message: message.map(str::to_owned),
        };
        match spec.rev.as_bytes()[0] {
            b'b' => {
                if self.wait(&spec.rev, cancel) {
                    done("deployed", None)
                } else {
                    done("failed", Some("cancelled while building"))
                }
            }
            b'a' => {
                progress.event(ev("start", &host, Some("test")));
                if self.wait(&spec.rev, cancel) {
                    done("deployed", None)
                } else {
                    done("failed", Some("restored"))
                }
            }
            b'c' => done("unchanged", None),
            _ => done("failed", Some("web1: the switch test failed")),
        }
    }
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub exec: Arc<Scripted>,
    pub spec: Arc<Value>,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

fn spec() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The spec's path template a concrete path matches.
pub fn template<'a>(spec: &'a Value, path: &str) -> Option<&'a str> {
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
        })
}

/// Checks an answer against the spec: the route and method exist, the status is
/// documented, and a JSON body validates against its schema.
pub fn conforms(spec: &Value, method: &Method, path: &str, a: &Answer) {
    let t =
        template(spec, path).unwrap_or_else(|| panic!("{path}: no such path in docs/openapi.json"));
    let op = &spec["paths"][t][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{method} {t}: not in docs/openapi.json");
    let mut resp = op["responses"][a.status.to_string()].clone();
    assert!(
        resp.is_object(),
        "{method} {path}: status {} not documented ({})",
        a.status,
        a.body
    );
    if let Some(r) = resp["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        resp = spec["components"]["responses"][name].clone();
    }
    if a.status == 204 {
        return;
    }
    let media = a.content_type.split(';').next().unwrap().trim();
    let schema = &resp["content"][media]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {}: content type {media} not documented",
        a.status
    );
    if media.ends_with("json") {
        let root = json!({"components": spec["components"], "allOf": [schema]});
        let validator = jsonschema::validator_for(&root).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&a.body)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {}: {errors:?}\n{}",
            a.status,
            a.body
        );
    }
}

impl Server {
    pub async fn start(workers: usize) -> Self {
        Self::start_with(workers, None).await
    }

    /// With the panel's authorisation callback at `authorize`.
    pub async fn start_with(workers: usize, authorize: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "acme {}\nglobex {}\n",
                waymark_serve::auth::hash_token(TOKEN_A),
                waymark_serve::auth::hash_token(TOKEN_B)
            ),
        )
        .unwrap();
        let mut config = waymark_serve::Config::new(dir.path().join("state"));
        config.token_files = vec![tokens];
        config.workers = workers;
        config.authorize_url = authorize;
        // WAYMARK_TEST_BACKEND=postgres: the same tests on a fresh PostgreSQL database
        // (.ci/run runs them both ways).
        if std::env::var("WAYMARK_TEST_BACKEND").is_ok_and(|b| b == "postgres") {
            let url = tokio::task::spawn_blocking(backends::fresh_database)
                .await
                .unwrap();
            config.database =
                Some(url.expect("WAYMARK_TEST_BACKEND=postgres needs WAYMARK_TEST_POSTGRES"));
        }
        let exec = Arc::new(Scripted::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let e: Arc<dyn Executor> = exec.clone();
        tokio::spawn(async move { waymark_serve::serve(config, e, listener).await.unwrap() });
        Self {
            base,
            client: reqwest::Client::new(),
            exec,
            spec: Arc::new(spec()),
            dir,
        }
    }

    pub fn release(&self, rev: &str) {
        self.exec.released.lock().unwrap().insert(rev.to_owned());
    }

    /// A request with `token` (none: unauthenticated), checked against the spec.
    pub async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let body = if content_type.contains("json") {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        } else {
            Value::String(text)
        };
        assert!(status < 500, "{method} {path}: {status} {body}");
        let a = Answer {
            status,
            content_type,
            body,
        };
        if status == 404 && a.body["detail"] == "no such route (or not yours)" {
            return a;
        }
        conforms(&self.spec, &method, path, &a);
        a
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_with(Some(TOKEN_A), method, path, body.as_ref(), &[])
            .await
    }

    pub async fn deployment(&self, name: &str) {
        let a = self
            .call(
                Method::PUT,
                &format!("/v1/deployments/{name}"),
                Some(json!({"flake": "/srv/fleet", "hosts": [format!("{name}-host")]})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    pub async fn submit(&self, name: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            &format!("/v1/deployments/{name}/jobs"),
            Some(body),
        )
        .await
    }

    pub async fn job(&self, id: i64) -> Value {
        self.call(Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .body
    }

    /// Waits until job `id` satisfies `pred` (a generous deadline: a hang fails, no
    /// timing is asserted).
    pub async fn wait_job(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {what}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_state(&self, id: i64, state: &str) -> Value {
        self.wait_job(id, state, |j| j["state"] == state).await
    }
}

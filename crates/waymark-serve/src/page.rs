//! The fleet page: static HTML, CSS and a little JavaScript built into the binary (no
//! front-end build step, nothing to fetch from elsewhere), reading the same `/v1` API
//! with the tenant's token, plus the one read-only endpoint it needs that the API
//! lacked: `/v1/hosts`, each host as the tenant's jobs last saw it.
//!
//! Why a static page over server-rendered fragments: the token stays in the browser
//! (sent as a bearer header, never in a cookie a cross-site form could ride on), the
//! live view needs JavaScript for the event stream anyway, and the page then shows only
//! what the API shows the token, so tenant isolation is the API's, tested once. Every
//! value is put in the page as text (`textContent`), never as HTML, and the page is
//! served with a Content-Security-Policy that allows no inline script and no other
//! origin.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::api::{App, db, json_response, tenant};
use crate::model::JobState;
use crate::problem::Problem;
use crate::store::{Job, JobFilter};

const INDEX: &str = include_str!("../page/index.html");
const CSS: &str = include_str!("../page/app.css");
const JS: &str = include_str!("../page/app.js");

/// No inline script or style, nothing from another origin, not framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// How many of the tenant's newest jobs `/v1/hosts` reads.
const HOST_JOBS: usize = 1000;
/// Releases listed per host.
const RELEASES: usize = 20;

/// The page's routes (merged into the API's router).
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/page/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/page/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route("/v1/hosts", get(hosts))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn hosts(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, Problem> {
    let tenant = tenant(&app, &headers, "read", "").await?;
    let jobs = db(&app, move |s| {
        s.jobs(
            &tenant,
            &JobFilter {
                limit: HOST_JOBS,
                ..JobFilter::default()
            },
        )
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "hosts": fleet(&jobs) }),
    ))
}

/// Each host the jobs (newest first) deployed to: its last job, what it ran when last
/// seen, its latest known-good closure, drift between the two, and its releases.
pub fn fleet(jobs: &[Job]) -> Vec<Value> {
    let mut hosts: BTreeMap<String, Value> = BTreeMap::new();
    for job in jobs {
        let Some(per_host) = job.hosts.as_object() else {
            continue;
        };
        for (name, h) in per_host {
            let entry = hosts.entry(name.clone()).or_insert_with(|| {
                json!({
                    "host": name,
                    "last_job": {
                        "id": job.id,
                        "deployment": job.deployment,
                        "state": job.state,
                        "rev": job.rev,
                        "result": h["result"],
                        "reached": h["reached"],
                        "gate": h["gate"],
                        "gate_result": h["gate_result"],
                        "change": h["change"],
                        "message": h["message"],
                        "restored": restored(h),
                    },
                    "running": null,
                    "known_good": null,
                    "releases": [],
                })
            });
            if entry["running"].is_null() && h["running"].is_string() {
                entry["running"] = h["running"].clone();
            }
            let good = job.state == JobState::Succeeded
                && matches!(h["result"].as_str(), Some("deployed" | "unchanged"))
                && h["closure"].is_string();
            if good {
                let release = json!({
                    "job": job.id,
                    "deployment": job.deployment,
                    "rev": job.rev,
                    "closure": h["closure"],
                    "mark": h["mark"],
                    "at": job.finished_at,
                });
                if entry["known_good"].is_null() {
                    entry["known_good"] = release.clone();
                }
                if let Some(list) = entry["releases"].as_array_mut()
                    && list.len() < RELEASES
                {
                    list.push(release);
                }
            }
        }
    }
    hosts
        .into_values()
        .map(|mut h| {
            let drift = match (h["running"].as_str(), h["known_good"]["closure"].as_str()) {
                (Some(r), Some(k)) => Value::Bool(r != k),
                _ => Value::Null,
            };
            h["drift"] = drift;
            h
        })
        .collect()
}

/// A failed host whose activation began runs what it ran before: the deploy restored
/// it (a failure before activation never touched it).
fn restored(h: &Value) -> bool {
    h["result"] == "failed" && matches!(h["reached"].as_str(), Some("test" | "switch" | "boot"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobKind, Mode, Phase, Priority};

    fn job(id: i64, state: JobState, hosts: Value) -> Job {
        Job {
            id,
            tenant: "acme".into(),
            deployment: "shop".into(),
            kind: JobKind::Deploy,
            state,
            phase: Phase::Activating,
            priority: Priority::Normal,
            mode: Mode::Replace,
            rev: format!("{id:07}"),
            config: None,
            source: String::new(),
            idempotency_key: None,
            reason: None,
            result: None,
            counters: json!({}),
            hosts,
            superseded_by: None,
            cancel_requested: None,
            created_at: String::new(),
            started_at: None,
            finished_at: Some(format!("t{id}")),
        }
    }

    #[test]
    fn a_host_shows_its_last_job_known_good_drift_and_releases() {
        // Newest first: 3 failed its switch test and was restored; 2 and 1 deployed.
        let jobs = vec![
            job(
                3,
                JobState::Failed,
                json!({"web1": {"result": "failed", "reached": "test", "closure": "/nix/store/c",
                    "running": "/nix/store/b", "change": "hello 1 → 2"}}),
            ),
            job(
                2,
                JobState::Succeeded,
                json!({"web1": {"result": "deployed", "reached": "mark", "closure": "/nix/store/b",
                    "running": "/nix/store/b"}}),
            ),
            job(
                1,
                JobState::Succeeded,
                json!({"web1": {"result": "deployed", "closure": "/nix/store/a",
                    "running": "/nix/store/a"}, "db1": {"result": "deployed",
                    "closure": "/nix/store/d", "running": "/nix/store/x"}}),
            ),
        ];
        let f = fleet(&jobs);
        assert_eq!(f.len(), 2);
        let (db1, web1) = (&f[0], &f[1]);
        assert_eq!(web1["last_job"]["id"], 3);
        assert_eq!(web1["last_job"]["restored"], true);
        assert_eq!(web1["last_job"]["change"], "hello 1 → 2");
        assert_eq!(web1["running"], "/nix/store/b");
        assert_eq!(web1["known_good"]["closure"], "/nix/store/b");
        assert_eq!(web1["drift"], false);
        let releases: Vec<i64> = web1["releases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["job"].as_i64().unwrap())
            .collect();
        assert_eq!(releases, vec![2, 1]);
        assert_eq!(db1["drift"], true);
    }
}

//! The HTTP API under `/v1` (docs/openapi.json): deployments, jobs, cancels, logs,
//! events (SSE or JSON polling), queue depth; `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::auth::{Authorizer, Tokens};
use crate::model::{self, JobKind, JobState, Mode, Priority};
use crate::problem::Problem;
use crate::runner::Shared;
use crate::store::{Cancelled, Deployment, Job, JobFilter, NewJob, Submitted};

mod input;
mod stream;

use input::{JsonBody, Params, Seg, id_param, limit, name_param};
use stream::{job_events, logs, tenant_events};

/// What every handler reads.
pub struct App {
    pub shared: Arc<Shared>,
    pub tokens: Tokens,
    pub authorizer: Authorizer,
    pub requests: AtomicU64,
}

type AppState = State<Arc<App>>;
type Answer = Result<Response, Problem>;

/// The largest request body accepted (a configuration document included).
pub const BODY_LIMIT: usize = 256 * 1024;
const MAX_PAGE: usize = 200;

/// The router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/queue", get(queue))
        .route("/v1/deployments", get(list_deployments))
        .route(
            "/v1/deployments/{name}",
            get(get_deployment)
                .put(put_deployment)
                .delete(delete_deployment),
        )
        .route("/v1/deployments/{name}/jobs", post(submit))
        .route("/v1/deployments/{name}/cancel", post(cancel_deployment))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/logs", get(logs))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/events", get(tenant_events))
        .merge(crate::page::routes())
        .fallback(|| async { Problem::not_found("route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "this route does not take this method (docs/openapi.json)",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), count))
        .with_state(app)
}

async fn count(State(app): AppState, req: Request, next: axum::middleware::Next) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    next.run(req).await
}

/// Runs a storage call on a blocking thread; a failure is a 503.
pub(crate) async fn db<T: Send + 'static>(
    app: &App,
    f: impl FnOnce(&dyn crate::store::Store) -> crate::error::Result<T> + Send + 'static,
) -> Result<T, Problem> {
    let store = app.shared.store.clone();
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Problem::unavailable(&e)),
        Err(e) => Err(Problem::unavailable(&e)),
    }
}

/// The tenant of the request's bearer token, if the panel allows `action`.
pub(crate) async fn tenant(
    app: &App,
    headers: &HeaderMap,
    action: &str,
    deployment: &str,
) -> Result<String, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(tenant) = token.and_then(|t| app.tokens.tenant(t)) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` with a token of a token file",
        ));
    };
    if !app.authorizer.allows(&tenant, action, deployment).await {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the panel's authorisation callback did not allow {action}"),
        ));
    }
    Ok(tenant)
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, axum::Json(v)).into_response()
}

async fn healthz(State(app): AppState) -> Answer {
    db(&app, crate::store::Store::depth).await?;
    Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
}

async fn metrics(State(app): AppState) -> Answer {
    let (depth, counts) = db(&app, |s| Ok((s.depth()?, s.counts()?))).await?;
    let mut out = String::new();
    out.push_str("# HELP waymark_serve_queue_depth Jobs waiting, per priority class.\n");
    out.push_str("# TYPE waymark_serve_queue_depth gauge\n");
    for d in &depth {
        out.push_str(&format!(
            "waymark_serve_queue_depth{{priority=\"{}\"}} {}\n",
            d.priority.as_str(),
            d.queued
        ));
    }
    out.push_str("# HELP waymark_serve_running_jobs Jobs running, per priority class.\n");
    out.push_str("# TYPE waymark_serve_running_jobs gauge\n");
    for d in &depth {
        out.push_str(&format!(
            "waymark_serve_running_jobs{{priority=\"{}\"}} {}\n",
            d.priority.as_str(),
            d.running
        ));
    }
    out.push_str("# HELP waymark_serve_jobs Jobs stored, per state.\n");
    out.push_str("# TYPE waymark_serve_jobs gauge\n");
    for (state, n) in counts {
        out.push_str(&format!(
            "waymark_serve_jobs{{state=\"{}\"}} {n}\n",
            state.as_str()
        ));
    }
    out.push_str("# HELP waymark_serve_http_requests_total HTTP requests answered.\n");
    out.push_str("# TYPE waymark_serve_http_requests_total counter\n");
    out.push_str(&format!(
        "waymark_serve_http_requests_total {}\n",
        app.requests.load(Ordering::Relaxed)
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn queue(State(app): AppState, headers: HeaderMap) -> Answer {
    tenant(&app, &headers, "read", "").await?;
    let depth = db(&app, crate::store::Store::depth).await?;
    Ok(json_response(StatusCode::OK, &json!({ "classes": depth })))
}

/// A deployment's creation or update.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDeployment {
    flake: String,
    hosts: Vec<String>,
    #[serde(default = "default_goal")]
    goal: String,
    #[serde(default = "default_input")]
    config_input: String,
}

fn default_goal() -> String {
    "switch".into()
}

fn default_input() -> String {
    "panel".into()
}

const GOALS: [&str; 6] = ["build", "diff", "dry-activate", "test", "switch", "boot"];

/// Whether `s` can be passed to the deploy as one argument: no whitespace or control
/// characters, no option look-alike.
fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 1024
        && !s.starts_with('-')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_deployment(body: &PutDeployment) -> Result<(), Problem> {
    if !plain_word(&body.flake) {
        return Err(Problem::field(
            "flake",
            "the flake reference is one word (no spaces, not starting with '-'), e.g. git+https://example.org/fleet",
        ));
    }
    if body.flake.contains("rev=") || body.flake.contains("ref=") {
        return Err(Problem::field(
            "flake",
            "the flake reference names no revision: each job gives its own `rev`",
        ));
    }
    if body.hosts.is_empty() || body.hosts.len() > 1000 {
        return Err(Problem::field("hosts", "hosts lists 1 to 1000 selections"));
    }
    for (i, h) in body.hosts.iter().enumerate() {
        if !plain_word(h) || h.contains(',') || h.len() > 253 {
            return Err(Problem::field(
                &format!("hosts[{i}]"),
                "a host selection is a name, @tag or glob: one word without ',' not starting with '-'",
            ));
        }
    }
    if !GOALS.contains(&body.goal.as_str()) {
        return Err(Problem::field(
            "goal",
            format!("the goal is one of {}", GOALS.join(", ")),
        ));
    }
    if !body
        .config_input
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || body.config_input.is_empty()
        || body.config_input.len() > 64
    {
        return Err(Problem::field(
            "config_input",
            "the configuration's flake input is a name of letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

async fn deployment_json(app: &App, d: Deployment) -> Result<Value, Problem> {
    let (t, n) = (d.tenant.clone(), d.name.clone());
    let (running, queued, last) = db(app, move |s| s.deployment_jobs(&t, &n)).await?;
    let state = model::deployment_state(running, queued, last);
    let mut v = serde_json::to_value(&d).unwrap_or_default();
    v["state"] = json!(state);
    Ok(v)
}

async fn put_deployment(
    State(app): AppState,
    headers: HeaderMap,
    Seg(name): Seg,
    JsonBody(body): JsonBody<PutDeployment>,
) -> Answer {
    let name = name_param(&name)?;
    let tenant = tenant(&app, &headers, "write", &name).await?;
    check_deployment(&body)?;
    let d = Deployment {
        name,
        tenant,
        flake: body.flake,
        hosts: body.hosts,
        goal: body.goal,
        config_input: body.config_input,
        desired_rev: None,
        applied_rev: None,
        created_at: String::new(),
    };
    let stored = db(&app, move |s| s.put_deployment(&d)).await?;
    Ok(json_response(
        StatusCode::OK,
        &deployment_json(&app, stored).await?,
    ))
}

async fn get_deployment(State(app): AppState, headers: HeaderMap, Seg(name): Seg) -> Answer {
    let name = name_param(&name)?;
    let tenant = tenant(&app, &headers, "read", &name).await?;
    let found = db(&app, move |s| s.deployment(&tenant, &name)).await?;
    let d = found.ok_or_else(|| Problem::not_found("deployment"))?;
    Ok(json_response(
        StatusCode::OK,
        &deployment_json(&app, d).await?,
    ))
}

async fn list_deployments(State(app): AppState, headers: HeaderMap, Params(q): Params) -> Answer {
    let tenant = tenant(&app, &headers, "read", "").await?;
    let limit = limit(&q)?;
    let after = match q.get("cursor") {
        Some(c) => Some(
            name_param(c)
                .map_err(|_| Problem::field("cursor", "not a cursor this service gave"))?,
        ),
        None => None,
    };
    let page = db(&app, move |s| {
        s.deployments(&tenant, after.as_deref(), limit)
    })
    .await?;
    let next = (page.len() == limit).then(|| page.last().map(|d| d.name.clone()));
    let mut items = Vec::new();
    for d in page {
        items.push(deployment_json(&app, d).await?);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next.flatten()}),
    ))
}

/// A submission's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    rev: String,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    priority: Priority,
}

fn check_rev(rev: &str) -> Result<(), Problem> {
    if (7..=40).contains(&rev.len())
        && rev
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(Problem::field(
            "rev",
            "rev is a full commit id: 40 lowercase hexadecimal digits (the job builds exactly that commit)",
        ))
    }
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err(Problem::field(
            "Idempotency-Key",
            "the Idempotency-Key header is 1 to 128 visible ASCII characters",
        )),
    }
}

fn mode_param(q: &HashMap<String, String>) -> Result<Mode, Problem> {
    q.get("mode").map_or(Ok(Mode::Replace), |m| {
        serde_json::from_value(json!(m))
            .map_err(|_| Problem::field("mode", "mode is one of replace, queue, reject, attach"))
    })
}

fn priority_param(q: &HashMap<String, String>) -> Result<Priority, Problem> {
    q.get("priority").map_or(Ok(Priority::Normal), |p| {
        Priority::parse(p)
            .ok_or_else(|| Problem::field("priority", "priority is one of high, normal, low"))
    })
}

async fn enqueue(app: &App, new: NewJob) -> Answer {
    let submitted = db(app, move |s| s.submit(&new)).await?;
    app.shared.wake.notify_one();
    app.shared.events.send_modify(|s| *s += 1);
    match submitted {
        Submitted::Created(job) => Ok(json_response(StatusCode::CREATED, &job_json(&job))),
        Submitted::Existing(job) => Ok(json_response(StatusCode::OK, &job_json(&job))),
        Submitted::Conflict(job) => Err(Problem {
            job: Some(job.id),
            ..Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "job {} is {} on this deployment (mode reject): wait for it, or submit with mode replace or queue",
                    job.id,
                    job.state.as_str()
                ),
            )
        }),
        Submitted::KeyReused => Err(Problem {
            field: Some("Idempotency-Key".into()),
            ..Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency key reused",
                "this Idempotency-Key was used for a different request: use a new key",
            )
        }),
        Submitted::NoDeployment => Err(Problem::not_found("deployment")),
    }
}

async fn submit(
    State(app): AppState,
    headers: HeaderMap,
    Seg(name): Seg,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Answer {
    let name = name_param(&name)?;
    let tenant = tenant(&app, &headers, "write", &name).await?;
    let key = idempotency_key(&headers)?;
    check_rev(&body.rev)?;
    let config_text = body
        .config
        .as_ref()
        .map(Value::to_string)
        .unwrap_or_default();
    let source = format!("{}:{}", body.rev, sha256_hex(&[&config_text]));
    let mode = serde_json::to_value(body.mode).unwrap_or_default();
    let request_hash = sha256_hex(&[
        &name,
        "deploy",
        &source,
        mode.as_str().unwrap_or(""),
        body.priority.as_str(),
    ]);
    enqueue(
        &app,
        NewJob {
            tenant,
            deployment: name,
            kind: JobKind::Deploy,
            priority: body.priority,
            mode: body.mode,
            rev: body.rev,
            config: body.config,
            source,
            idempotency_key: key,
            request_hash,
        },
    )
    .await
}

async fn delete_deployment(
    State(app): AppState,
    headers: HeaderMap,
    Seg(name): Seg,
    Params(q): Params,
) -> Answer {
    let name = name_param(&name)?;
    let tenant = tenant(&app, &headers, "delete", &name).await?;
    let key = idempotency_key(&headers)?;
    let mode = mode_param(&q)?;
    let priority = priority_param(&q)?;
    let (t, n) = (tenant.clone(), name.clone());
    let found = db(&app, move |s| s.deployment(&t, &n)).await?;
    let d = found.ok_or_else(|| Problem::not_found("deployment"))?;
    let Some(rev) = d.applied_rev.clone().or(d.desired_rev.clone()) else {
        // Never deployed: nothing to tear down.
        let (t, n) = (tenant.clone(), name.clone());
        if db(&app, move |s| s.forget(&t, &n)).await? {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "the deployment has a job queued or running: cancel it first",
        ));
    };
    let source = format!("teardown:{rev}");
    let mode_name = serde_json::to_value(mode).unwrap_or_default();
    let request_hash = sha256_hex(&[
        &name,
        "teardown",
        &source,
        mode_name.as_str().unwrap_or(""),
        priority.as_str(),
    ]);
    enqueue(
        &app,
        NewJob {
            tenant,
            deployment: name,
            kind: JobKind::Teardown,
            priority,
            mode,
            rev,
            config: None,
            source,
            idempotency_key: key,
            request_hash,
        },
    )
    .await
}

/// A cancel's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: String,
}

fn check_reason(reason: &str) -> Result<(), Problem> {
    if reason.trim().is_empty() || reason.len() > 500 || reason.chars().any(char::is_control) {
        return Err(Problem::field(
            "reason",
            "the reason is 1 to 500 characters on one line",
        ));
    }
    Ok(())
}

fn cancelled_json(c: &Cancelled) -> Option<Value> {
    match c {
        Cancelled::Now(j) | Cancelled::Pending(j) | Cancelled::AlreadyFinal(j) => {
            let mut v = job_json(j);
            v["cancel"] = json!(match c {
                Cancelled::Now(_) => "cancelled",
                Cancelled::Pending(_) => "pending",
                _ => "already-final",
            });
            Some(v)
        }
        Cancelled::NotFound => None,
    }
}

async fn cancel_job(
    State(app): AppState,
    headers: HeaderMap,
    Seg(id): Seg,
    JsonBody(body): JsonBody<CancelBody>,
) -> Answer {
    let id = id_param(&id)?;
    let tenant = tenant(&app, &headers, "cancel", "").await?;
    check_reason(&body.reason)?;
    let c = db(&app, move |s| s.cancel(&tenant, id, &body.reason)).await?;
    app.shared.wake.notify_one();
    app.shared.events.send_modify(|s| *s += 1);
    let v = cancelled_json(&c).ok_or_else(|| Problem::not_found("job"))?;
    Ok(json_response(StatusCode::OK, &v))
}

async fn cancel_deployment(
    State(app): AppState,
    headers: HeaderMap,
    Seg(name): Seg,
    JsonBody(body): JsonBody<CancelBody>,
) -> Answer {
    let name = name_param(&name)?;
    let tenant = tenant(&app, &headers, "cancel", &name).await?;
    check_reason(&body.reason)?;
    let results = db(&app, move |s| {
        if s.deployment(&tenant, &name)?.is_none() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for state in [JobState::Queued, JobState::Running] {
            let filter = JobFilter {
                deployment: Some(name.clone()),
                state: Some(state),
                before: None,
                limit: 10,
            };
            for job in s.jobs(&tenant, &filter)? {
                out.push(s.cancel(&tenant, job.id, &body.reason)?);
            }
        }
        Ok(Some(out))
    })
    .await?;
    let results = results.ok_or_else(|| Problem::not_found("deployment"))?;
    app.shared.wake.notify_one();
    app.shared.events.send_modify(|s| *s += 1);
    let jobs: Vec<Value> = results.iter().filter_map(cancelled_json).collect();
    Ok(json_response(StatusCode::OK, &json!({ "jobs": jobs })))
}

/// A job as the API shows it.
pub fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "deployment": j.deployment,
        "kind": j.kind,
        "state": j.state,
        "phase": j.phase,
        "priority": j.priority,
        "mode": j.mode,
        "rev": j.rev,
        "config": j.config,
        "idempotency_key": j.idempotency_key,
        "reason": j.reason,
        "result": j.result,
        "counters": j.counters,
        "hosts": j.hosts,
        "superseded_by": j.superseded_by,
        "cancel_requested": j.cancel_requested,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
    })
}

async fn get_job(State(app): AppState, headers: HeaderMap, Seg(id): Seg) -> Answer {
    let id = id_param(&id)?;
    let tenant = tenant(&app, &headers, "read", "").await?;
    let job = db(&app, move |s| s.job(&tenant, id)).await?;
    let job = job.ok_or_else(|| Problem::not_found("job"))?;
    Ok(json_response(StatusCode::OK, &job_json(&job)))
}

async fn list_jobs(State(app): AppState, headers: HeaderMap, Params(q): Params) -> Answer {
    let tenant = tenant(&app, &headers, "read", "").await?;
    let limit = limit(&q)?;
    let before = match q.get("cursor") {
        Some(c) => Some(
            id_param(c).map_err(|_| Problem::field("cursor", "not a cursor this service gave"))?,
        ),
        None => None,
    };
    let state = match q.get("state") {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            Problem::field(
                "state",
                "state is one of queued, running, succeeded, failed, cancelled, superseded, needs-reconcile",
            )
        })?),
        None => None,
    };
    let deployment = q
        .get("deployment")
        .map(|d| name_param(d).map_err(|_| Problem::field("deployment", "not a deployment name")))
        .transpose()?;
    let filter = JobFilter {
        deployment,
        state,
        before,
        limit,
    };
    let page = db(&app, move |s| s.jobs(&tenant, &filter)).await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|j| j.id.to_string()))
        .flatten();
    let items: Vec<Value> = page.iter().map(job_json).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"items": items, "next_cursor": next}),
    ))
}

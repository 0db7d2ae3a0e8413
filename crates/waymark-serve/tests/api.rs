//! The service on a real port, driven by a real HTTP client: modes, supersede, cancel,
//! idempotency, tenants, problems, logs, events; every answer checked against
//! docs/openapi.json.

#![allow(clippy::many_single_char_names)] // short names for jobs and answers read better here

mod common;

use common::{Server, TOKEN_A, TOKEN_B};
use reqwest::Method;
use serde_json::{Value, json};

fn id(a: &common::Answer) -> i64 {
    a.body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id: {}", a.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_supersedes_the_queued_job_and_cancels_a_building_one() {
    let s = Server::start(4).await;
    s.deployment("shop").await;
    let first = s
        .submit(
            "shop",
            json!({"rev": "b000001000000000000000000000000000000000"}),
        )
        .await;
    assert_eq!(first.status, 201);
    let first = id(&first);
    s.wait_job(first, "building", |j| {
        j["state"] == "running" && j["phase"] == "building"
    })
    .await;
    let d = s.call(Method::GET, "/v1/deployments/shop", None).await.body;
    assert_eq!(d["state"], "building");
    assert_eq!(d["desired_rev"], "b000001000000000000000000000000000000000");

    // queue: waits behind the running job, which goes on.
    let queued = s
        .submit(
            "shop",
            json!({"rev": "c000002000000000000000000000000000000000", "mode": "queue"}),
        )
        .await;
    assert_eq!(queued.status, 201);
    let queued = id(&queued);
    assert_eq!(s.job(queued).await["state"], "queued");
    assert_eq!(s.job(first).await["state"], "running");

    // reject: refused while a job is queued or running, naming it.
    let r = s
        .submit(
            "shop",
            json!({"rev": "c000003000000000000000000000000000000000", "mode": "reject"}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.body["job"], queued);

    // attach: the same source is the same job.
    let r = s
        .submit(
            "shop",
            json!({"rev": "c000002000000000000000000000000000000000", "mode": "attach"}),
        )
        .await;
    assert_eq!((r.status, id(&r)), (200, queued));

    // replace: the queued job is superseded, the building one cancelled.
    let newest = s
        .submit(
            "shop",
            json!({"rev": "c000004000000000000000000000000000000000"}),
        )
        .await;
    assert_eq!(newest.status, 201);
    let newest = id(&newest);
    let q = s.job(queued).await;
    assert_eq!(q["state"], "superseded");
    assert_eq!(q["superseded_by"], newest);
    let f = s.wait_state(first, "cancelled").await;
    assert_eq!(f["reason"], format!("superseded by job {newest}"));
    let n = s.wait_state(newest, "succeeded").await;
    assert_eq!(n["result"], "unchanged");
    let d = s.call(Method::GET, "/v1/deployments/shop", None).await.body;
    assert_eq!(
        (d["state"].as_str(), d["applied_rev"].as_str()),
        (
            Some("idle"),
            Some("c000004000000000000000000000000000000000")
        )
    );
    // The superseded job never ran.
    let ran: Vec<i64> = s.exec.ran.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(ran, vec![first, newest]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_is_never_torn_by_a_supersede_but_a_cancel_restores_it() {
    let s = Server::start(4).await;
    s.deployment("blog").await;
    let act = id(&s
        .submit(
            "blog",
            json!({"rev": "a000001000000000000000000000000000000000"}),
        )
        .await);
    s.wait_job(act, "activating", |j| j["phase"] == "activating")
        .await;
    assert_eq!(
        s.call(Method::GET, "/v1/deployments/blog", None).await.body["state"],
        "deploying"
    );
    let next = id(&s
        .submit(
            "blog",
            json!({"rev": "c000002000000000000000000000000000000000"}),
        )
        .await);
    // The replace did not touch the activation: still running, no cancel pending.
    let j = s.job(act).await;
    assert_eq!(
        (j["state"].as_str(), j["cancel_requested"].as_str()),
        (Some("running"), None)
    );
    s.release("a000001000000000000000000000000000000000");
    assert_eq!(s.wait_state(act, "succeeded").await["result"], "deployed");
    s.wait_state(next, "succeeded").await;

    // A requested cancel reaches an activation: the host restores (the script fails it),
    // and the job ends cancelled with the reason.
    let act2 = id(&s
        .submit(
            "blog",
            json!({"rev": "a000003000000000000000000000000000000000"}),
        )
        .await);
    s.wait_job(act2, "activating", |j| j["phase"] == "activating")
        .await;
    let c = s
        .call(
            Method::POST,
            &format!("/v1/jobs/{act2}/cancel"),
            Some(json!({"reason": "customer asked"})),
        )
        .await;
    assert_eq!(
        (c.status, c.body["cancel"].as_str()),
        (200, Some("pending"))
    );
    let j = s.wait_state(act2, "cancelled").await;
    assert_eq!(j["reason"], "customer asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_and_failures_carry_their_reasons() {
    let s = Server::start(1).await;
    s.deployment("one").await;
    s.deployment("two").await;
    // One worker: `one` builds, `two`'s job waits.
    let running = id(&s
        .submit(
            "one",
            json!({"rev": "b000001000000000000000000000000000000000"}),
        )
        .await);
    s.wait_state(running, "running").await;
    let waiting = id(&s
        .submit(
            "two",
            json!({"rev": "f000002000000000000000000000000000000000"}),
        )
        .await);
    let c = s
        .call(
            Method::POST,
            &format!("/v1/jobs/{waiting}/cancel"),
            Some(json!({"reason": "wrong build"})),
        )
        .await;
    assert_eq!(c.body["cancel"], "cancelled");
    assert_eq!(s.job(waiting).await["reason"], "wrong build");
    // Cancelling again: already final, nothing changes.
    let c = s
        .call(
            Method::POST,
            &format!("/v1/jobs/{waiting}/cancel"),
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(
        (c.body["cancel"].as_str(), c.body["reason"].as_str()),
        (Some("already-final"), Some("wrong build"))
    );
    // A deployment's cancel stops its running job.
    let c = s
        .call(
            Method::POST,
            "/v1/deployments/one/cancel",
            Some(json!({"reason": "maintenance"})),
        )
        .await;
    assert_eq!(c.body["jobs"][0]["id"], running);
    assert_eq!(
        s.wait_state(running, "cancelled").await["reason"],
        "maintenance"
    );
    // A failing deploy: failed, with the host's message; the deployment shows failed.
    let failing = id(&s
        .submit(
            "two",
            json!({"rev": "f000003000000000000000000000000000000000"}),
        )
        .await);
    let j = s.wait_state(failing, "failed").await;
    assert_eq!(j["reason"], "web1: the switch test failed");
    assert_eq!(j["counters"]["total"], 3);
    assert_eq!(
        s.call(Method::GET, "/v1/deployments/two", None).await.body["state"],
        "failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_same_job_and_refuses_another_request() {
    let s = Server::start(0).await;
    s.deployment("api").await;
    let key = [("Idempotency-Key", "order-77")];
    let body =
        json!({"rev": "c000001000000000000000000000000000000000", "config": {"replicas": 2}});
    let a = s
        .call_with(
            Some(TOKEN_A),
            Method::POST,
            "/v1/deployments/api/jobs",
            Some(&body),
            &key,
        )
        .await;
    let b = s
        .call_with(
            Some(TOKEN_A),
            Method::POST,
            "/v1/deployments/api/jobs",
            Some(&body),
            &key,
        )
        .await;
    assert_eq!((a.status, b.status), (201, 200));
    assert_eq!(id(&a), id(&b));
    assert_eq!(b.body["config"], json!({"replicas": 2}));
    let other =
        json!({"rev": "c000001000000000000000000000000000000000", "config": {"replicas": 3}});
    let c = s
        .call_with(
            Some(TOKEN_A),
            Method::POST,
            "/v1/deployments/api/jobs",
            Some(&other),
            &key,
        )
        .await;
    assert_eq!(
        (c.status, c.body["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );
    // The same key of another tenant is another key.
    s.call_with(
        Some(TOKEN_B),
        Method::PUT,
        "/v1/deployments/api",
        Some(&json!({"flake": "/f", "hosts": ["x"]})),
        &[],
    )
    .await;
    let d = s
        .call_with(
            Some(TOKEN_B),
            Method::POST,
            "/v1/deployments/api/jobs",
            Some(&other),
            &key,
        )
        .await;
    assert_eq!(d.status, 201);
    assert_ne!(id(&d), id(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_deployments_jobs_and_events_do_not_exist() {
    let s = Server::start(0).await;
    s.deployment("private").await;
    let job = id(&s
        .submit(
            "private",
            json!({"rev": "c000001000000000000000000000000000000000"}),
        )
        .await);
    let b = |m: Method, p: String, body: Option<Value>| {
        let s = &s;
        async move { s.call_with(Some(TOKEN_B), m, &p, body.as_ref(), &[]).await }
    };
    assert_eq!(
        b(Method::GET, "/v1/deployments/private".into(), None)
            .await
            .status,
        404
    );
    assert_eq!(
        b(Method::GET, format!("/v1/jobs/{job}"), None).await.status,
        404
    );
    assert_eq!(
        b(Method::GET, format!("/v1/jobs/{job}/logs"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        b(Method::GET, format!("/v1/jobs/{job}/events"), None)
            .await
            .status,
        404
    );
    let c = b(
        Method::POST,
        format!("/v1/jobs/{job}/cancel"),
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(c.status, 404);
    let c = b(
        Method::POST,
        "/v1/deployments/private/jobs".into(),
        Some(json!({"rev": "c000002000000000000000000000000000000000"})),
    )
    .await;
    assert_eq!(c.status, 404);
    assert_eq!(
        b(Method::GET, "/v1/jobs".into(), None).await.body["items"],
        json!([])
    );
    assert_eq!(
        b(Method::GET, "/v1/deployments".into(), None).await.body["items"],
        json!([])
    );
    assert_eq!(
        b(Method::GET, "/v1/events".into(), None).await.body["events"],
        json!([])
    );
    // The owner still sees it whole.
    assert_eq!(s.job(job).await["state"], "queued");
    // No token, or an unknown one: 401.
    for token in [None, Some("nope")] {
        let a = s.call_with(token, Method::GET, "/v1/jobs", None, &[]).await;
        assert_eq!(
            (a.status, a.content_type.as_str()),
            (401, "application/problem+json")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_naming_the_field() {
    let s = Server::start(0).await;
    s.deployment("ok").await;
    let cases: Vec<(Method, &str, Option<Value>, u16, &str)> = vec![
        (
            Method::PUT,
            "/v1/deployments/Bad!",
            Some(json!({"flake": "/f", "hosts": ["a"]})),
            400,
            "name",
        ),
        (
            Method::PUT,
            "/v1/deployments/x",
            Some(json!({"flake": "/f"})),
            400,
            "body",
        ),
        (
            Method::PUT,
            "/v1/deployments/x",
            Some(json!({"flake": "-f", "hosts": ["a"]})),
            400,
            "flake",
        ),
        (
            Method::PUT,
            "/v1/deployments/x",
            Some(json!({"flake": "/f", "hosts": ["a", "b c"]})),
            400,
            "hosts[1]",
        ),
        (
            Method::PUT,
            "/v1/deployments/x",
            Some(json!({"flake": "/f", "hosts": "a"})),
            400,
            "hosts",
        ),
        (
            Method::PUT,
            "/v1/deployments/x",
            Some(json!({"flake": "/f", "hosts": ["a"], "goal": "yolo"})),
            400,
            "goal",
        ),
        (
            Method::POST,
            "/v1/deployments/ok/jobs",
            Some(json!({"rev": "HEAD"})),
            400,
            "rev",
        ),
        (
            Method::POST,
            "/v1/deployments/ok/jobs",
            Some(json!({"rev": "c000001000000000000000000000000000000000", "priority": "urgent"})),
            400,
            "priority",
        ),
        (
            Method::POST,
            "/v1/deployments/ok/jobs",
            Some(json!({"rev": "c000001000000000000000000000000000000000", "extra": 1})),
            400,
            "extra",
        ),
        (
            Method::POST,
            "/v1/deployments/ok/jobs",
            Some(json!([1])),
            400,
            "body",
        ),
        (
            Method::POST,
            "/v1/deployments/nope/jobs",
            Some(json!({"rev": "c000001000000000000000000000000000000000"})),
            404,
            "",
        ),
        (
            Method::POST,
            "/v1/jobs/abc/cancel",
            Some(json!({"reason": "x"})),
            400,
            "id",
        ),
        (
            Method::POST,
            "/v1/jobs/1/cancel",
            Some(json!({"reason": ""})),
            400,
            "reason",
        ),
        (Method::GET, "/v1/jobs?limit=100000", None, 400, "limit"),
        (Method::GET, "/v1/jobs?state=done", None, 400, "state"),
        (Method::GET, "/v1/jobs?cursor=zz", None, 400, "cursor"),
        (Method::GET, "/v1/events?after=-3", None, 400, "after"),
        (
            Method::GET,
            "/v1/jobs/1/logs?follow=maybe",
            None,
            400,
            "follow",
        ),
        (
            Method::DELETE,
            "/v1/deployments/ok?mode=later",
            None,
            400,
            "mode",
        ),
    ];
    for (m, path, body, status, field) in cases {
        let a = s.call(m.clone(), path, body).await;
        assert_eq!(a.status, status, "{m} {path}: {}", a.body);
        assert_eq!(a.content_type, "application/problem+json", "{m} {path}");
        if !field.is_empty() {
            assert_eq!(a.body["field"], field, "{m} {path}: {}", a.body);
        }
    }
    // Not JSON at all, and a body over the limit.
    let resp = s
        .client
        .post(format!("{}/v1/deployments/ok/jobs", s.base))
        .bearer_auth(TOKEN_A)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let big = json!({"rev": "c000001000000000000000000000000000000000", "config": {"blob": "x".repeat(300 * 1024)}});
    let a = s
        .call(Method::POST, "/v1/deployments/ok/jobs", Some(big))
        .await;
    assert_eq!(
        (a.status, a.content_type.as_str()),
        (413, "application/problem+json")
    );
    let resp = s
        .client
        .request(Method::PATCH, format!("{}/v1/jobs", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = s
        .client
        .get(format!("{}/v2/nothing", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = s
        .client
        .get(format!("{}/v1/events", s.base))
        .bearer_auth(TOKEN_A)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_filters_logs_queue_and_metrics() {
    let s = Server::start(0).await;
    for n in 0..5 {
        s.deployment(&format!("d{n}")).await;
        s.submit(
            &format!("d{n}"),
            json!({"rev": "c000001000000000000000000000000000000000", "priority": if n == 0 {"high"} else {"normal"}}),
        )
        .await;
    }
    // Cursor pages: every deployment once, in order.
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deployments?limit=2&cursor={c}"),
            None => "/v1/deployments?limit=2".into(),
        };
        let page = s.call(Method::GET, &path, None).await.body;
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(names, ["d0", "d1", "d2", "d3", "d4"]);
    let mut ids = Vec::new();
    let mut path = "/v1/jobs?limit=3&state=queued".to_owned();
    loop {
        let page = s.call(Method::GET, &path, None).await.body;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/jobs?limit=3&state=queued&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids, [5, 4, 3, 2, 1]);
    let page = s
        .call(Method::GET, "/v1/jobs?deployment=d3", None)
        .await
        .body;
    assert_eq!(page["items"][0]["id"], 4);
    let q = s.call(Method::GET, "/v1/queue", None).await.body;
    assert_eq!(
        q["classes"][0],
        json!({"priority": "high", "queued": 1, "running": 0})
    );
    assert_eq!(
        q["classes"][1],
        json!({"priority": "normal", "queued": 4, "running": 0})
    );
    let m = s.call(Method::GET, "/metrics", None).await.body;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("waymark_serve_queue_depth{priority=\"normal\"} 4\n"),
        "{m}"
    );
    assert!(
        m.contains("waymark_serve_jobs{state=\"queued\"} 5\n"),
        "{m}"
    );
    assert_eq!(
        s.call(Method::GET, "/healthz", None).await.body,
        json!({"status": "ok"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_answers() {
    let s = Server::start(0).await;
    s.deployment("routes").await;
    s.submit(
        "routes",
        json!({"rev": "c000001000000000000000000000000000000000"}),
    )
    .await;
    let paths: Vec<(String, String)> = s.spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |m| (p.clone(), m.clone()))
        })
        .collect();
    assert!(paths.len() >= 14);
    for (path, method) in paths {
        let concrete = path.replace("{name}", "routes").replace("{id}", "1");
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let body = match (m.as_str(), path.as_str()) {
            ("PUT", _) => Some(json!({"flake": "/f", "hosts": ["h"]})),
            ("POST", p) if p.ends_with("/jobs") => {
                Some(json!({"rev": "c000002000000000000000000000000000000000", "mode": "attach"}))
            }
            ("POST", _) => Some(json!({"reason": "route check"})),
            _ => None,
        };
        let a = s.call(m.clone(), &concrete, body).await;
        assert!(a.status < 400, "{m} {concrete}: {} {}", a.status, a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorisation_callback_is_asked_cached_and_fails_closed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The panel: allows acme to read and write deployment `ok`, nothing else.
    let asked = Arc::new(AtomicUsize::new(0));
    let a2 = asked.clone();
    let panel = axum::Router::new().route(
        "/authorize",
        axum::routing::post(move |axum::Json(q): axum::Json<Value>| {
            let asked = a2.clone();
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                let allowed =
                    q["tenant"] == "acme" && (q["action"] == "read" || q["deployment"] == "ok");
                if allowed {
                    axum::http::StatusCode::NO_CONTENT
                } else {
                    axum::http::StatusCode::FORBIDDEN
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/authorize", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, panel).await.unwrap() });
    let s = Server::start_with(0, Some(url)).await;
    s.deployment("ok").await;
    let denied = s
        .call(
            Method::PUT,
            "/v1/deployments/other",
            Some(json!({"flake": "/f", "hosts": ["h"]})),
        )
        .await;
    assert_eq!(
        (denied.status, denied.content_type.as_str()),
        (403, "application/problem+json")
    );
    assert_eq!(s.call(Method::GET, "/v1/jobs", None).await.status, 200);
    let before = asked.load(Ordering::SeqCst);
    // Asked again within the cache's time: answered from the cache.
    assert_eq!(s.call(Method::GET, "/v1/jobs", None).await.status, 200);
    assert_eq!(asked.load(Ordering::SeqCst), before);
    let b = s
        .call_with(Some(TOKEN_B), Method::GET, "/v1/jobs", None, &[])
        .await;
    assert_eq!(b.status, 403);

    // A panel that does not answer denies everything.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/authorize", l.local_addr().unwrap())
    };
    let s = Server::start_with(0, Some(closed)).await;
    assert_eq!(s.call(Method::GET, "/v1/jobs", None).await.status, 403);
}

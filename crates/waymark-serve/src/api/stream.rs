//! Logs and events: pages, and the streams that follow them (logs as text, events as
//! Server-Sent Events resumed by sequence number), read from the storage so any process
//! sharing it can serve them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream;
use serde_json::{Value, json};

use super::input::{Params, Seg, id_param, query_num};
use super::{Answer, App, AppState, db, json_response, tenant};
use crate::problem::Problem;
use crate::store::EventRow;

pub(super) async fn logs(
    State(app): AppState,
    headers: HeaderMap,
    Seg(id): Seg,
    Params(q): Params,
) -> Answer {
    let id = id_param(&id)?;
    let tenant = tenant(&app, &headers, "read", "").await?;
    let after = query_num(&q, "after_line", 0, i64::MAX)? as u64;
    let limit = query_num(&q, "limit", 1000, 10_000)?.max(1) as usize;
    let follow = match q.get("follow").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => return Err(Problem::field("follow", "follow is true or false")),
    };
    let t = tenant.clone();
    let job = db(&app, move |s| s.job(&t, id)).await?;
    let job = job.ok_or_else(|| Problem::not_found("job"))?;
    if !follow {
        let store_logs = app.shared.logs.clone();
        let (lines, total) = tokio::task::spawn_blocking(move || store_logs.read(id, after, limit))
            .await
            .map_err(|e| Problem::unavailable(&e))?
            .map_err(|e| Problem::unavailable(&e))?;
        let next = lines.last().map_or(after, |l| l.0);
        let lines: Vec<Value> = lines
            .into_iter()
            .map(|(n, text)| json!({"n": n, "text": text}))
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({
                "job": id,
                "lines": lines,
                "next_line": next,
                "total": total,
                "complete": job.state.is_final() && next >= total,
            }),
        ));
    }
    // Follow: the lines as text, one per line, until the job has ended and every line
    // was sent.
    let app2 = app.clone();
    let rx = app.shared.events.subscribe();
    let s = stream::unfold((after, rx, false), move |(after, mut rx, done)| {
        let app = app2.clone();
        let tenant = tenant.clone();
        async move {
            if done {
                return None;
            }
            loop {
                rx.borrow_and_update();
                let logs = app.shared.logs.clone();
                let read = tokio::task::spawn_blocking(move || logs.read(id, after, 1000)).await;
                let Ok(Ok((lines, _))) = read else {
                    return None;
                };
                if let Some(last) = lines.last() {
                    let next = last.0;
                    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
                    return Some((Ok::<_, Infallible>(text), (next, rx, false)));
                }
                let t = tenant.clone();
                let store = app.shared.store.clone();
                let state = tokio::task::spawn_blocking(move || store.job(&t, id)).await;
                match state {
                    Ok(Ok(Some(j))) if !j.state.is_final() => {}
                    _ => return None,
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(s),
    )
        .into_response())
}

/// Where an event stream resumes: `Last-Event-ID`, else `?after=`, else the start.
pub(super) fn resume_point(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<i64, Problem> {
    if let Some(v) = headers.get("last-event-id") {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                Problem::field(
                    "Last-Event-ID",
                    "Last-Event-ID is an event's id (a sequence number)",
                )
            });
    }
    query_num(q, "after", 0, i64::MAX)
}

pub(super) fn event_json(e: &EventRow) -> Value {
    let mut v = e.data.clone();
    v["seq"] = json!(e.seq);
    v["deployment"] = json!(e.deployment);
    v
}

pub(super) async fn events(
    app: Arc<App>,
    headers: HeaderMap,
    q: HashMap<String, String>,
    tenant: String,
    job: Option<i64>,
) -> Answer {
    let after = resume_point(&headers, &q)?;
    let wants_sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    if !wants_sse {
        let limit = query_num(&q, "limit", 100, 1000)?.max(1) as usize;
        let rows = db(&app, move |s| s.events(&tenant, job, after, limit)).await?;
        let next = rows.last().map_or(after, |r| r.seq);
        let items: Vec<Value> = rows.iter().map(event_json).collect();
        return Ok(json_response(
            StatusCode::OK,
            &json!({"events": items, "next_after": next}),
        ));
    }
    let rx = app.shared.events.subscribe();
    let s = stream::unfold(
        (after, rx, std::collections::VecDeque::<EventRow>::new()),
        move |(mut after, mut rx, mut buffer)| {
            let app = app.clone();
            let tenant = tenant.clone();
            async move {
                loop {
                    if let Some(row) = buffer.pop_front() {
                        after = row.seq;
                        let ev = SseEvent::default()
                            .id(row.seq.to_string())
                            .event(row.data["type"].as_str().unwrap_or("event"))
                            .data(event_json(&row).to_string());
                        return Some((Ok::<_, Infallible>(ev), (after, rx, buffer)));
                    }
                    // Marked seen before reading: an event stored after the read wakes
                    // the wait below.
                    rx.borrow_and_update();
                    let store = app.shared.store.clone();
                    let t = tenant.clone();
                    let rows =
                        tokio::task::spawn_blocking(move || store.events(&t, job, after, 500))
                            .await;
                    let Ok(Ok(rows)) = rows else {
                        return None;
                    };
                    if rows.is_empty() {
                        // Polling as well: another process may write the same storage.
                        tokio::select! {
                            _ = rx.changed() => {}
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                    buffer.extend(rows);
                }
            }
        },
    );
    Ok(Sse::new(s)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

pub(super) async fn job_events(
    State(app): AppState,
    headers: HeaderMap,
    Seg(id): Seg,
    Params(q): Params,
) -> Answer {
    let id = id_param(&id)?;
    let tenant = tenant(&app, &headers, "read", "").await?;
    let t = tenant.clone();
    if db(&app, move |s| s.job(&t, id)).await?.is_none() {
        return Err(Problem::not_found("job"));
    }
    events(app, headers, q, tenant, Some(id)).await
}

pub(super) async fn tenant_events(
    State(app): AppState,
    headers: HeaderMap,
    Params(q): Params,
) -> Answer {
    let tenant = tenant(&app, &headers, "read", "").await?;
    events(app, headers, q, tenant, None).await
}

//! Logs by line and followed; events as Server-Sent Events resumed with
//! `Last-Event-ID` or `?after=`, per tenant and per job, against the polling list.

mod common;

use common::{Server, TOKEN_A};
use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};

fn id(a: &common::Answer) -> i64 {
    a.body["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id: {}", a.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_by_line_and_followed_to_the_end() {
    let s = Server::start(2).await;
    s.deployment("logged").await;
    let job = id(&s
        .submit(
            "logged",
            json!({"rev": "b000001000000000000000000000000000000000"}),
        )
        .await);
    s.wait_job(job, "building", |j| j["phase"] == "building")
        .await;
    let first = s
        .call(
            Method::GET,
            &format!("/v1/jobs/{job}/logs?after_line=0&limit=1"),
            None,
        )
        .await
        .body;
    assert_eq!(
        first["lines"],
        json!([{"n": 1, "text": format!("job {job} for b000001000000000000000000000000000000000")}])
    );
    assert_eq!(first["complete"], false);
    let follow = s
        .client
        .get(format!(
            "{}/v1/jobs/{job}/logs?follow=true&after_line=1",
            s.base
        ))
        .bearer_auth(TOKEN_A)
        .send();
    let follow = tokio::spawn(follow);
    s.release("b000001000000000000000000000000000000000");
    s.wait_state(job, "succeeded").await;
    let text = follow.await.unwrap().unwrap().text().await.unwrap();
    let all = s
        .call(Method::GET, &format!("/v1/jobs/{job}/logs"), None)
        .await
        .body;
    let rest: String = all["lines"].as_array().unwrap()[1..]
        .iter()
        .map(|l| format!("{}\n", l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(text, rest);
    assert!(text.contains("build started"), "{text}");
    assert_eq!(all["complete"], true);
}

/// Reads `n` events of an SSE response: (id, data).
async fn read_sse(resp: reqwest::Response, n: usize) -> Vec<(i64, Value)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while out.len() < n {
        let chunk = stream
            .next()
            .await
            .expect("the stream ended early")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            if let (Some(i), Some(d)) = (id, data) {
                out.push((i, d));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_with_last_event_id_without_loss_or_duplicates() {
    let s = Server::start(0).await;
    s.deployment("live").await;
    for n in 0..6 {
        s.submit(
            "live",
            json!({"rev": format!("c00000{n}").repeat(6)[..40].to_owned()}),
        )
        .await;
    }
    let all = s
        .call(Method::GET, "/v1/events?limit=1000", None)
        .await
        .body;
    let expected: Vec<i64> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(expected.len(), 11); // 6 queued, 5 superseded
    let sse = |last: Option<i64>| {
        let mut r = s
            .client
            .get(format!("{}/v1/events", s.base))
            .bearer_auth(TOKEN_A)
            .header("Accept", "text/event-stream");
        if let Some(l) = last {
            r = r.header("Last-Event-ID", l.to_string());
        }
        r.send()
    };
    let mut seen = Vec::new();
    let mut last = None;
    // Reconnect after every three events.
    while seen.len() < expected.len() {
        let resp = sse(last).await.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let n = 3.min(expected.len() - seen.len());
        for (id, data) in read_sse(resp, n).await {
            assert_eq!(data["seq"], id);
            seen.push(id);
            last = Some(id);
        }
    }
    assert_eq!(seen, expected);
    // A live event reaches a waiting stream; `?after=` resumes as the header does.
    let resp = s
        .client
        .get(format!("{}/v1/events?after={}", s.base, last.unwrap()))
        .bearer_auth(TOKEN_A)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let waiter = tokio::spawn(read_sse(resp, 1));
    let j = id(&s
        .submit(
            "live",
            json!({"rev": "c000009000000000000000000000000000000000"}),
        )
        .await);
    let got = waiter.await.unwrap();
    assert!(got[0].0 > last.unwrap());
    // The first new event is the supersede of the queued job, then the new job.
    assert_eq!(got[0].1["state"], "superseded");
    // The job's own stream carries only that job's events.
    let resp = s
        .client
        .get(format!("{}/v1/jobs/{j}/events", s.base))
        .bearer_auth(TOKEN_A)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let got = read_sse(resp, 1).await;
    assert_eq!(
        (got[0].1["job"].as_i64(), got[0].1["state"].as_str()),
        (Some(j), Some("queued"))
    );
}

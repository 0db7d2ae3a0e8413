//! The fleet page in a real headless Chromium, driven over `WebDriver` (fantoccini, the
//! chromedriver of `WAYMARK_TEST_WEBDRIVER`: .ci/services.sh starts it): jobs submitted
//! through the API appear live, a cancel from the page ends the job with its reason
//! (shown as text, however it is written), a failed switch test shows the host restored,
//! a reload mid-job resumes the stream with every event once, so does a stream whose
//! connection is cut under the page (it resumes with Last-Event-ID), and another tenant sees
//! none of it. Screenshots go to `WAYMARK_TEST_ARTIFACTS` (else the target's tmp/page).
//!
//! The service runs in this process with a scripted executor (the deploy's events as
//! the engine sends them), so the page is tested against the real API, SSE and storage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use waymark_serve::{CancelFlag, Executor, Progress, RunOutcome, RunSpec};
use waymark_testbed::browser::{self, Client, Locator, sign_in_at, wait_text};

const TOKEN_A: &str = "token-of-acme";
const TOKEN_B: &str = "token-of-globex";

/// `b…` builds (counters move) until `released` holds its revision or it is cancelled;
/// `f…` fails its switch test and is restored; anything else deploys at once.
#[derive(Default)]
struct Staged {
    released: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What each host runs.
    running: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

fn ev(kind: &str, host: &str, extra: Value) -> Value {
    let mut v = json!({"event": kind, "host": host, "schema": "waymark.deploy-event/v1",
        "at": "2026-01-01T00:00:00Z"});
    if let Value::Object(fields) = extra {
        for (k, x) in fields {
            v[k] = x;
        }
    }
    v
}

impl Executor for Staged {
    fn run(&self, spec: &RunSpec, progress: &dyn Progress, cancel: &CancelFlag) -> RunOutcome {
        let host = spec.hosts[0].clone();
        let old = self
            .running
            .lock()
            .unwrap()
            .get(&host)
            .cloned()
            .unwrap_or_else(|| {
                "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-first".to_owned()
            });
        let new = format!(
            "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-{}",
            &spec.rev[..7]
        );
        progress.event(ev("start", &host, json!({"gate": "build"})));
        progress.log("building <b>the closure</b> & friends");
        let done = |result: &str, message: Option<&str>| RunOutcome {
            result: result.into(),
            message: message.map(str::to_owned),
        };
        if spec.rev.starts_with('b') {
            let mut built = 0;
            let mut rounds = 0;
            loop {
                if cancel.reason().is_some() {
                    progress.event(ev(
                        "host",
                        &host,
                        json!({"result": "cancelled", "reached": "build",
                        "message": "cancelled before activation: untouched", "closure": null,
                        "running": old}),
                    ));
                    return done("cancelled", Some("cancelled"));
                }
                if self.released.lock().unwrap().contains(&spec.rev) {
                    break;
                }
                built = (built + 1).min(9);
                rounds += 1;
                // A test that failed never releases it: end anyway, so that its
                // runtime can stop.
                if rounds > 200 {
                    return done("failed", Some("never released"));
                }
                progress.event(ev(
                    "build",
                    &host,
                    json!({"total": 10, "built": built,
                    "substituted": 1, "running": 1, "failed": 0, "waiting": 9 - built,
                    "builder": "builder"}),
                ));
                progress.log(&format!("built {built} of 10"));
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        progress.event(ev(
            "end",
            &host,
            json!({"gate": "build", "result": "passed", "duration_ms": 1}),
        ));
        progress.event(ev("start", &host, json!({"gate": "test"})));
        if spec.rev.starts_with('f') {
            progress.event(ev(
                "end",
                &host,
                json!({"gate": "test", "result": "failed", "duration_ms": 1,
                "message": "nginx.service failed"}),
            ));
            progress.event(ev(
                "host",
                &host,
                json!({"result": "failed", "reached": "test",
                "message": "the switch test failed: restored the previous system",
                "closure": new, "running": old, "change": "nginx 1.24 → 1.25"}),
            ));
            return done("failed", Some("web: the switch test failed; restored"));
        }
        self.running
            .lock()
            .unwrap()
            .insert(host.clone(), new.clone());
        progress.event(ev(
            "host",
            &host,
            json!({"result": "deployed", "reached": "mark",
            "message": "deployed", "closure": new, "running": new, "change": "hello 2.10 → 2.12"}),
        ));
        done("deployed", None)
    }
}

struct Setup {
    base: String,
    http: reqwest::Client,
    exec: Arc<Staged>,
    _dir: tempfile::TempDir,
}

fn artifacts() -> PathBuf {
    browser::artifacts(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page"))
}

async fn setup() -> Option<(Setup, Client)> {
    let driver = browser::webdriver()?;
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
    config.workers = 4;
    let exec = Arc::new(Staged::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let e: Arc<dyn Executor> = exec.clone();
    tokio::spawn(async move { waymark_serve::serve(config, e, listener).await.unwrap() });
    let browser = browser::connect(&driver).await;
    let s = Setup {
        base,
        http: reqwest::Client::new(),
        exec,
        _dir: dir,
    };
    Some((s, browser))
}

impl Setup {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    async fn deployment(&self, token: &str, name: &str, host: &str) {
        self.call(
            token,
            reqwest::Method::PUT,
            &format!("/v1/deployments/{name}"),
            Some(json!({"flake": "/srv/fleet", "hosts": [host]})),
        )
        .await;
    }

    async fn submit(&self, token: &str, name: &str, rev: &str) -> i64 {
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/v1/deployments/{name}/jobs"),
            Some(json!({"rev": rev})),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    }

    async fn job(&self, id: i64) -> Value {
        self.call(
            TOKEN_A,
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}"),
            None,
        )
        .await
    }

    async fn sign_in(&self, b: &Client, token: &str, hash: &str) {
        sign_in_at(b, &self.base, token, hash).await;
    }
}

async fn screenshot(b: &Client, name: &str) {
    browser::screenshot(b, &artifacts(), name).await;
}

fn rev(c: char, n: u32) -> String {
    format!("{c}{n:039}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_updates_live_and_a_cancel_from_the_page_ends_the_job_with_its_reason() {
    let Some((s, b)) = setup().await else {
        return;
    };
    s.deployment(TOKEN_A, "shop", "web1").await;
    s.sign_in(&b, TOKEN_A, "#/queue").await;
    wait_text(&b, "#view h2", "the queue", |t| t == "Queue").await;
    // Submitted through the API: the page shows it running without a reload.
    let id = s.submit(TOKEN_A, "shop", &rev('b', 1)).await;
    let row = format!("tr[data-job='{id}']");
    wait_text(&b, &format!("{row} .state"), "running", |t| t == "running").await;
    // Cancel from the page, with a reason that looks like markup: it is kept as text.
    let reason = "<img src=x onerror=alert(1)> rollback & retry";
    b.find(Locator::Css(&format!("{row} button.cancel")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = b
        .wait()
        .for_element(Locator::Id("cancel-reason"))
        .await
        .unwrap();
    input.send_keys(reason).await.unwrap();
    b.find(Locator::Id("cancel-confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&b, &format!("{row} .state"), "cancelled", |t| {
        t == "cancelled"
    })
    .await;
    let shown = wait_text(&b, &format!("{row} td.reason"), "the reason", |t| {
        !t.is_empty()
    })
    .await;
    assert_eq!(shown, reason);
    assert_eq!(s.job(id).await["reason"], reason);
    let injected = b.find_all(Locator::Css("main img")).await.unwrap();
    assert!(injected.is_empty(), "the reason became markup");
    screenshot(&b, "queue-cancelled").await;
    // Narrow: the same rows, one block each, no horizontal scrolling.
    b.set_window_size(380, 800).await.unwrap();
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        json!(false),
        "the page scrolls sideways at 380 px"
    );
    screenshot(&b, "queue-narrow").await;
    // Another tenant's token shows none of it.
    b.execute("sessionStorage.clear()", vec![]).await.unwrap();
    b.goto("about:blank").await.unwrap();
    s.sign_in(&b, TOKEN_B, "#/queue").await;
    wait_text(&b, "#view h2", "the queue", |t| t == "Queue").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.find_all(Locator::Css("tr[data-job]"))
            .await
            .unwrap()
            .is_empty()
    );
    let body = b
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("shop"), "{body}");
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_shows_a_failed_switch_test_restored_and_a_reload_resumes_a_job() {
    let Some((s, b)) = setup().await else {
        return;
    };
    s.deployment(TOKEN_A, "shop", "web1").await;
    let good = s.submit(TOKEN_A, "shop", &rev('d', 1)).await;
    s.sign_in(&b, TOKEN_A, "#/").await;
    wait_text(&b, "tr[data-host='web1'] .last-deploy", "deployed", |t| {
        t.contains(&format!("job {good}")) && t.contains("succeeded")
    })
    .await;
    // A deploy whose switch test fails: the host shows restored, still on its
    // known-good closure, no drift.
    let bad = s.submit(TOKEN_A, "shop", &rev('f', 2)).await;
    let t = wait_text(&b, "tr[data-host='web1'] .last-deploy", "restored", |t| {
        t.contains(&format!("job {bad}")) && t.contains("restored")
    })
    .await;
    assert!(t.contains("failed"), "{t}");
    assert!(t.contains("nginx 1.24 → 1.25"), "{t}");
    let row = browser::text(&b, "tr[data-host='web1']").await;
    assert!(row.contains("no drift"), "{row}");
    screenshot(&b, "fleet-restored").await;

    // A job followed live, the page reloaded halfway: every event once, in order.
    let id = s.submit(TOKEN_A, "shop", &rev('b', 3)).await;
    b.goto(&format!("{}/#/job/{id}", s.base)).await.unwrap();
    wait_text(&b, "#job-state-word", "running", |t| t == "running").await;

    wait_text(&b, "dd[data-counter='built']", "building", |t| {
        t.parse::<u32>().unwrap_or(0) >= 2
    })
    .await;
    b.refresh().await.unwrap();
    wait_text(&b, "dd[data-counter='built']", "building again", |t| {
        t.parse::<u32>().unwrap_or(0) >= 3
    })
    .await;
    s.exec.released.lock().unwrap().insert(rev('b', 3));
    wait_text(&b, "#job-state-word", "succeeded", |t| t == "succeeded").await;
    let log = wait_text(&b, "#log", "the log", |t| t.contains("built 3 of 10")).await;
    assert!(
        log.contains("building <b>the closure</b> & friends"),
        "{log}"
    );
    // The stream's events as the page kept them, against the API's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown: Vec<i64> = {
        let mut out = Vec::new();
        for e in b.find_all(Locator::Css("#events li")).await.unwrap() {
            out.push(e.attr("data-seq").await.unwrap().unwrap().parse().unwrap());
        }
        out
    };
    let stored = s
        .call(
            TOKEN_A,
            reqwest::Method::GET,
            &format!("/v1/jobs/{id}/events?limit=1000"),
            None,
        )
        .await;
    let stored: Vec<i64> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        shown, stored,
        "the page's events are the stored ones, once each"
    );
    screenshot(&b, "job-live").await;
    b.close().await.unwrap();
}

/// A TCP proxy in front of the service that records what the browser sends and cuts
/// every open connection on demand (a load balancer restarting, a network blip).
struct Cutter {
    base: String,
    sent: Arc<std::sync::Mutex<Vec<u8>>>,
    cut: tokio::sync::watch::Sender<u32>,
}

impl Cutter {
    async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut, _) = tokio::sync::watch::channel(0u32);
        let (sent2, cut2) = (sent.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let mut cut = cut2.subscribe();
                let sent = sent2.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent.lock().unwrap().extend_from_slice(&buf[..n]);
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16384];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Both halves dropped at the cut: the browser sees the connection end.
                    tokio::select! {
                        () = async { tokio::join!(up, down); } => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { base, sent, cut }
    }

    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The Last-Event-ID of each request for `path` so far (None: sent without one).
    fn resumes(&self, path: &str) -> Vec<Option<i64>> {
        let sent = String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned();
        let line = format!("GET {path} ");
        sent.split(&line)
            .skip(1)
            .map(|req| {
                let head = req.split("\r\n\r\n").next().unwrap_or("");
                head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("last-event-id")
                        .then(|| value.trim().parse().unwrap())
                })
            })
            .collect()
    }
}

async fn shown_events(b: &Client) -> Vec<i64> {
    let mut out = Vec::new();
    for e in b.find_all(Locator::Css("#events li")).await.unwrap() {
        out.push(e.attr("data-seq").await.unwrap().unwrap().parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_under_the_page_resumes_with_last_event_id_without_gap_or_duplicate() {
    let Some((s, b)) = setup().await else {
        return;
    };
    let proxy = Cutter::start(&s.base).await;
    s.deployment(TOKEN_A, "shop", "web1").await;
    let id = s.submit(TOKEN_A, "shop", &rev('b', 1)).await;
    sign_in_at(&b, &proxy.base, TOKEN_A, &format!("#/job/{id}")).await;
    wait_text(&b, "#job-state-word", "running", |t| t == "running").await;
    wait_text(&b, "dd[data-counter='built']", "building", |t| {
        t.parse::<u32>().unwrap_or(0) >= 2
    })
    .await;
    // Cut the page's stream (and every other connection) mid-job, in the same tab.
    let before = shown_events(&b).await;
    let last = *before.last().unwrap();
    proxy.cut_all();
    let path = format!("/v1/jobs/{id}/events");
    // The page reconnects by itself; events written meanwhile must come after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.resumes(&path).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the page never reconnected its stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumes = proxy.resumes(&path);
    assert_eq!(
        resumes[0], None,
        "the first connection starts at the beginning"
    );
    let resumed_at = resumes[1].expect("the reconnect carries Last-Event-ID");
    assert!(
        resumed_at >= last,
        "resumed at {resumed_at}, before the last event shown ({last})"
    );
    wait_text(
        &b,
        "dd[data-counter='built']",
        "building after the cut",
        |t| t.parse::<u32>().unwrap_or(0) >= 5,
    )
    .await;
    s.exec.released.lock().unwrap().insert(rev('b', 1));
    wait_text(&b, "#job-state-word", "succeeded", |t| t == "succeeded").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown = shown_events(&b).await;
    let stored = s
        .call(
            TOKEN_A,
            reqwest::Method::GET,
            &format!("{path}?limit=1000"),
            None,
        )
        .await;
    let stored: Vec<i64> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        stored.iter().any(|&q| q > last + 2),
        "events were written after the cut: {stored:?}"
    );
    assert_eq!(
        shown, stored,
        "every event once across the cut, none lost, none twice"
    );
    screenshot(&b, "job-stream-cut").await;
    b.close().await.unwrap();
}

//! A real headless Chromium for the page tests, driven over `WebDriver` (fantoccini) through
//! the chromedriver that `WAYMARK_TEST_WEBDRIVER` names (the repository's `.ci/services.sh`
//! starts one), and what those tests do with it: sign in, wait for a text, keep a
//! screenshot in `WAYMARK_TEST_ARTIFACTS`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use fantoccini::{Client, Locator};
use serde_json::json;

/// The chromedriver to use; `None` (the test passes without running, and says so) when
/// none is set outside CI. In CI a missing driver fails the test.
#[allow(clippy::print_stderr)] // says why it passes without running
pub fn webdriver() -> Option<String> {
    match std::env::var("WAYMARK_TEST_WEBDRIVER") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "WAYMARK_TEST_WEBDRIVER is not set: .ci/run starts chromedriver (.ci/services.sh)"
            )
        }
        _ => {
            eprintln!("NOT RUN: WAYMARK_TEST_WEBDRIVER is not set (source .ci/services.sh)");
            None
        }
    }
}

/// Where screenshots go: `WAYMARK_TEST_ARTIFACTS`, else `fallback`.
pub fn artifacts(fallback: &Path) -> PathBuf {
    let dir =
        std::env::var_os("WAYMARK_TEST_ARTIFACTS").map_or_else(|| fallback.into(), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new headless Chromium session through `driver`, 1200×900.
pub async fn connect(driver: &str) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
            "--disable-gpu", "--disable-background-networking", "--window-size=1200,900"]}),
    );
    // Two TLS back ends may be linked (the WebDriver client's and reqwest's): pick one.
    // It is never used (chromedriver is plain HTTP on loopback), so ring will do.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    fantoccini::ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(driver)
        .await
        .unwrap_or_else(|e| panic!("starting Chromium through {driver}: {e}"))
}

/// Opens the page at `base` (the service, or a proxy in front of it) on `hash` and signs
/// in with `token` once the page asks for one.
pub async fn sign_in_at(b: &Client, base: &str, token: &str, hash: &str) {
    b.goto(&format!("{base}/{hash}")).await.unwrap();
    let input = b.wait().for_element(Locator::Id("token")).await.unwrap();
    // Shown by the script once it found no token in this tab.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !input.is_displayed().await.unwrap() {
        if Instant::now() > deadline {
            let state = b
                .execute(
                    "let err = null; try { route(); } catch (e) { err = String(e) } return [err, token, document.getElementById('login').hidden, document.readyState, \
                     typeof route, document.documentElement.outerHTML.slice(0, 300)]",
                    vec![],
                )
                .await;
            panic!("the sign-in form never showed: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    input.send_keys(token).await.unwrap();
    b.find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until the text of the first element at `css` satisfies `ok` (within `limit`);
/// that text. On a timeout, panics with what the page showed.
pub async fn wait_text_for(
    b: &Client,
    css: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if let Ok(e) = b.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        if Instant::now() > deadline {
            let page = b
                .execute(
                    "return [location.href, document.getElementById('status').textContent, \
                     document.getElementById('view').innerHTML.slice(0, 400)]",
                    vec![],
                )
                .await;
            panic!("{css}: never {what} (last: {last:?}; page: {page:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_text_for`] within 30 s.
pub async fn wait_text(b: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_text_for(b, css, what, Duration::from_secs(30), ok).await
}

/// The text of the first element at `css`, which must be there within 30 s. Read again
/// when the page re-rendered between finding the element and reading it (the views
/// re-render on every event of the stream).
pub async fn text(b: &Client, css: &str) -> String {
    settled(b, css, |e| async move { e.text().await }).await
}

/// The value of `attr` on the first element at `css` (read as [`text`] is).
pub async fn attr(b: &Client, css: &str, attr: &str) -> Option<String> {
    settled(b, css, |e| async move { e.attr(attr).await }).await
}

async fn settled<T, F>(
    b: &Client,
    css: &str,
    read: impl Fn(fantoccini::elements::Element) -> F,
) -> T
where
    F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match b.find(Locator::Css(css)).await {
            Ok(e) => match read(e).await {
                Ok(v) => return v,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "{css}: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps a screenshot of the page as `<dir>/<name>.png`; its path.
pub async fn screenshot(b: &Client, dir: &Path, name: &str) -> PathBuf {
    let png = b.screenshot().await.unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    path
}

//! The fleet page on a real deploy: `waymark serve` runs jobs on a simulated host
//! (docs/testbed.md) and a real headless Chromium follows them (the chromedriver of
//! `WAYMARK_TEST_WEBDRIVER`, started by .ci/services.sh). A deploy whose switch test fails
//! on the target is followed live to its end, and the fleet then shows the host restored:
//! running its known-good closure, as verified on it, with no drift. Screenshots go to
//! `WAYMARK_TEST_ARTIFACTS` (else the target's tmp/page).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use waymark_testbed::browser::{self, attr, sign_in_at, wait_text, wait_text_for};

use crate::test_deploy::TestLab;
use crate::test_serve::{Serve, TOKEN, lab_serve_command};

#[test]
fn a_real_deploy_failing_its_switch_test_shows_the_host_restored_on_the_page() {
    let Some(driver) = browser::webdriver() else {
        return;
    };
    let mut lab = TestLab::new(&["web1"]);
    let g1 = lab.g(1).clone();
    let state = lab.lab.state_dir().with_file_name("serve-state");
    let serve = Serve::start(lab_serve_command(&lab, None), &state, 2);
    serve.site(&lab, json!({"hosts": ["web1"]}));
    let explain = |j: &Value| format!("{j}\n{}", serve.stderr.lock().unwrap());

    // g1 deploys and is marked known-good.
    let good = serve.submit(&lab.flake.set_generation("web1", "g1").unwrap());
    let j = serve.finished(good);
    assert_eq!(j["result"], "deployed", "{}", explain(&j));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shots = browser::artifacts(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("page"));
    let b = rt.block_on(browser::connect(&driver));
    rt.block_on(async {
        sign_in_at(&b, &serve.base, TOKEN, "#/").await;
        wait_text(&b, "tr[data-host='web1'] .last-deploy", "deployed", |t| {
            t.contains(&format!("job {good}")) && t.contains("succeeded")
        })
        .await;
    });

    // g2's switch test fails on the target (planted in its closure). The job's page,
    // open while it runs, follows it to its end.
    let bad = serve.submit(&lab.flake.set_generation("web1", "g2").unwrap());
    rt.block_on(async {
        b.goto(&format!("{}/#/job/{bad}", serve.base))
            .await
            .unwrap();
        let limit = Duration::from_mins(3);
        wait_text_for(&b, "#job-state-word", "failed", limit, |t| t == "failed").await;
        let result = wait_text(
            &b,
            "#job-hosts tr[data-host='web1'] .host-result",
            "restored",
            |t| !t.is_empty(),
        )
        .await;
        assert_eq!(result, "failed at test, restored");
        let row = browser::text(&b, "#job-hosts tr[data-host='web1']").await;
        assert!(row.contains("switch-to-configuration test failed"), "{row}");
        browser::screenshot(&b, &shots, "lab-job-switch-test-failed").await;
    });
    let j = serve.finished(bad);
    assert_eq!(
        (j["state"].as_str(), j["hosts"]["web1"]["reached"].as_str()),
        (Some("failed"), Some("test")),
        "{}",
        explain(&j)
    );
    // What the page is about to say, checked on the host itself.
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));

    // The fleet: the last deploy failed and restored, the host runs g1 (as verified on
    // it after the restore), g1 is its known-good closure, no drift.
    rt.block_on(async {
        b.goto(&format!("{}/#/", serve.base)).await.unwrap();
        let cell = "tr[data-host='web1'] .last-deploy";
        let t = wait_text(&b, cell, "restored", |t| t.contains(&format!("job {bad}"))).await;
        assert!(
            t.contains("failed — restored (runs what it ran before)"),
            "{t}"
        );
        let running = attr(
            &b,
            "tr[data-host='web1'] td[data-label='Running'] code",
            "title",
        )
        .await;
        let known = attr(
            &b,
            "tr[data-host='web1'] td[data-label='Known-good'] code",
            "title",
        )
        .await;
        assert_eq!(running.as_deref(), Some(g1.as_str()));
        assert_eq!(known.as_deref(), Some(g1.as_str()));
        let row = browser::text(&b, "tr[data-host='web1']").await;
        assert!(row.contains("no drift"), "{row}");
        browser::screenshot(&b, &shots, "lab-fleet-restored").await;
        b.close().await.unwrap();
    });
}

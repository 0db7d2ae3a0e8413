//! The deploy library ([`waymark_deploy::Engine`]) driven as the queue service and the
//! convergence loop drive it: a run cancelled before activation leaves its hosts
//! untouched, one cancelled during the switch test lets the target's agent restore, and
//! either way the run's processes and ssh masters end. Needs root, as CI has.
//!
//! The engine runs in this test binary, re-run as the lab's deploying machine (a mount
//! namespace of its own): [`engine_child`] is that run, a no-op in a normal test run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use waymark_deploy::{
    Cancel, Engine, Event, FleetOptions, Goal, Request, Selection, Sink, Unattended,
};

use crate::test_deploy::{TestLab, with_check};

const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");
const CHILD: &str = "WAYMARK_TEST_ENGINE_RUN";

/// What the child run deploys, and when it cancels.
#[derive(Serialize, Deserialize)]
struct Spec {
    flake: PathBuf,
    state_dir: PathBuf,
    remote_waymark: String,
    items: Vec<String>,
    /// Cancel once this gate started on this host (`gate`, `host`), this long after.
    cancel_at: (String, String),
    cancel_after_ms: u64,
    out: PathBuf,
}

/// Cancels once the gate named starts on the host named.
struct CancelAt<'a> {
    spec: &'a Spec,
    cancel: &'a Cancel,
    events: std::sync::Mutex<Vec<Value>>,
}

impl Sink for CancelAt<'_> {
    fn emit(&self, event: Event) {
        let value = serde_json::to_value(&event).unwrap();
        if let Event::Start { host, gate, .. } = &event
            && gate.name() == self.spec.cancel_at.0
            && host == &self.spec.cancel_at.1
        {
            let cancel = self.cancel.clone();
            let after = Duration::from_millis(self.spec.cancel_after_ms);
            std::thread::spawn(move || {
                std::thread::sleep(after);
                cancel.cancel("superseded by a newer job");
            });
        }
        self.events.lock().unwrap().push(value);
    }
}

/// The engine's run, when this binary is re-run as the deploying machine.
#[test]
fn engine_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let spec: Spec = serde_json::from_str(&std::fs::read_to_string(spec).unwrap()).unwrap();
    let engine = Engine::new(vec![WAYMARK.into(), "nix-daemon-relay".into()]);
    let rev = waymark_release::Releases::open(&spec.flake)
        .unwrap()
        .resolve_commit("HEAD")
        .unwrap()
        .to_string();
    let mut request = Request::new(
        spec.flake.display().to_string(),
        Selection::Items(spec.items.clone()),
        Some(rev),
    );
    request.goal = Goal::Switch;
    request.remote_waymark.clone_from(&spec.remote_waymark);
    request.state_dir.clone_from(&spec.state_dir);
    request.fleet = FleetOptions {
        parallel: 1,
        max_failures: None,
        canary: None,
    };
    request.nix_sshopts = std::env::var("NIX_SSHOPTS").unwrap_or_default();
    let cancel = Cancel::new();
    let sink = CancelAt {
        spec: &spec,
        cancel: &cancel,
        events: std::sync::Mutex::default(),
    };
    let outcome = engine
        .deploy(&request, &sink, &Unattended, &cancel)
        .unwrap();
    let out = serde_json::json!({
        "reports": outcome.reports,
        "worst": outcome.worst,
        "cancelled": outcome.cancelled,
        "events": *sink.events.lock().unwrap(),
    });
    std::fs::write(&spec.out, out.to_string()).unwrap();
}

/// Runs the engine as the lab's deploying machine; its outcome and events.
fn drive(
    lab: &TestLab,
    items: &[&str],
    gate: &str,
    host: &str,
    after_ms: u64,
    fault: &str,
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        flake: lab.flake.dir().to_owned(),
        state_dir: lab.state_dir(),
        remote_waymark: lab.remote_waymark(),
        items: items.iter().map(|s| (*s).to_owned()).collect(),
        cancel_at: (gate.to_owned(), host.to_owned()),
        cancel_after_ms: after_ms,
        out: dir.path().join("outcome.json"),
    };
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_string(&spec).unwrap()).unwrap();
    let test_binary = std::env::current_exe().unwrap();
    let mut cmd = lab.fleet.deployer_command(&test_binary).unwrap();
    cmd.args(["--exact", "test_engine::engine_child", "--nocapture"])
        .env(CHILD, &spec_path)
        .env("WAYMARK_FAULT", fault);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "the engine's run failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&spec.out).unwrap()).unwrap()
}

fn report<'a>(outcome: &'a Value, host: &str) -> &'a Value {
    outcome["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}: {outcome}"))
}

/// Waits until the last state of the agent on `host` is `settles`.
fn agent_settles(lab: &TestLab, host: &str, settles: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = lab.exec(
            host,
            "cat /run/waymark/deploy/*/state 2>/dev/null | tail -n 1",
        );
        if state.split(':').next() == Some(settles) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent on {host} did not reach {settles} (last state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn no_run_left(lab: &TestLab) {
    assert_eq!(lab.masters_left(), 0, "master connections left running");
    let left: Vec<PathBuf> = lab
        .fleet
        .ssh_control_dirs()
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "control directories left: {left:?}");
}

fn agent_dirs(lab: &TestLab, host: &str) -> String {
    lab.exec(host, "ls /run/waymark/deploy 2>/dev/null || true")
}

#[test]
fn a_cancelled_run_leaves_hosts_untouched_before_activation_and_lets_the_agent_restore_after() {
    let mut lab = TestLab::new(&["web1", "web2"]);
    let g0 = lab.g(0).clone();
    lab.flake
        .set_deploy("web1", &with_check("slow", "true", 10))
        .unwrap();
    // web2 waits for web1: a cancel while web1 builds never starts it.
    lab.flake
        .set_deploy(
            "web2",
            &waymark_testbed::target_decl(r#"dependsOn = [ "web1" ];"#),
        )
        .unwrap();
    // A build that takes long enough to be cancelled in the middle.
    lab.flake.set_generations(&["web1", "web2"], "g1").unwrap();
    lab.flake
        .set_salt(&["web1", "web2"], "slow; $0 sleep 20; echo s")
        .unwrap();

    // Cancelled during the build: nothing was activated, the build stopped, web2 never
    // started; the targets run, profile and boot what they did.
    let outcome = drive(&lab, &["web1", "web2"], "build", "web1", 1500, "");
    assert_eq!(
        outcome["cancelled"], "superseded by a newer job",
        "{outcome}"
    );
    let web1 = report(&outcome, "web1");
    assert_eq!(web1["result"], "cancelled", "{web1}");
    assert!(
        web1["message"].as_str().unwrap().contains("not touched"),
        "{web1}"
    );
    // The run did not wait for the build: its closure was not made by then. (The build
    // host's own build runs on to its end there: see docs/deploy.md, "Cancelling".)
    let closure = web1["closure"].as_str().unwrap();
    let made = lab.exec(
        "builder",
        &format!("nix-store --check-validity {closure} 2>/dev/null && echo made || echo not"),
    );
    assert_eq!(made, "not", "the run waited for the cancelled build");
    let web2 = report(&outcome, "web2");
    assert_eq!(web2["result"], "cancelled", "{web2}");
    assert!(
        web2["message"].as_str().unwrap().contains("not started"),
        "{web2}"
    );
    for host in ["web1", "web2"] {
        assert_eq!(lab.system(host), (g0.clone(), g0.clone(), g0.clone()));
        assert_eq!(agent_dirs(&lab, host), "", "an agent started on {host}");
        assert!(lab.marks(host, host).is_empty());
    }
    no_run_left(&lab);

    // Cancelled during the switch test: the agent is confirmed nothing and restores the
    // previous system by itself; no mark anywhere.
    lab.flake.set_salt(&["web1", "web2"], "quick").unwrap();
    let outcome = drive(&lab, &["web1"], "test", "web1", 500, "slow-health");
    let web1 = report(&outcome, "web1");
    assert_eq!(web1["result"], "cancelled", "{web1}");
    assert!(
        web1["message"]
            .as_str()
            .unwrap()
            .contains("restores the previous system by itself"),
        "{web1}"
    );
    no_run_left(&lab);
    agent_settles(&lab, "web1", "restored");
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert!(lab.marks("web1", "web1").is_empty());

    // The same engine, not cancelled, deploys and marks.
    lab.exec("web1", "rm -rf /run/waymark/deploy");
    let outcome = drive(&lab, &["web1"], "none", "web1", 0, "");
    assert_eq!(report(&outcome, "web1")["result"], "deployed", "{outcome}");
    assert_eq!(outcome["cancelled"], Value::Null);
    assert_eq!(lab.marks("web1", "web1").len(), 1);
    no_run_left(&lab);
}

//! `waymark converge` on simulated hosts (own /nix and /run, real sshd; docs/testbed.md):
//! release branches of the lab's fleet flake, hand switches on the hosts, a release
//! that fails its switch test, a host that refuses logins, a controller killed with -9.
//! Needs root, as CI has. Nothing here asserts a time.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::common::{Run, run};
use crate::test_deploy::{TestLab, explain};

const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");

/// Options that keep the tests short: retries and rate limits of a second or less.
const FAST: &[&str] = &[
    "--json",
    "--backoff",
    "200ms",
    "--backoff-max",
    "1s",
    "--min-interval",
    "0s",
    "--refs-interval",
    "200ms",
];

fn converge_command(lab: &TestLab, args: &[&str]) -> Command {
    let mut cmd = lab.fleet.deployer_command(Path::new(WAYMARK)).unwrap();
    // FAST's options, less those `args` set themselves.
    let mut fast = vec![FAST[0]];
    for pair in FAST[1..].chunks(2) {
        if !args.contains(&pair[0]) {
            fast.extend_from_slice(pair);
        }
    }
    cmd.arg("converge")
        .args(fast)
        .args(args)
        .arg("--flake")
        .arg(lab.flake.dir())
        .env("WAYMARK_REMOTE_COMMAND", lab.remote_waymark())
        .env("WAYMARK_STATE_DIR", lab.state_dir())
        .env_remove("WAYMARK_FAULT");
    cmd
}

fn converge(lab: &TestLab, args: &[&str]) -> Run {
    run(converge_command(lab, args))
}

/// Points `release/<host>` at `rev`, as a release manager (or CI) does.
fn release(lab: &TestLab, host: &str, rev: &str) {
    let out = Command::new("git")
        .arg("-C")
        .arg(lab.flake.dir())
        .args(["branch", "-f", &format!("release/{host}"), rev])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// The events of a run, checked against the documented schema.
fn events(r: &Run) -> Vec<Value> {
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/converge-events-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    r.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            if let Err(e) = validator.validate(&v) {
                panic!("event does not follow the schema: {e}: {l}");
            }
            v
        })
        .collect()
}

fn of<'a>(events: &'a [Value], kind: &str, host: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind && e["host"] == host)
        .collect()
}

fn summary_state(events: &[Value], host: &str) -> String {
    let summary = events.iter().rfind(|e| e["type"] == "summary").unwrap();
    summary["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .and_then(|h| h["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// A hand switch on `host` to `path` (in its store): profile and running system.
fn hand_switch(lab: &TestLab, host: &str, path: &str) {
    lab.exec(
        host,
        &format!(
            "nix-env -p /nix/var/nix/profiles/system --set {path} && {path}/bin/switch-to-configuration switch"
        ),
    );
}

/// A controller running in the background, its events read as they come.
struct Daemon {
    child: Child,
    events: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Daemon {
    fn start(lab: &TestLab, args: &[&str]) -> Self {
        let mut child = converge_command(lab, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits (at most two minutes: a hang, not a timing) for an event `pred` accepts.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.events.recv_timeout(Duration::from_mins(2)) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(e) => panic!("no {what} ({e}); events: {:#?}", self.seen),
            }
        }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also when a test fails: no controller outlives its test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(e: &Value, kind: &str, host: &str) -> bool {
    e["type"] == kind && e["host"] == host
}

#[test]
fn a_new_release_reaches_its_host_alone_and_a_second_pass_changes_nothing() {
    let mut lab = TestLab::new(&["web1", "web2", "web3"]);
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    // web2 is released at the fleet's first commit (what it runs: adopted, marked);
    // web3 has no release branch.
    let first = lab.flake.commit("nothing").unwrap();
    release(&lab, "web2", &first);
    let rev0 = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev0);
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 2, "changed something: {}", explain(&r));
    assert_eq!(lab.marks("web2", "web2"), std::slice::from_ref(&g0));

    // A new commit on release/web1 reaches web1 alone.
    lab.flake.set_salt(&["web1"], "one").unwrap();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 2, "changed something: {}", explain(&r));
    let ev = events(&r);
    assert_eq!(of(&ev, "deploy", "web1").len(), 1);
    assert!(of(&ev, "deploy", "web2").is_empty(), "web2 is converged");
    assert!(of(&ev, "deploy", "web3").is_empty(), "web3 has no release");
    let (current, profile, _) = lab.system("web1");
    assert!(current != g1 && profile == current, "the salted g1 runs");
    assert_eq!(lab.marks("web1", "web1").last(), Some(&current));
    assert_eq!(
        lab.marks("web2", "web2").len(),
        1,
        "web2 not deployed again"
    );
    assert_eq!(lab.system("web3").0, g0);
    assert!(lab.marks("web3", "web3").is_empty());
    assert_eq!(summary_state(&ev, "web1"), "converged");
    assert_eq!(summary_state(&ev, "web2"), "converged");
    assert_eq!(summary_state(&ev, "web3"), "held");

    // Converged: nothing deployed again, exit 0; the status table says so.
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert!(of(&events(&r), "deploy", "web1").is_empty(), "{}", r.stdout);
    assert_eq!(lab.marks("web1", "web1").len(), 2);
    let mut status = lab.fleet.deployer_command(Path::new(WAYMARK)).unwrap();
    status
        .args(["converge", "--status", "--flake"])
        .arg(lab.flake.dir())
        .env("WAYMARK_STATE_DIR", lab.state_dir());
    let s = run(status);
    assert_eq!(s.code, 0, "{}", explain(&s));
    let row = s.stdout.lines().find(|l| l.starts_with("web1")).unwrap();
    // The daemon with --timeout: exits once the fleet stayed converged that long.
    let r = converge(&lab, &["--timeout", "1s"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert!(of(&events(&r), "deploy", "web1").is_empty());
    assert!(
        row.contains("converged") && row.contains(&rev[..7]),
        "{}\n{}",
        s.stdout,
        std::fs::read_to_string(lab.state_dir().join("converge/state.json")).unwrap()
    );
}

#[test]
fn a_hand_switch_is_reported_or_restored() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    assert_eq!(converge(&lab, &["--once"]).code, 2);

    // Policy report (the default): named, left as it is, the run failed.
    hand_switch(&lab, "web1", &g0);
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 4, "{}", explain(&r));
    let ev = events(&r);
    assert!(of(&ev, "deploy", "web1").is_empty());
    let facts = of(&ev, "facts", "web1");
    assert_eq!(facts[0]["drift"], "hand-switch", "{facts:?}");
    assert_eq!(summary_state(&ev, "web1"), "drifted");
    assert_eq!(lab.system("web1").0, g0);

    // The daemon with policy restore: a hand switch is seen as it happens and undone
    // through the gates.
    let mut d = Daemon::start(&lab, &["--restore", "web1"]);
    d.wait_for("the restore of the first drift", |e| {
        is(e, "deployed", "web1") && e["result"] == "deployed"
    });
    d.wait_for("converged", |e| {
        is(e, "state", "web1") && e["state"] == "converged"
    });
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    hand_switch(&lab, "web1", &g0);
    let seen = d.wait_for("the hand switch", |e| {
        is(e, "facts", "web1") && e["drift"] == "hand-switch"
    });
    assert_eq!(seen["current"], g0.as_str());
    assert_eq!(seen["how"], "watch", "host-watch runs on the lab's hosts");
    d.wait_for("the restore", |e| {
        is(e, "deployed", "web1") && e["result"] == "deployed"
    });
    d.wait_for("converged again", |e| {
        is(e, "state", "web1") && e["state"] == "converged"
    });
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    // The release branch moves while it runs: the new commit is deployed.
    lab.flake.set_salt(&["web1"], "two").unwrap();
    let newer = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &newer);
    let seen = d.wait_for("the new release", |e| is(e, "desired", "web1"));
    assert_eq!(seen["desired"]["rev"], newer.as_str());
    d.wait_for("its deploy", |e| {
        is(e, "deployed", "web1") && e["result"] == "deployed"
    });
    d.kill9();
    let (current, profile, _) = lab.system("web1");
    assert!(current != g1 && profile == current, "the new closure runs");
}

#[test]
fn a_pinned_mark_is_what_the_host_is_kept_on() {
    let mut lab = TestLab::new(&["web1"]);
    let g1 = lab.g(1).clone();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    assert_eq!(converge(&lab, &["--once"]).code, 2);
    let list: Value = serde_json::from_str(&lab.exec(
        "web1",
        &format!("{} known-good list web1 --json", lab.remote_waymark()),
    ))
    .unwrap();
    let first = list["marks"][0]["mark"].as_str().unwrap().to_owned();
    lab.flake.set_salt(&["web1"], "later").unwrap();
    let later = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &later);
    assert_eq!(converge(&lab, &["--once"]).code, 2);
    assert_ne!(lab.system("web1").0, g1);

    // Pinned to the first mark: redeployed there, whatever the branch says.
    let pin = format!("web1={first}");
    let r = converge(&lab, &["--once", "--pin", &pin]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    let r = converge(&lab, &["--once", "--pin", &pin]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    // A hold leaves it alone.
    let r = converge(&lab, &["--once", "--hold", "web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(summary_state(&events(&r), "web1"), "held");
    assert_eq!(lab.system("web1").0, g1);
}

/// Fetches the metrics page with curl (a real HTTP client) until it has `line` (the
/// page follows the events shortly); two minutes at most.
fn scrape_until(addr: &str, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_mins(2);
    loop {
        let out = Command::new("curl")
            .args([
                "-fsS",
                "--max-time",
                "10",
                &format!("http://{addr}/metrics"),
            ])
            .output()
            .expect("running curl");
        assert!(out.status.success(), "{out:?}");
        let page = String::from_utf8(out.stdout).unwrap();
        if page.lines().any(|l| l == line) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_poll_fallback_sees_a_hand_switch_too_and_metrics_say_so() {
    let mut lab = TestLab::new(&["web1"]);
    let g0 = lab.g(0).clone();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start(&lab, &["--watch", "poll", "--metrics", &addr]);
    d.wait_for("converged", |e| {
        is(e, "state", "web1") && e["state"] == "converged"
    });
    scrape_until(
        &addr,
        "waymark_converge_host_state{host=\"web1\",state=\"converged\"} 1",
    );
    hand_switch(&lab, "web1", &g0);
    let seen = d.wait_for("the hand switch", |e| {
        is(e, "facts", "web1") && e["drift"] == "hand-switch"
    });
    assert_eq!(seen["how"], "poll");
    d.wait_for("the drift reported", |e| {
        is(e, "state", "web1") && e["state"] == "drifted"
    });
    scrape_until(
        &addr,
        "waymark_converge_host_drift{host=\"web1\",kind=\"hand-switch\"} 1",
    );
    scrape_until(
        &addr,
        "waymark_converge_host_state{host=\"web1\",state=\"drifted\"} 1",
    );
    d.kill9();
}

#[test]
fn a_release_failing_its_switch_test_is_not_retried_until_a_newer_commit() {
    let mut lab = TestLab::new(&["web1"]);
    let g1 = lab.g(1).clone();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    assert_eq!(converge(&lab, &["--once"]).code, 2);

    // g2 fails its switch test: the host stays on its known-good closure.
    let bad = lab.flake.set_generation("web1", "g2").unwrap();
    release(&lab, "web1", &bad);
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 4, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(of(&ev, "deployed", "web1")[0]["result"], "failed");
    assert_eq!(summary_state(&ev, "web1"), "failed");
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));

    // Not retried on the next pass (remembered in the state directory).
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 4, "{}", explain(&r));
    assert!(of(&events(&r), "deploy", "web1").is_empty(), "{}", r.stdout);

    // A newer commit (the good generation, as a new closure) is tried, and lands.
    lab.flake.set_salt(&["web1"], "fixed").unwrap();
    let newer = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &newer);
    let r = converge(&lab, &["--once"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    let (current, profile, _) = lab.system("web1");
    assert_ne!(current, g1, "the new closure runs");
    assert_eq!(profile, current);
    assert_eq!(lab.marks("web1", "web1").last(), Some(&current));
}

#[test]
fn a_host_refusing_logins_is_retried_with_backoff_while_the_others_converge() {
    let mut lab = TestLab::new(&["web1", "web2"]);
    let g1 = lab.g(1).clone();
    let rev = lab.flake.set_generations(&["web1", "web2"], "g1").unwrap();
    release(&lab, "web1", &rev);
    release(&lab, "web2", &rev);
    lab.fleet.add_sshd_option("web2", "DenyUsers *").unwrap();

    let r = converge(&lab, &["--once", "--max-attempts", "3"]);
    assert_eq!(r.code, 3, "partial: {}", explain(&r));
    let ev = events(&r);
    assert_eq!(lab.system("web1").0, g1, "web1 converged");
    assert_eq!(of(&ev, "deploy", "web2").len(), 3, "{}", r.stdout);
    // The retries' waits double (200 ms, then 400 ms), as their events announce.
    let waits: Vec<i64> = of(&ev, "state", "web2")
        .iter()
        .filter(|e| e["state"] == "backoff")
        .map(|e| e["next_try_ms"].as_i64().unwrap() - e["at_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(waits[1] > waits[0], "{waits:?}");
    let last = of(&ev, "state", "web2").last().copied().unwrap().clone();
    assert_eq!(last["state"], "noncompliant", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("3 failed attempts")
    );
}

#[test]
fn work_still_pending_at_the_timeout_exits_5() {
    let mut lab = TestLab::new(&["web1"]);
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    lab.fleet.add_sshd_option("web1", "DenyUsers *").unwrap();
    // One attempt fails, the retry is a minute away: still pending at the deadline.
    let r = converge(
        &lab,
        &[
            "--once",
            "--timeout",
            "3s",
            "--backoff",
            "1m",
            "--backoff-max",
            "1m",
        ],
    );
    assert_eq!(r.code, 5, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(summary_state(&ev, "web1"), "backoff");
    assert_eq!(ev.last().unwrap()["exit_code"], 5);
}

#[test]
fn a_controller_killed_with_9_loses_no_pending_work_and_redeploys_nothing_converged() {
    let mut lab = TestLab::new(&["web1", "web2"]);
    let g1 = lab.g(1).clone();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    assert_eq!(converge(&lab, &["--once"]).code, 2);

    // web2's release lands; the controller is killed as it deploys it.
    let rev2 = lab.flake.set_generation("web2", "g1").unwrap();
    release(&lab, "web2", &rev2);
    let mut d = Daemon::start(&lab, &[]);
    d.wait_for("web2's deploy", |e| is(e, "deploy", "web2"));
    d.kill9();
    // The kill came with web2's deploy under way, as the state file says.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.state_dir().join("converge/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["hosts"]["web2"]["machine"]["phase"], "deploying");
    assert_eq!(state["hosts"]["web1"]["machine"]["phase"], "converged");

    let r = converge(&lab, &["--once"]);
    assert!(r.code == 2 || r.code == 0, "{}", explain(&r));
    let ev = events(&r);
    assert!(of(&ev, "deploy", "web1").is_empty(), "web1 was converged");
    assert_eq!(lab.system("web2").0, g1, "{}", explain(&r));
    assert_eq!(summary_state(&ev, "web2"), "converged");
    assert_eq!(lab.marks("web1", "web1").len(), 1);
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let plain = |args: &[&str]| {
        let mut cmd = Command::new(WAYMARK);
        cmd.args(args)
            .env("WAYMARK_STATE_DIR", "/nonexistent/state");
        run(cmd)
    };
    let r = plain(&["converge", "--once", "--flake", "github:o/fleet"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("not a local checkout"), "{}", r.stderr);
    let r = plain(&["converge", "--once", "--flake", "/nonexistent/fleet"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("/nonexistent/fleet"), "{}", r.stderr);
    let r = plain(&["converge", "--timeout", "soon"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    let r = plain(&["host-watch", "../etc"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stderr.contains("invalid target name"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
}

/// A release commit is evaluated once: the watcher's evaluation (which finds the
/// closure the host should run) is the one its deploy uses.
#[test]
fn a_release_commit_is_evaluated_once_for_its_watch_and_its_deploy() {
    let mut lab = TestLab::new(&["web1"]);
    let g1 = lab.g(1).clone();
    let rev = lab.flake.set_generation("web1", "g1").unwrap();
    release(&lab, "web1", &rev);
    // A `nix` first on PATH that notes every evaluation, then runs the real one.
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("evaluations");
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v nix"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.path().join("nix");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" eval \"*) echo \"$*\" >>'{}' ;; esac\nexec '{}' \"$@\"\n",
            log.display(),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = converge_command(&lab, &["--once"]);
    cmd.env(
        "PATH",
        format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap()
        ),
    );
    let r = run(cmd);
    assert_eq!(r.code, 2, "changed something: {}", explain(&r));
    assert_eq!(lab.system("web1").0, g1);
    let evaluations = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        evaluations.lines().filter(|l| l.contains(&rev)).count(),
        1,
        "{evaluations}"
    );
}

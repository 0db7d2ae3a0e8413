//! `waymark deploy` over several simulated hosts: selection, dependency order, skips,
//! `--max-failures`, `--canary`, batched builds. Needs root, as CI has.

use std::io::Write as _;
use std::process::Stdio;

use serde_json::Value;
use waymark_testbed::target_decl;

use crate::common::Logged;
use crate::common::Run;
use crate::test_deploy::{TestLab, events, has_note, host_report};

fn result(ev: &[Value], host: &str) -> String {
    host_report(ev, host)["result"].as_str().unwrap().to_owned()
}

/// Index in the event stream of the first event of `host` matching `pred`.
fn position(ev: &[Value], host: &str, pred: impl Fn(&Value) -> bool) -> usize {
    ev.iter()
        .position(|e| e["host"] == host && pred(e))
        .unwrap_or_else(|| panic!("no such event for {host}"))
}

/// db, then web1 and web2 (which depend on db), all built on the builder.
fn lab() -> TestLab {
    let mut lab = TestLab::new(&["db", "web1", "web2"]);
    lab.flake
        .set_deploy("db", &target_decl(r#"tags = [ "data" ];"#))
        .unwrap();
    for web in ["web1", "web2"] {
        lab.flake
            .set_deploy(
                web,
                &target_decl(r#"tags = [ "edge" ]; dependsOn = [ "db" ];"#),
            )
            .unwrap();
    }
    for h in ["db", "web1", "web2"] {
        lab.flake.set_generation(h, "g1").unwrap();
    }
    lab
}

fn assert_skipped(ev: &[Value], host: &str, why: &str) {
    assert_eq!(result(ev, host), "skipped");
    let message = host_report(ev, host)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains(why), "{message}");
}

fn untouched(lab: &TestLab, host: &str) -> bool {
    lab.system(host).0 == *lab.g(0) && lab.marks(host, host).is_empty()
}

#[test]
fn order_selection_and_batched_builds() {
    let lab = lab();

    // Nothing selected: refused, unless the fleet allows deploying everything.
    let r = lab.deploy(&[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no hosts selected"), "{}", r.stderr);

    let r = lab.deploy(&["--on", "@edge,db", "--parallel", "3"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let ev = events(&r);
    for h in ["db", "web1", "web2"] {
        assert_eq!(result(&ev, h), "deployed");
        assert_eq!(lab.system(h).0, *lab.g(1));
        // Marked on the target and on the build host (web1's and web2's marks there
        // may go in one batch).
        assert_eq!(lab.marks(h, h).len(), 1, "{h}");
        assert_eq!(lab.marks(h, "builder").len(), 1, "{h} on the builder");
    }
    assert!(!has_note(&ev, "marking on build host"), "{}", r.stdout);
    // The web hosts start only after db is marked known-good.
    let db_done = position(&ev, "db", |e| e["event"] == "host");
    for web in ["web1", "web2"] {
        assert!(position(&ev, web, |e| e["event"] == "start") > db_done);
    }
    assert!(
        has_note(&ev, "building 3 systems on builder in one call"),
        "one build call for the three hosts"
    );
    let summary = ev.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["hosts"].as_array().unwrap().len(), 3);

    // A glob, and names from stdin.
    let r = lab.deploy(&["--on", "web*"]);
    assert_eq!(r.code, 0);
    let ev = events(&r);
    assert_eq!(result(&ev, "web1"), "unchanged");
    assert!(ev.iter().all(|e| e["host"] != "db"));
    let mut cmd = lab.deploy_command(&["--json", "--on", "-"]).unwrap();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"web2\ndb\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hosts: Vec<String> = events(&r).last().unwrap()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["db", "web2"]);

    // Refused before anything runs: a selection that matches nothing, one that names
    // nothing (not read as no selection), a selection beside a rollback (of one host),
    // and 0 failures allowed (which would start no host).
    for (args, why) in [
        (&["--on", "@nope"][..], "--on @nope: matches no host"),
        (&["--on", ","], "the selection names none"),
        (
            &["rollback", "web1", "--on", "web2"],
            "--on does not go with rollback",
        ),
        (&["--on", "web1", "--max-failures", "0"], "--max-failures"),
    ] {
        let r = lab.deploy(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn a_failed_host_stops_its_dependents_and_the_limits_hold() {
    let mut lab = lab();
    // db's switch test fails: its dependents are skipped, untouched.
    lab.flake.set_generation("db", "g2").unwrap();
    let r = lab.deploy(&["--on", "db,web1,web2"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let ev = events(&r);
    assert_eq!(result(&ev, "db"), "failed");
    for web in ["web1", "web2"] {
        assert_eq!(result(&ev, web), "skipped");
        assert!(
            host_report(&ev, web)["message"]
                .as_str()
                .unwrap()
                .contains("db, which it waits for, did not become good")
        );
        assert!(untouched(&lab, web));
        // No gate starts for it (its closure was built ahead, in the build host's one
        // batch for all three, whose progress is reported for each).
        assert!(
            ev.iter()
                .all(|e| e["host"] != web || e["event"] == "host" || e["event"] == "build")
        );
    }
    assert!(untouched(&lab, "db"));

    // Independent hosts: with --max-failures 1, the first failure stops new starts.
    for web in ["web1", "web2"] {
        lab.flake.set_deploy(web, &target_decl("")).unwrap();
        lab.flake.set_generation(web, "g2").unwrap();
    }
    let logged = Logged::new(&["ssh"]);
    let r = lab.deploy_with_env(
        &[("PATH", &logged.path)],
        &[
            "--on",
            "web1,web2",
            "--parallel",
            "1",
            "--max-failures",
            "1",
        ],
    );
    assert_eq!(r.code, 1);
    let ev = events(&r);
    assert_eq!(result(&ev, "web1"), "failed");
    assert_skipped(&ev, "web2", "--max-failures 1 reached");
    // web2's session, set up ahead while the flake evaluated, was never used: it ends
    // with the run, as do the masters.
    assert_eq!(lab.masters_left(), 0, "master connections left running");
    assert!(
        !logged.runs("ssh").contains("-O exit"),
        "{}",
        logged.runs("ssh")
    );

    // --canary 1: the first host fails, the others are not started.
    lab.flake.set_generation("db", "g1").unwrap();
    let r = lab.deploy(&["--on", "web1,db", "--canary", "1"]);
    assert_eq!(r.code, 1);
    let ev = events(&r);
    assert_eq!(
        result(&ev, "db"),
        "deployed",
        "db comes first in deploy order"
    );
    let r = lab.deploy(&["--on", "web1,web2", "--canary", "1", "--parallel", "2"]);
    let ev = events(&r);
    assert_eq!(result(&ev, "web1"), "failed");
    assert_skipped(&ev, "web2", "a canary host failed");
    assert!(untouched(&lab, "web2"));
    assert_eq!(lab.masters_left(), 0, "master connections left running");
}

//! `waymark deploy` on simulated hosts (own /nix and /run, real sshd; docs/testbed.md): a
//! builder and targets, a fleet flake in git, the deployer in a namespace of its own.
//! The fault matrix: after each fault, what the target runs, its profile and boot entry,
//! its marks, the report and the exit status. Needs root, as CI has.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use waymark_testbed::{Lab, command_check, target_decl};

use crate::common::{Logged, Run, run};

const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");

/// A lab with a builder and `targets`, all running `g0`; kept with its directory.
pub struct TestLab {
    pub lab: Lab,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl TestLab {
    pub fn new(targets: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab::new(dir.path(), targets, Path::new(WAYMARK)).expect(
            "starting simulated hosts (needs root, openssh-server, nix-bin, busybox-static)",
        );
        Self { lab, _dir: dir }
    }

    pub fn g(&self, i: usize) -> &String {
        &self.lab.generations[i]
    }

    pub fn deploy(&self, args: &[&str]) -> Run {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        run(self.lab.deploy_command(&all).unwrap())
    }

    /// The master connections still running a few seconds after a run (they end as
    /// the run does; `ControlPersist` would keep them 60 s).
    pub fn masters_left(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.fleet.ssh_masters() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fleet.ssh_masters()
    }

    pub fn deploy_with_fault(&self, fault: &str, args: &[&str]) -> Run {
        self.deploy_with_env(&[("WAYMARK_FAULT", fault)], args)
    }

    pub fn deploy_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let mut cmd = self.lab.deploy_command(&all).unwrap();
        cmd.envs(env.iter().copied());
        run(cmd)
    }

    pub fn exec(&self, host: &str, line: &str) -> String {
        self.lab.exec(host, line).unwrap()
    }

    pub fn system(&self, host: &str) -> (String, String, String) {
        self.lab.system(host).unwrap()
    }

    pub fn marks(&self, host: &str, on: &str) -> Vec<String> {
        self.lab.marks(host, on).unwrap()
    }
}

/// A target's declaration with one command health check.
pub fn with_check(name: &str, command: &str, timeout: u64) -> String {
    target_decl(&format!(
        "healthChecks = [ {} ];",
        command_check(name, command, timeout)
    ))
}

/// The JSON Lines events of a run, checked against the documented schema.
pub fn events(r: &Run) -> Vec<Value> {
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/deploy-events-schema.json")).unwrap();
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

/// Checks a run's exit code and that web1's report says `words`; returns the report.
pub fn assert_ended(r: &Run, code: i32, words: &str) -> Value {
    assert_eq!(r.code, code, "{}", explain(r));
    let report = host_report(&events(r), "web1").clone();
    let message = report["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{report}");
    report
}

/// The message a gate ended with (its first end event).
pub fn gate_message(events: &[Value], gate: &str) -> String {
    events
        .iter()
        .find(|e| e["gate"] == gate && e["event"] == "end")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_else(|| panic!("no end of gate {gate}"))
        .to_owned()
}

/// Whether a note among `events` says `words`.
pub fn has_note(events: &[Value], words: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == "note" && e["message"].as_str().is_some_and(|m| m.contains(words)))
}

pub fn host_report<'a>(events: &'a [Value], host: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "host" && e["host"] == host)
        .unwrap_or_else(|| panic!("no host event for {host}: {events:?}"))
}

pub fn explain(r: &Run) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    )
}

#[test]
fn first_deploy_no_change_drift_and_rollback() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (&lab.g(0).clone(), &lab.g(1).clone());
    let before = lab.fleet.connections("web1");
    let daemons_before = (
        lab.fleet.daemon_connections("builder"),
        lab.fleet.daemon_connections("web1"),
    );

    // Gate by gate to known-good; the first deploy restores to what ran. Every ssh
    // the deploy starts (its own, and Nix's) is logged on the way.
    lab.flake.set_generation("web1", "g1").unwrap();
    let logged = Logged::new(&["ssh", "nix"]);
    let r = lab.deploy_with_env(&[("PATH", &logged.path)], &["web1"]);
    let used = lab.fleet.connections("web1") - before;
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    let gates: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "end")
        .map(|e| e["gate"].as_str().unwrap())
        .collect();
    assert_eq!(
        gates,
        ["build", "diff", "dry-activate", "test", "switch", "mark"]
    );
    assert!(
        ev.iter()
            .all(|e| e["event"] != "end" || e["result"] == "passed")
    );
    assert!(
        has_note(&ev, "first deploy"),
        "the first deploy says what it restores to"
    );
    assert_eq!(
        gate_message(&ev, "dry-activate"),
        "would restart sshd.service"
    );
    let diff = gate_message(&ev, "diff");
    assert!(diff.contains("openssl"), "{diff}");
    let report = host_report(&ev, "web1");
    assert_eq!(report["result"], "deployed");
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert_eq!(lab.marks("web1", "web1"), std::slice::from_ref(g1));
    assert_eq!(
        lab.marks("web1", "builder"),
        std::slice::from_ref(g1),
        "the build host keeps it too"
    );
    let records: Vec<_> = std::fs::read_dir(lab.state_dir().join("deploys/web1"))
        .unwrap()
        .collect();
    assert_eq!(
        records.len(),
        1,
        "the record is kept on the deploying machine"
    );
    // The closure went from the build host's nix-daemon to the target's, through their
    // sockets forwarded over the master connections (no nix-daemon --stdio session;
    // the hosts' own root commands use their stores directly).
    assert!(
        lab.fleet.daemon_connections("builder") > daemons_before.0,
        "builder's daemon unused"
    );
    assert!(
        lab.fleet.daemon_connections("web1") > daemons_before.1,
        "target's daemon unused"
    );
    // One master connection to the target and one fresh one for the confirmation,
    // one master to the build host.
    assert_eq!(report["ssh_connections"], 3, "{report}");
    assert_eq!(used, 2, "connections to the target");
    // The run ends its master connections (they would otherwise linger for
    // ControlPersist's 60 s).
    assert_eq!(lab.masters_left(), 0, "master connections left running");
    let started = logged.runs("ssh");
    assert!(started.contains("ControlMaster=yes"), "{started}");
    assert!(
        !started.contains("-O exit"),
        "masters are told to end over their sockets, with no ssh -O exit:\n{started}"
    );
    // The copy sends what the target lacks (the new closure less what runs there),
    // with no walk of the closure over the build host's connection.
    let closure_of = |host: &str, path: &str| -> std::collections::BTreeSet<String> {
        lab.exec(host, &format!("nix-store -qR {path}"))
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let lacking: Vec<String> = closure_of("builder", g1)
        .difference(&closure_of("web1", g0))
        .cloned()
        .collect();
    assert!(lacking.contains(g1) && lacking.len() > 1, "{lacking:?}");
    let mut sent = logged.copied();
    assert_eq!(sent.len(), 1, "{}", logged.runs("nix"));
    sent[0].sort();
    assert_eq!(sent[0], lacking);
    assert!(logged.copies()[0].contains("--no-recursive"));

    // The same closure again: nothing to do.
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(host_report(&ev, "web1")["result"], "unchanged");
    assert!(ev.iter().all(|e| e["event"] != "start"), "no gate runs");

    // A hand deploy: drift is refused, nothing changes, unless allowed.
    lab.exec("web1", &format!("{g0}/bin/switch-to-configuration test"));
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 1, "{}", explain(&r));
    let report = host_report(&events(&r), "web1").clone();
    assert_eq!(report["result"], "failed");
    assert_eq!(report["reached"], "diff");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("deployed by hand")
    );
    assert_eq!(lab.system("web1").0, *g0);
    let r = lab.deploy(&["web1", "--allow-drift"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1").0, *g1);

    // Rollback: back to the one before the latest, through the gates, marked again.
    lab.flake.set_generation("web1", "g0").unwrap();
    // This run opens its connections while the flake evaluates, to the addresses the
    // last run read: still one master per host and the confirmation's.
    let addresses = std::fs::read_to_string(lab.state_dir().join("ssh-addresses.json")).unwrap();
    assert!(
        addresses.contains(r#""web1":{"endpoints":[{"name":"web1""#)
            && addresses.contains("builder"),
        "{addresses}"
    );
    let before = lab.fleet.connections("web1");
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(host_report(&events(&r), "web1")["ssh_connections"], 3);
    assert_eq!(lab.fleet.connections("web1") - before, 2);
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    let r = lab.deploy(&["rollback", "web1", "--to", "previous"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert!(
        ev.iter().all(|e| e["gate"] != "build"),
        "a rollback builds nothing"
    );
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert_eq!(lab.marks("web1", "web1").last(), Some(g1));
    let r = lab.deploy(&["rollback", "web1"]);
    assert_eq!(r.code, 0);
    assert_eq!(host_report(&events(&r), "web1")["result"], "unchanged");
}

#[test]
fn without_a_reachable_nix_daemon_closures_are_copied_over_ssh_sessions() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    // Single-user Nix on the target: no daemon socket there.
    lab.fleet.stop_daemon("web1").unwrap();
    let before = lab.fleet.daemon_connections("web1");
    lab.flake.set_generation("web1", "g1").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert_eq!(lab.fleet.daemon_connections("web1"), before);

    // The build host runs a daemon, but its sshd refuses to forward to it: the copy
    // goes again, over ssh sessions, and says so.
    lab.fleet
        .add_sshd_option("builder", "AllowStreamLocalForwarding no")
        .unwrap();
    lab.flake.set_generation("web1", "g0").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    let ev = events(&r);
    assert!(
        has_note(&ev, "copying over ssh sessions"),
        "{}",
        explain(&r)
    );
    assert_eq!(lab.marks("web1", "builder").last(), Some(&g0));
}

/// Asserts the target is untouched: runs g0, profile and boot entry on g0, no marks.
fn assert_untouched(lab: &TestLab, r: &Run, gate: &str, code: i32, words: &str) {
    assert_eq!(r.code, code, "{}", explain(r));
    let ev = events(r);
    let report = host_report(&ev, "web1");
    assert_eq!(report["reached"], gate, "{report}");
    assert!(
        report["message"].as_str().unwrap().contains(words),
        "{report}"
    );
    let g0 = &lab.g(0).clone();
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert!(
        lab.marks("web1", "web1").is_empty(),
        "no mark for a failed closure"
    );
    assert!(
        lab.exec("web1", "ls /run/waymark/active 2>/dev/null || echo free") == "free",
        "the target's deploy lock is released"
    );
}

#[test]
fn failures_before_activation_leave_the_target_alone() {
    let mut lab = TestLab::new(&["web1"]);

    lab.flake.set_generation("web1", "broken").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "build", 2, "building on builder failed");
    // Nix's own words and the build's last lines, from its structured log; its
    // counters as it went.
    let ev = events(&r);
    let report = host_report(&ev, "web1");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("builder for '/nix/store/"),
        "{report}"
    );
    assert_eq!(
        report["log"],
        serde_json::json!(["planted build failure"]),
        "{report}"
    );
    let last = ev
        .iter()
        .rfind(|e| e["event"] == "build")
        .expect("build progress");
    assert_eq!(
        (&last["failed"], &last["builder"]),
        (&1.into(), &"builder".into()),
        "{last}"
    );

    lab.flake.set_generation("web1", "g1").unwrap();
    // The target does not trust the builder's key: the copy is refused, not forced.
    let conf = lab
        .fleet
        .host("web1")
        .unwrap()
        .dir()
        .join("etc-nix/nix.conf");
    let trusting = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        trusting.replace("trusted-public-keys", "# trusted-public-keys"),
    )
    .unwrap();
    lab.fleet.restart_daemon("web1").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "build", 2, "copying from builder to web1 failed");
    std::fs::write(&conf, trusting).unwrap();
    lab.fleet.restart_daemon("web1").unwrap();

    // The copy is cut off half-way: nothing half-copied is used, and the next deploy
    // copies again and goes through.
    let r = lab.deploy_with_fault("interrupt-copy", &["web1", "--goal", "build"]);
    assert_untouched(&lab, &r, "build", 2, "copying from builder to web1 failed");
    assert_eq!(lab.deploy(&["web1", "--goal", "build"]).code, 0);
    assert_eq!(lab.system("web1").0, *lab.g(0));

    lab.exec("web1", "touch /run/waymark-testbed/fail-dry-activate");
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "dry-activate", 1, "dry-activate failed");
    lab.exec("web1", "rm /run/waymark-testbed/fail-dry-activate");

    let r = lab.deploy(&["web1", "--goal", "dry-activate"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_untouched(&lab, &r, "dry-activate", 0, "nothing changed");

    // A closure the build host has to build (a new salt): its progress as Nix there
    // counted it, every derivation built by the end.
    lab.flake.set_salt(&["web1"], "progress").unwrap();
    let r = lab.deploy(&["web1", "--goal", "build"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    let builds: Vec<&Value> = ev.iter().filter(|e| e["event"] == "build").collect();
    let last = builds.last().expect("build progress events");
    assert!(last["total"].as_u64().unwrap() > 0, "{builds:?}");
    assert_eq!(last["built"], last["total"], "{builds:?}");
    assert!(builds.iter().any(|e| e["running"] == 1), "{builds:?}");
}

#[test]
fn failures_after_activation_restore_the_previous_closure() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g2").unwrap();
    // g2's switch test fails (planted in the closure).
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "test", 1, "switch-to-configuration test failed");

    lab.flake
        .set_deploy(
            "web1",
            &with_check("web-up", "test ! -e /run/waymark-testbed/unhealthy", 2),
        )
        .unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    lab.exec("web1", "touch /run/waymark-testbed/unhealthy");
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "test", 1, "health check web-up failed");
    lab.exec("web1", "rm /run/waymark-testbed/unhealthy");

    // A check that hangs: named, with its time, and the deployer aborts it before the
    // agent's window closes (not "the confirmation did not arrive in time").
    lab.flake
        .set_deploy("web1", &with_check("hang", "sleep 100", 2))
        .unwrap();
    let r = lab.deploy(&["web1"]);
    assert_untouched(
        &lab,
        &r,
        "test",
        1,
        "health check hang failed (2 s allowed): no answer within 2 s",
    );
    let message = host_report(&events(&r), "web1")["message"].to_string();
    assert!(message.contains("aborted"), "{message}");
    lab.flake
        .set_deploy(
            "web1",
            &with_check("web-up", "test ! -e /run/waymark-testbed/unhealthy", 2),
        )
        .unwrap();

    // The commit (profile + boot entry) fails: profile and boot entry are put back.
    // Only the new closure's boot entry fails; putting the old one back works.
    lab.exec(
        "web1",
        &format!("echo {} > /run/waymark-testbed/fail-boot", lab.g(1)),
    );
    let r = lab.deploy(&["web1"]);
    assert_untouched(
        &lab,
        &r,
        "switch",
        1,
        "setting the profile or the boot entry failed",
    );
    // Every boot entry fails, the old one's too: the restore is not complete, and the
    // report says a human is needed.
    lab.exec(
        "web1",
        "rm /run/waymark-testbed/fail-boot; touch /run/waymark-testbed/fail-boot",
    );
    let r = lab.deploy(&["web1"]);
    let report = assert_ended(&r, 4, "restoring failed");
    assert_eq!(report["result"], "needs-human");
    assert!(lab.marks("web1", "web1").is_empty());
    lab.exec("web1", "rm /run/waymark-testbed/fail-boot");
}

#[test]
fn a_confirmation_that_never_arrives_or_arrives_late_is_never_success() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g1").unwrap();

    // The new connection cannot be made after the switch: the target restores itself.
    let r = lab.deploy_with_fault("confirm-unreachable", &["web1"]);
    assert_untouched(
        &lab,
        &r,
        "switch",
        1,
        "could not confirm over a new SSH connection",
    );

    // deploy-rs #214: a confirmation after the window is refused, and said so.
    let r = lab.deploy_with_fault("late-confirm", &["web1"]);
    assert_untouched(&lab, &r, "switch", 1, "after the target's window closed");

    // The confirmation landed but its answer was lost: the agent's own end says it
    // committed, so the deploy goes on to mark it, once (the confirmation's shell had
    // marked the target already), and the next deploy has nothing to finish.
    let r = lab.deploy_with_fault("cut-after-confirm", &["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert!(
        has_note(&ev, "the confirmation had landed"),
        "{}",
        explain(&r)
    );
    let g1 = lab.g(1).clone();
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert_eq!(lab.marks("web1", "web1"), std::slice::from_ref(&g1));
    assert_eq!(lab.marks("web1", "builder"), std::slice::from_ref(&g1));
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert!(!has_note(&events(&r), "interrupted"), "{}", explain(&r));
    assert_eq!(lab.marks("web1", "builder").len(), 1);
}

#[test]
fn bad_input_is_refused_before_anything_runs() {
    let mut lab = TestLab::new(&["web1"]);
    let r = lab.deploy(&["nosuchhost"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown host nosuchhost"), "{}", r.stderr);
    // A build host without a signing key: targets would refuse its paths.
    lab.flake.set_deploy("builder", "{ }").unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 2, "{}", explain(&r));
    assert!(r.stdout.contains("signingKeyFile"), "{}", r.stdout);
    assert_eq!(lab.system("web1").0, *lab.g(0));
}

#[test]
fn a_switch_inhibitor_stops_the_switch_and_falls_back_to_boot_only_where_allowed() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g1").unwrap();
    lab.exec("web1", "touch /run/waymark-testbed/inhibited");
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "test", 1, "the switch is inhibited");

    lab.flake
        .set_deploy("web1", &target_decl("bootOnInhibitedSwitch = true;"))
        .unwrap();
    let r = lab.deploy(&["web1"]);
    assert_ended(&r, 1, "boot default from the next reboot");
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    assert_eq!(
        lab.system("web1"),
        (g0, g1.clone(), g1),
        "runs what it ran; boots the new closure next"
    );
    assert!(
        lab.marks("web1", "web1").is_empty(),
        "it has not run here: not known-good"
    );
}

#[test]
fn builds_here_with_a_key_or_on_the_target_where_declared() {
    let mut lab = TestLab::new(&["web1"]);
    let key = lab.fleet.signing_key();
    // No build host: built by the deploying machine, signed with --signing-key.
    lab.flake
        .set_deploy("web1", "{ confirmTimeout = 3; }")
        .unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 2, "refused without a key: {}", explain(&r));
    assert!(r.stdout.contains("--signing-key"), "{}", r.stdout);
    let r = lab.deploy(&["web1", "--signing-key", key.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(gate_message(&ev, "build"), "built here and copied to web1");
    assert_eq!(lab.system("web1").0, *lab.g(1));

    // allowBuildOnTarget: the target builds it itself.
    lab.flake
        .set_deploy("web1", "{ confirmTimeout = 3; allowBuildOnTarget = true; }")
        .unwrap();
    lab.flake.set_generation("web1", "g0").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(
        gate_message(&ev, "build"),
        "built on web1 (allowBuildOnTarget)"
    );
    assert_eq!(lab.system("web1").0, *lab.g(0));
}

/// A static HTTP server on 127.0.0.1 (busybox httpd), stopped when dropped.
struct Httpd {
    child: std::process::Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Httpd {
    fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(waymark_testbed::busybox().unwrap())
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(root.path())
            .spawn()
            .expect("busybox httpd");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "httpd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, root }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http_health_checks_gate_the_switch() {
    let mut lab = TestLab::new(&["web1"]);
    let httpd = Httpd::start();
    let check = format!(
        r#"healthChecks = [ {{ name = "healthz"; kind = "http"; command = null; url = "http://127.0.0.1:{}/healthz"; timeout = 2; }} ];"#,
        httpd.port
    );
    lab.flake.set_deploy("web1", &target_decl(&check)).unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    // 404: the check fails and the target is restored.
    let r = lab.deploy(&["web1"]);
    assert_untouched(&lab, &r, "test", 1, "health check healthz failed");
    // 200: the deploy goes through.
    std::fs::write(httpd.root.path().join("healthz"), "ok\n").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    assert_eq!(gate_message(&ev, "test"), "activated; passed: healthz");
    assert_eq!(lab.system("web1").0, *lab.g(1));
}

#[test]
fn the_activation_lock_is_respected_and_a_dead_holders_taken_over() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g1").unwrap();
    // Another deploy's agent is alive: refused, nothing changes.
    lab.exec(
        "web1",
        "mkdir -p /run/waymark/active && echo other > /run/waymark/active/id && \
         (setsid -f sh -c 'echo $$ > /run/waymark/active/pid; exec sleep 60' \
           </dev/null >/dev/null 2>&1) && sleep 0.2",
    );
    let r = lab.deploy(&["web1"]);
    assert_ended(&r, 1, "another deploy is activating");
    assert_eq!(lab.system("web1").0, *lab.g(0));
    // Its holder is gone (a killed agent): the lock is taken over.
    lab.exec("web1", "kill $(cat /run/waymark/active/pid)");
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1").0, *lab.g(1));
    assert_eq!(
        lab.exec("web1", "ls /run/waymark/active 2>/dev/null || echo free"),
        "free"
    );
}

#[test]
fn a_copy_sends_only_what_the_target_lacks_or_else_the_closure() {
    let mut lab = TestLab::new(&["web1"]);
    let (g0, g1) = (&lab.g(0).clone(), &lab.g(1).clone());
    // A first deploy (a salted copy of g0): the target's closure is kept here.
    lab.flake.set_salt(&["web1"], "a").unwrap();
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let kept = lab.state_dir().join("closures/web1.json");
    let mut closure: Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();

    // Knowledge gone wrong: the kept closure claims the target holds all of g1, which
    // it does not. The new system (g1, salted: a path of its own on g1's references) is
    // sent alone, and cannot be registered there without its references: the whole
    // closure is copied instead, and the deploy goes on.
    let g1_closure = lab.exec("builder", &format!("nix-store -qR {g1}"));
    let paths = closure["paths"].as_array_mut().unwrap();
    for p in g1_closure.lines() {
        paths.push(serde_json::json!({ "path": p, "nar_size": 1, "deriver": null }));
    }
    std::fs::write(&kept, serde_json::to_vec(&closure).unwrap()).unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    let logged = Logged::new(&["nix"]);
    let r = lab.deploy_with_env(&[("PATH", &logged.path)], &["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let ev = events(&r);
    let report = host_report(&ev, "web1");
    assert_eq!(report["result"], "deployed");
    let new = report["closure"].as_str().unwrap().to_owned();
    assert!(
        has_note(&ev, "copying the whole closure"),
        "{}",
        explain(&r)
    );
    let nix = logged.runs("nix");
    assert_eq!(
        logged.copied(),
        [vec![new.clone()], vec![new.clone()]],
        "{nix}"
    );
    let copies = logged.copies();
    assert!(copies[0].contains("--no-recursive") && !copies[1].contains("--no-recursive"));
    assert_eq!(lab.system("web1").0, new);
    assert_ne!(new, *g0);
}

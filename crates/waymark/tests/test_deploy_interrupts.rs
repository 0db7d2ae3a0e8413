//! `waymark deploy` interrupted: a deployer killed (SIGKILL) or stopped (Ctrl-C,
//! SIGTERM) in each gate, a connection lost after the confirmation landed; what the
//! target runs and boots afterwards, what is left of the run (no master, no control
//! directory), and the next deploy finishing what was left. Needs root, as CI has.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::Run;
use crate::test_deploy::{TestLab, events, explain, has_note, host_report, with_check};

/// Runs a deploy, sends it `signal` once `gate` started (plus `after`), and waits for
/// the target's agent to restore on its own. Returns the deployer's exit code, its
/// stderr, and the directory of its masters' control sockets.
fn stop_during(
    lab: &TestLab,
    fault: &str,
    gate: &str,
    after: Duration,
    signal: &str,
) -> (Option<i32>, String, std::path::PathBuf) {
    stop_during_until(lab, fault, gate, after, signal, "restored")
}

/// [`stop_during`], waiting for the agent to reach `settles` (`restored`, `committed`).
fn stop_during_until(
    lab: &TestLab,
    fault: &str,
    gate: &str,
    after: Duration,
    signal: &str,
    settles: &str,
) -> (Option<i32>, String, std::path::PathBuf) {
    // Only this run's masters count (another run's may still be ending).
    let earlier = lab.fleet.ssh_control_dirs();
    let mut cmd = lab.deploy_command(&["--json", "web1"]).unwrap();
    cmd.env("WAYMARK_FAULT", fault)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = read_aside(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains(r#""event":"start""#) && line.contains(&format!(r#""gate":"{gate}""#)) {
            break;
        }
    }
    std::thread::sleep(after);
    let mut control = lab.fleet.ssh_control_dirs();
    control.retain(|d| !earlier.contains(d));
    assert_eq!(control.len(), 1, "{control:?}");
    // unshare and sh exec: the child is the deployer itself.
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let code = child.wait().unwrap().code();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab
        .exec(
            "web1",
            "cat /run/waymark/deploy/*/state 2>/dev/null | tail -n 1",
        )
        .split(':')
        .next()
        != Some(settles)
    {
        assert!(
            Instant::now() < deadline,
            "the agent did not reach {settles} by itself"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    (
        code,
        stderr.join().unwrap(),
        control.into_iter().next().unwrap(),
    )
}

/// Within a few seconds of a deployer's end, none of its master connections runs and
/// their control directory is gone.
fn assert_gone(lab: &TestLab, control: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (lab.fleet.ssh_control_dirs().contains(control) || control.exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !lab.fleet.ssh_control_dirs().contains(control),
        "master connections left running"
    );
    assert!(!control.exists(), "{} left behind", control.display());
}

/// Reads all of `stream` on a thread of its own (so the child never blocks on it).
fn read_aside(mut stream: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        stream.read_to_string(&mut s).unwrap();
        s
    })
}

#[test]
fn a_killed_or_interrupted_deployer_leaves_the_previous_closure_running() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake
        .set_deploy("web1", &with_check("slow", "sleep 1", 3))
        .unwrap();
    lab.flake.set_generation("web1", "g1").unwrap();
    let g0 = &lab.g(0).clone();

    // In gate 4, during the health checks. Even a killed deployer leaves no master
    // connection (or session) behind for ControlPersist's 60 s, nor their directory.
    let (_, _, killed) = stop_during(
        &lab,
        "slow-health",
        "test",
        Duration::from_millis(1500),
        "KILL",
    );
    assert_gone(&lab, &killed);
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert!(lab.marks("web1", "web1").is_empty());
    lab.exec("web1", "rm -rf /run/waymark/deploy");

    // In gate 5, before the confirmation.
    let (_, _, killed) = stop_during(
        &lab,
        "pause-before-confirm",
        "switch",
        Duration::from_millis(500),
        "KILL",
    );
    assert_gone(&lab, &killed);
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert!(lab.marks("web1", "web1").is_empty());
    lab.exec("web1", "rm -rf /run/waymark/deploy");

    // Interrupted (Ctrl-C) in gate 4: the run ends at once, saying so, its master
    // connections and their directory gone instead of lingering for ControlPersist.
    let started = Instant::now();
    let (code, stderr, control) = stop_during(
        &lab,
        "slow-health",
        "test",
        Duration::from_millis(500),
        "INT",
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_gone(&lab, &control);
    assert!(started.elapsed() < Duration::from_secs(40));
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert!(lab.marks("web1", "web1").is_empty());

    // The next deploy goes through.
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1").0, *lab.g(1));
}

/// A deploy that finished what an interrupted one left: its host unchanged (it runs
/// the closure, now marked), and a note that says so.
fn assert_finished(r: &Run) {
    assert_eq!(r.code, 0, "{}", explain(r));
    let ev = events(r);
    assert_eq!(
        host_report(&ev, "web1")["result"],
        "unchanged",
        "{}",
        explain(r)
    );
    assert!(
        has_note(&ev, "interrupted after its commit"),
        "{}",
        explain(r)
    );
}

#[test]
fn a_deploy_stopped_after_its_commit_is_finished_by_the_next_one() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g1").unwrap();
    let (g0, g1) = (lab.g(0).clone(), lab.g(1).clone());
    let records = |lab: &TestLab| -> usize {
        std::fs::read_dir(lab.state_dir().join("deploys/web1")).map_or(0, Iterator::count)
    };

    // Ctrl-C once the confirmation landed, before the marks: the agent commits. The
    // next plain deploy used to refuse the host as "deployed by hand?".
    let (code, stderr, _) = stop_during_until(
        &lab,
        "pause-after-confirm",
        "switch",
        Duration::from_secs(1),
        "INT",
        "committed",
    );
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(lab.system("web1"), (g1.clone(), g1.clone(), g1.clone()));
    assert!(
        lab.marks("web1", "builder").is_empty(),
        "the mark gate never ran"
    );
    assert_eq!(records(&lab), 0);
    // Redeployed at once, while the stopped deploy's shell may still run on the target:
    // the next deploy waits for it, then finishes what it left.
    assert_finished(&lab.deploy(&["web1"]));
    assert_eq!(lab.marks("web1", "web1"), std::slice::from_ref(&g1));
    assert_eq!(lab.marks("web1", "builder"), std::slice::from_ref(&g1));
    assert_eq!(records(&lab), 1, "the record is kept here");
    // Finished once: the run after that has nothing to finish.
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert!(!has_note(&events(&r), "interrupted"), "{}", explain(&r));
    assert_eq!(lab.marks("web1", "web1").len(), 1);

    // Killed in the mark gate, after the target's mark (made over the confirmation's
    // connection), before the build host's and the record here.
    lab.flake.set_generation("web1", "g0").unwrap();
    let (_, _, killed) = stop_during_until(
        &lab,
        "pause-before-record",
        "mark",
        Duration::from_millis(500),
        "KILL",
        "committed",
    );
    assert_gone(&lab, &killed);
    assert_eq!(lab.system("web1"), (g0.clone(), g0.clone(), g0.clone()));
    assert_eq!(lab.marks("web1", "web1").last(), Some(&g0));
    assert_eq!(lab.marks("web1", "builder").last(), Some(&g1));
    assert_eq!(records(&lab), 1);
    assert_finished(&lab.deploy(&["web1"]));
    assert_eq!(lab.marks("web1", "builder").last(), Some(&g0));
    assert_eq!(
        lab.marks("web1", "web1").len(),
        2,
        "the target is not marked twice"
    );
    assert_eq!(records(&lab), 2);

    // A hand switch is still drift, agent records or not.
    lab.exec("web1", &format!("{g1}/bin/switch-to-configuration test"));
    let r = lab.deploy(&["web1"]);
    assert_eq!(r.code, 1, "{}", explain(&r));
    assert!(
        host_report(&events(&r), "web1")["message"]
            .as_str()
            .unwrap()
            .contains("deployed by hand"),
        "{}",
        explain(&r)
    );

    // Two marks of one closure: `--to previous` is the closure before it, not the one
    // that runs.
    let r = lab.deploy(&["web1", "--allow-drift"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    let marks = lab.marks("web1", "web1");
    assert_eq!(marks[marks.len() - 2..], [g0.clone(), g0.clone()]);
    let r = lab.deploy(&["rollback", "web1", "--to", "previous"]);
    assert_eq!(r.code, 0, "{}", explain(&r));
    assert_eq!(lab.system("web1").0, g1);
}

#[test]
fn a_signal_after_the_summary_leaves_the_deploys_exit_status() {
    let mut lab = TestLab::new(&["web1"]);
    lab.flake.set_generation("web1", "g1").unwrap();
    let mut cmd = lab.deploy_command(&["--json", "web1"]).unwrap();
    cmd.env("WAYMARK_FAULT", "pause-after-summary")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = read_aside(child.stderr.take().unwrap());
    let summary = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find(|l| l.contains(r#""event":"summary""#));
    assert!(summary.is_some());
    // While it closes its connections: the deploy is over, and passed.
    assert!(
        child.try_wait().unwrap().is_none(),
        "ended before the signal: nothing tested"
    );
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let code = child.wait().unwrap().code();
    let stderr = stderr.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("interrupted"), "{stderr}");
    assert_eq!(lab.system("web1").0, *lab.g(1));
}

#[test]
fn a_ctrl_c_while_names_are_read_from_stdin_leaves_nothing() {
    // The deployer gets a /tmp of its own, to see what it leaves there. Its program is
    // opened before: a checkout under /tmp would be hidden by the mount.
    let tmp = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"exec 3<"$1" && shift && mount --bind "$0" /tmp && exec /proc/self/fd/3 "$@""#)
        .arg(tmp.path())
        .arg(env!("CARGO_BIN_EXE_waymark"))
        .args([
            "deploy",
            "--on",
            "-",
            "--flake",
            "/nonexistent",
            "--state-dir",
        ])
        .arg(state.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Waiting for the names: its program is waymark's, and it sleeps.
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(std::fs::read_link(proc_dir.join("exe")).is_ok_and(|e| e.ends_with("waymark"))
        && std::fs::read_to_string(proc_dir.join("wchan")).is_ok_and(|w| w.contains("read")))
    {
        assert!(
            Instant::now() < deadline,
            "the deploy never waited on stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(!status.success());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in /tmp: {left:?}");
}

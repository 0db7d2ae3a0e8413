//! `waymark deploy` against a target whose PID 1 is a real systemd (a Debian root
//! booted with `systemd-nspawn`: the testbed's `SystemdLab`), the path every NixOS
//! host takes and the namespace hosts cannot show: the agent starts in a transient
//! unit (`systemd-run`, with the session's PATH), the "no newly failed units" check
//! reads systemd, and the closures' switch-to-configuration starts a real unit. Needs
//! root, systemd-nspawn and the root `.ci/run` makes
//! (crates/waymark-testbed/systemd-root.sh): without them these tests fail, never skip.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use waymark_testbed::{SystemdLab, command_check, target_decl};

use crate::common::{Run, run};
use crate::test_deploy::{assert_ended, events, gate_message};

const WAYMARK: &str = env!("CARGO_BIN_EXE_waymark");
const APP: &str = "waymark-testbed-app.service";

/// A lab with a builder and one systemd target, `web1`, running `g0`.
struct Lab {
    lab: SystemdLab,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Lab {
    type Target = SystemdLab;
    fn deref(&self) -> &SystemdLab {
        &self.lab
    }
}

impl std::ops::DerefMut for Lab {
    fn deref_mut(&mut self) -> &mut SystemdLab {
        &mut self.lab
    }
}

impl Lab {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lab = SystemdLab::new(dir.path(), &["web1"], Path::new(WAYMARK)).unwrap_or_else(|e| {
            panic!(
                "booting a systemd host (needs root, systemd-nspawn, and the root made by \
                 crates/waymark-testbed/systemd-root.sh): {e}"
            )
        });
        Self { lab, _dir: dir }
    }

    fn g(&self, i: usize) -> String {
        self.lab.generations[i].clone()
    }

    fn deploy_command(&self, fault: Option<&str>) -> Command {
        let mut cmd = self.lab.deploy_command(&["--json", "web1"]).unwrap();
        if let Some(f) = fault {
            cmd.env("WAYMARK_FAULT", f);
        }
        cmd
    }

    fn deploy(&self, fault: Option<&str>) -> Run {
        run(self.deploy_command(fault))
    }

    fn exec(&self, line: &str) -> String {
        self.lab.exec("web1", line).unwrap()
    }

    /// What web1 runs, its profile and boot default; each must be `g`.
    fn assert_runs(&self, g: &str) {
        let g = g.to_owned();
        assert_eq!(self.lab.system("web1").unwrap(), (g.clone(), g.clone(), g));
    }

    /// The closure's service is active and is `g`'s (its description names it), and
    /// no unit is failed but `allowed`.
    fn assert_service_of(&self, g: &str, allowed: &[&str]) {
        assert_eq!(
            self.exec(&format!("systemctl is-active {APP} || true")),
            "active"
        );
        assert_eq!(
            self.exec(&format!("systemctl show -p Description --value {APP}")),
            format!("app of {g}")
        );
        let failed =
            self.exec("systemctl list-units --state=failed --no-legend --plain | awk '{print $1}'");
        let failed: Vec<&str> = failed.lines().filter(|u| !allowed.contains(u)).collect();
        assert!(failed.is_empty(), "failed units: {failed:?}");
    }

    /// The last state of the agent (of the one deploy directory there is).
    fn agent_state(&self) -> String {
        self.exec("cat /run/waymark/deploy/*/state 2>/dev/null | tail -n 1")
    }
}

fn explain(r: &Run) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    )
}

#[test]
fn a_deploy_to_a_real_systemd_starts_its_agent_in_a_transient_unit_and_reads_failed_units() {
    let mut lab = Lab::start();
    let (g0, g1) = (lab.g(0), lab.g(1));
    lab.assert_runs(&g0);
    lab.assert_service_of(&g0, &[]);
    // A unit failed before the deploy: not one the deploy made fail.
    lab.exec("systemd-run --quiet --unit=broken-before /bin/false");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.exec("systemctl is-failed broken-before.service || true") != "failed" {
        assert!(
            Instant::now() < deadline,
            "broken-before.service never failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    lab.flake.set_generation("web1", "g1").unwrap();
    let r = lab.deploy(None);
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
    // The check ran (the probe saw systemd) and a failure from before does not count.
    let test = gate_message(&ev, "test");
    assert!(test.contains("no failed units"), "{test}");
    lab.assert_runs(&g1);
    lab.assert_service_of(&g1, &["broken-before.service"]);
    assert_eq!(
        lab.marks("web1", "web1").unwrap(),
        std::slice::from_ref(&g1)
    );
    assert_eq!(
        lab.marks("web1", "builder").unwrap(),
        std::slice::from_ref(&g1)
    );
    // The agent ran as a transient unit of systemd's (its start and end in the
    // journal), not detached with setsid, which leaves an agent.log.
    let journal =
        lab.exec("journalctl --no-pager -o cat _PID=1 | grep 'waymark-activate-' || true");
    assert!(journal.contains("Started waymark-activate-"), "{journal}");
    assert_eq!(
        lab.exec("ls /run/waymark/deploy/*/agent.log 2>/dev/null | wc -l"),
        "0"
    );
}

#[test]
fn a_service_that_fails_at_activation_is_restored_and_named() {
    let mut lab = Lab::start();
    let g0 = lab.g(0);
    // The service exits with an error once started: switch-to-configuration succeeds,
    // the failed-units check (after a check that gives it a second) sees it.
    lab.flake
        .set_deploy(
            "web1",
            &target_decl(&format!(
                "healthChecks = [ {} ];",
                command_check("settle", "sleep 1", 5)
            )),
        )
        .unwrap();
    lab.flake.set_generation("web1", "g3").unwrap();
    let r = lab.deploy(None);
    let report = assert_ended(&r, 1, &format!("units failed after activation: {APP}"));
    assert_eq!(report["result"], "failed", "{report}");
    lab.assert_runs(&g0);
    lab.assert_service_of(&g0, &[]);
    assert!(lab.marks("web1", "web1").unwrap().is_empty());
    assert!(
        lab.agent_state().starts_with("restored:"),
        "{}",
        lab.agent_state()
    );
    lab.exec("rm -rf /run/waymark/deploy");

    // The service fails to start: switch-to-configuration fails naming it, as NixOS's
    // does (status 4), and the report carries its words.
    lab.flake.set_generation("web1", "g4").unwrap();
    let r = lab.deploy(None);
    let report = assert_ended(&r, 1, "switch-to-configuration test failed");
    let message = report["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("the following units failed: {APP}")),
        "{message}"
    );
    lab.assert_runs(&g0);
    lab.assert_service_of(&g0, &[]);
    assert!(lab.marks("web1", "web1").unwrap().is_empty());
}

#[test]
fn a_killed_deployer_or_a_late_confirmation_is_restored_by_the_agent_in_its_unit() {
    let mut lab = Lab::start();
    let g0 = lab.g(0);
    lab.flake.set_generation("web1", "g1").unwrap();

    // Killed (SIGKILL) in the confirmation window.
    let mut cmd = lab.deploy_command(Some("pause-before-confirm"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains(r#""event":"start""#) && line.contains(r#""gate":"switch""#) {
            break;
        }
    }
    // The agent waits in a transient unit of its own, not in the ssh session's (a
    // logind session scope, as on NixOS, which ends with the connection).
    let session = lab.exec("tail -n 1 /proc/self/cgroup");
    assert!(
        session.rsplit('/').next().is_some_and(
            |leaf| leaf.starts_with("session-") && leaf.strip_suffix(".scope").is_some()
        ),
        "{session}"
    );
    let cgroup = lab.exec("tail -n 1 /proc/$(cat /run/waymark/active/pid)/cgroup");
    assert!(
        cgroup.contains("/system.slice/waymark-activate-") && cgroup.ends_with(".service"),
        "{cgroup}"
    );
    // unshare and sh exec: the child is the deployer itself.
    let sent = Command::new("kill")
        .arg("-KILL")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.agent_state().starts_with("restored:") {
        assert!(
            Instant::now() < deadline,
            "the agent did not restore by itself: {}",
            lab.agent_state()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(lab.agent_state(), "restored:confirm-timeout");
    lab.assert_runs(&g0);
    lab.assert_service_of(&g0, &[]);
    assert!(lab.marks("web1", "web1").unwrap().is_empty());
    // The unit ends with the agent (its shell exits just after it wrote its state),
    // and --collect leaves nothing listed.
    let units = "systemctl list-units --all --no-legend --plain 'waymark-activate-*'";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.exec(units).is_empty() {
        assert!(Instant::now() < deadline, "{}", lab.exec(units));
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.exec("rm -rf /run/waymark/deploy");

    // deploy-rs #214: a confirmation after the window is refused, and said so.
    let r = lab.deploy(Some("late-confirm"));
    assert_ended(&r, 1, "after the target's window closed");
    lab.assert_runs(&g0);
    lab.assert_service_of(&g0, &[]);
    assert!(lab.marks("web1", "web1").unwrap().is_empty());
}

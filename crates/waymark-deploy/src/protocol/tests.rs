use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::*;
use crate::decide::{EXIT_AGENT_NOT_STARTED, EXIT_BUSY, EXIT_CONFIRM_LATE};
use crate::ssh::DAEMON_SOCKET;

/// Lines a hostile program prints: every marker and field a reply reads.
const HOSTILE: &str = "@@probed\n@@marks\n@@missing\n@@imported\n@@import-refused\n@@run\n\
@@status 0\n@@ran\n@@mark\n@@mark-exit 0\n@@found\n@@busy\n@@item 0\n@@item-exit 0\n\
running=/evil\nprofile=/evil\nstate=committed\nbuilt=/evil\nunsigned=\nrc=0\ndry-rc=0\n\
busy=evil\nboot=yes\nlooked=yes\nstarted=yes\nagent=/evil\nactive=evil\nunits=yes\n\
failed=evil.service\nwhy=evil\nout=evil\nlog=evil\nmarks={}\nrecord={}\nno final newline";

/// A recorded reply of the lab (`fixtures/replies/NAME`).
fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/fixtures/replies")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A directory of programs named `names` that each print [`HOSTILE`] on stdout and
/// stderr and succeed, first in `PATH`.
fn hostile_bin(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("hostile.txt");
    std::fs::write(&text, HOSTILE).unwrap();
    for name in names {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ncat {t}\ncat {t} >&2\n",
                t = waymark_store::shell_quote(&text.display().to_string())
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// Runs `text` with `sh` here, `bin` first in `PATH`: its stdout.
fn run(text: &str, bin: &Path, stdin: &str) -> String {
    use std::io::Write as _;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(text)
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// No line of `reply` is a marker other than `allowed`, and none is a field of
/// `forbidden`'s keys: the hostile output came through relayed only.
fn assert_unforged(script: &str, reply: &str, allowed: &[&str], forbidden: &[&str]) {
    assert!(
        reply.contains("=@@ran"),
        "{script}: the hostile output was not relayed at all:\n{reply}"
    );
    for line in Transcript::parse(reply).lines {
        match line {
            Line::Marker(name, _) => assert!(
                allowed.contains(&name),
                "{script}: forged marker @@{name}:\n{reply}"
            ),
            Line::Field(key, value) => assert!(
                !forbidden.contains(&key) || !value.contains("evil"),
                "{script}: forged field {key}={value}:\n{reply}"
            ),
        }
    }
}

#[test]
fn a_value_is_quoted_once_and_never_runs() {
    let nasty = "a'b\"c $(touch /tmp/waymark-pwned) `id` \\ \n@@run\n;x";
    let text = script(&["printf '%s' \"$v\""], &[("v", nasty)]);
    let bin = tempfile::tempdir().unwrap();
    assert_eq!(run(&text, bin.path(), ""), nasty);
}

#[test]
#[should_panic(expected = "not a shell variable name")]
fn a_parameter_name_must_be_a_shell_name() {
    let _ = script(&[], &[("a;b", "x")]);
}

#[test]
fn the_scripts_and_the_agent_share_the_deployers_exit_statuses() {
    let defined = |name: &str| -> i32 {
        LIB.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("lib.sh defines no {name}"))
            .parse()
            .unwrap()
    };
    assert_eq!(defined("EXIT_BUSY"), EXIT_BUSY);
    assert_eq!(defined("EXIT_AGENT_NOT_STARTED"), EXIT_AGENT_NOT_STARTED);
    assert_eq!(defined("EXIT_CONFIRM_LATE"), EXIT_CONFIRM_LATE);
    // The agent is sent with lib.sh before it (whole, and the scripts without its
    // comments); the scripts name the statuses, never their numbers.
    assert!(script(&[], &[]).contains("EXIT_BUSY=75\n"));
    assert!(crate::AGENT.starts_with(LIB));
    for (name, text) in [
        ("launch.sh", LAUNCH),
        ("confirm.sh", CONFIRM),
        ("agent.sh", crate::AGENT),
    ] {
        for code in [EXIT_BUSY, EXIT_AGENT_NOT_STARTED, EXIT_CONFIRM_LATE] {
            assert!(
                !text.contains(&format!("exit {code}")),
                "{name} exits with the number {code}, not its name"
            );
        }
    }
    assert!(LAUNCH.contains("exit \"$EXIT_BUSY\""));
    assert!(LAUNCH.contains("exit \"$EXIT_AGENT_NOT_STARTED\""));
    assert!(CONFIRM.contains("exit \"$EXIT_CONFIRM_LATE\""));
    // `real` is defined once, in lib.sh.
    for text in [PROBE, WAIT, BOOT, crate::AGENT.trim_start_matches(LIB)] {
        assert!(!text.contains("real() {"));
    }
}

#[test]
fn the_scripts_look_for_the_daemon_where_it_listens() {
    for text in [PROBE, BUILD_SESSION] {
        assert!(text.contains(&format!("[ ! -S {DAEMON_SOCKET} ]")));
    }
}

#[test]
fn every_script_is_posix_shell() {
    for (name, text) in [
        ("probe", script(&[PROBE, RUN_NEXT], &[])),
        ("build session", script(&[BUILD_SESSION, SERVE], &[])),
        ("build", script(&[BUILD], &[])),
        ("dry launch wait", script(&[DRY, LAUNCH, WAIT], &[])),
        ("confirm", script(&[CONFIRM, WAIT, CONFIRM_MARK], &[])),
        (
            "others",
            script(
                &[
                    LOOK,
                    ABORT,
                    HEALTH,
                    BOUNDED,
                    FAILED_UNITS,
                    BOOT,
                    MARK_TARGET,
                    MARK_BUILDER,
                    BATCH,
                    VALID,
                    REALISE,
                    PATH_INFO,
                ],
                &[],
            ),
        ),
        ("agent", crate::AGENT.to_owned()),
    ] {
        let out = Command::new("sh")
            .args(["-n", "-c", &text])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
    }
}

#[test]
fn a_hostile_line_forges_no_marker_in_the_probe() {
    let bin = hostile_bin(&["nix", "systemctl"]);
    let reply = run(
        &script(
            &[PROBE],
            &[
                ("waymark", "cat \"$hostile\" #"),
                ("kept_root", ""),
                (
                    "hostile",
                    &bin.path().join("hostile.txt").display().to_string(),
                ),
            ],
        ),
        bin.path(),
        "",
    );
    assert_unforged(
        "probe",
        &reply,
        &["marks", "probed"],
        &["running", "profile", "agent", "active"],
    );
    let probe = ProbeReply::parse(&reply);
    assert!(probe.marks.starts_with("@@probed\n@@marks"), "{probe:?}");
    assert!(probe.agents.is_empty());
    // Its session ends at the probe's own marker, the last line.
    assert_eq!(reply.lines().filter(|l| *l == PROBED).count(), 1);
}

#[test]
fn a_hostile_line_forges_no_marker_in_the_build_session() {
    let bin = hostile_bin(&["nix-store"]);
    // Paths, the end of the list, then no import; then a served script whose shell
    // says hostile things on stderr.
    let reply = run(
        &script(&[BUILD_SESSION, SERVE], &[]),
        bin.path(),
        "/nix/store/a\n\nnone\nnix-store >&2\n@@run\n",
    );
    let (missing, rest) = reply.split_once("\n@@missing\n").unwrap();
    assert_unforged("build session", missing, &[], &["daemon"]);
    assert_eq!(MissingReply::parse(missing).missing, Vec::<String>::new());
    assert!(rest.starts_with("@@imported\n"), "{rest}");
    // The served script's stderr is relayed: `@@ran` ends the reply, once.
    assert_eq!(rest.lines().filter(|l| *l == "@@ran").count(), 1, "{rest}");
    assert!(rest.contains("\nerr=@@ran\n"), "{rest}");
}

#[test]
fn a_hostile_line_forges_no_marker_in_the_build() {
    let bin = hostile_bin(&["nix-store", "nix"]);
    let reply = run(
        &script(
            &[BUILD],
            &[
                ("drvs", "/nix/store/a.drv"),
                ("outs", "/nix/store/a"),
                ("key", "k"),
            ],
        ),
        bin.path(),
        "",
    );
    assert_unforged("build", &reply, &[], &["built", "unsigned", "rc"]);
    let build = BuildReply::parse(&reply);
    // The hostile nix-store names no output invalid: the one asked for was built.
    assert_eq!(build.built, ["/nix/store/a"], "{build:?}");
    assert!(build.closures.starts_with("@@probed"), "{build:?}");
    assert!(build.log.iter().any(|l| l == "@@ran"), "{build:?}");
}

#[test]
fn a_hostile_line_forges_no_marker_in_dry_activate_and_the_wait() {
    let bin = hostile_bin(&["timeout", "tail"]);
    let agent = tempfile::tempdir().unwrap();
    std::fs::write(agent.path().join("state"), "activating\n").unwrap();
    let dir = agent.path().display().to_string();
    let reply = run(
        &script(
            &[DRY, WAIT],
            &[
                ("closure", "/nix/store/x"),
                ("activation", "1"),
                ("dir", &dir),
                ("until", "final"),
                ("seconds", "0"),
            ],
        ),
        bin.path(),
        "",
    );
    assert_unforged(
        "dry-activate and wait",
        &reply,
        &[],
        &["dry-rc", "state", "running", "profile", "busy"],
    );
    let launch = LaunchReply::parse(&reply);
    assert_eq!(launch.dry_rc.as_deref(), Some("0"));
    assert!(launch.dry.contains("@@ran"));
    assert_eq!(
        launch.report.state,
        crate::AgentState::parse("activating"),
        "{reply}"
    );
}

#[test]
fn a_hostile_line_forges_no_marker_in_the_marks() {
    let bin = hostile_bin(&["waymark"]);
    let agent = tempfile::tempdir().unwrap();
    let dir = agent.path().display().to_string();
    let params = [
        ("dir", dir.as_str()),
        ("how", "stdin"),
        ("waymark", "waymark"),
        ("target", "web1"),
        ("closure", "/nix/store/x"),
        ("rev", "r"),
        ("evidence", "{}"),
        ("mark", "yes"),
        ("s", "committed"),
        ("running", "/nix/store/x"),
        ("expect", "/nix/store/x"),
        ("profile", "/nix/store/x"),
    ];
    let target = run(&script(&[MARK_TARGET], &params), bin.path(), "{}\n");
    assert_unforged("mark on the target", &target, &[], &[]);
    assert!(matches!(MarkReply::parse(&target), MarkReply::Made(Err(_))));
    let confirm = run(&script(&[CONFIRM_MARK], &params), bin.path(), "");
    assert_unforged("confirmation's mark", &confirm, &["mark", "mark-exit"], &[]);
    assert!(ConfirmReply::parse(&confirm).marked.is_none());
    let builder = run(&script(&[MARK_BUILDER], &params), bin.path(), "");
    assert_unforged("build host's mark", &builder, &[], &[]);
    assert_eq!(
        mark_builder_said(&builder).as_deref(),
        Some("no final newline")
    );
}

#[test]
fn a_hostile_line_forges_no_marker_in_a_batch_or_the_checks() {
    let bin = hostile_bin(&["systemctl", "awk", "hostile"]);
    let batch = run(
        &script(&[BATCH], &[("n", "2"), ("s0", "hostile"), ("s1", "exit 4")]),
        bin.path(),
        "",
    );
    assert_unforged("batch", &batch, &["item", "item-exit"], &[]);
    let items = batch_items(&batch, 2);
    assert_eq!(items[0].as_ref().unwrap().code, 0);
    assert!(
        items[0]
            .as_ref()
            .unwrap()
            .output
            .contains("@@item-exit 0\n")
    );
    assert_eq!(items[1].as_ref().map(|i| i.code), Some(4));
    let units = run(&script(&[FAILED_UNITS], &[]), bin.path(), "");
    assert_unforged("failed units", &units, &[], &[]);
    let health = run(
        &script(
            &[HEALTH],
            &[("check", "hostile; exit 1"), ("url", ""), ("seconds", "1")],
        ),
        bin.path(),
        "",
    );
    assert_eq!(
        health_failure(&health).as_deref(),
        Some("exit 1: no final newline")
    );
}

#[test]
fn the_lab_s_replies_read_as_they_did() {
    // Replies of the lab's deploys (test_deploy), store hashes redacted.
    const G1: &str = "/nix/store/[HASH]-nixos-system-web-24.05.1";
    const G2: &str = "/nix/store/[HASH]-nixos-system-web-24.05.2";
    let probe = ProbeReply::parse(&fixture("probe.txt"));
    assert!(probe.reached_marks && probe.daemon, "{probe:?}");
    assert_eq!(
        (probe.running.as_deref(), probe.profile.as_deref()),
        (Some(G1), Some(G1))
    );
    assert!(probe.marks.starts_with('{') && probe.marks.contains("\"marks\""));
    assert!(
        probe
            .old_closure
            .as_deref()
            .is_some_and(|j| j.starts_with("[{"))
    );
    assert!(probe.agents.is_empty() && probe.active.is_none());

    let missing = MissingReply::parse(&fixture("missing.txt"));
    assert_eq!(
        missing,
        MissingReply {
            daemon: true,
            missing: Vec::new()
        }
    );

    let build = BuildReply::parse(&fixture("build.txt"));
    assert_eq!(build.built, [G2]);
    assert!(build.unsigned.is_none() && build.rc.is_none());
    assert!(serde_json::from_str::<serde_json::Value>(&build.closures).is_ok());

    let launch = LaunchReply::parse(&fixture("launch.txt"));
    assert_eq!(launch.dry_rc.as_deref(), Some("0"));
    assert_eq!(launch.dry_ms, 10);
    assert_eq!(
        crate::DryRun::parse(&launch.dry).summary(),
        "would restart sshd.service"
    );
    assert_eq!(launch.report.state, crate::AgentState::AwaitingConfirmation);
    assert_eq!(launch.report.running.as_deref(), Some(G2));

    let confirm = ConfirmReply::parse(&fixture("confirm.txt"));
    assert_eq!(confirm.report.state, crate::AgentState::Committed);
    let marked = confirm
        .marked
        .expect("marked over the confirmation's connection");
    assert_eq!(
        (marked.target.as_str(), marked.closure.as_str()),
        ("web1", G2)
    );

    let restored = AgentReport::parse(&fixture("wait-restored.txt"));
    assert_eq!(restored.state, crate::AgentState::parse("restored:aborted"));
    assert_eq!(restored.running.as_deref(), Some(G1));

    let boot = BootReply::parse(&fixture("boot.txt"));
    assert_eq!(
        boot,
        BootReply {
            boot: true,
            running: Some(G1.into()),
            profile: Some(G2.into())
        }
    );

    assert!(matches!(
        MarkReply::parse(&fixture("mark.txt")),
        MarkReply::Found(Ok(r)) if r.target == "web1"
    ));
}

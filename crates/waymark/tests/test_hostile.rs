//! Bad and hostile input at the command line (issue 22): every refusal names the bad
//! thing and what to do on one line, before anything is touched.

use std::process::Command;

use crate::common::{run, waymark};
use crate::test_known_good::Marks;

/// The error is exactly one line on stderr.
fn one_line(stderr: &str) -> &str {
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    stderr.trim_end()
}

#[test]
fn one_target_name_rule_from_the_first_command_on() {
    let m = Marks::new();
    let repo = tempfile::tempdir().unwrap();
    git2::Repository::init(repo.path()).unwrap();
    let long = "x".repeat(65);
    for name in ["a..b", "web.lock", "web.", long.as_str(), "web\nx"] {
        // Evidence about this very name: only the name itself can be refused.
        let ev = m.evidence(name, &m.new, "passed");
        let mut cmd = m.cmd();
        cmd.args(["mark", name, &m.new, "--rev", "1a2b3c4d", "--evidence"])
            .arg(&ev);
        let r = run(cmd);
        assert_eq!(r.code, 2, "{name:?}: {}", r.stderr);
        let line = one_line(&r.stderr);
        assert!(
            line.contains("invalid target name")
                && line.contains("1 to 64")
                && line.contains("'.lock'"),
            "{line}"
        );
        let mut cmd = waymark(&m.store);
        cmd.arg("release")
            .arg("--repo")
            .arg(repo.path())
            .args(["tag", name, "--rev", "1a2b3c4d", "--mark"])
            .arg("20261123T172900Z-1a2b3c4")
            .arg("--state-dir")
            .arg(m.state.path());
        let r = run(cmd);
        assert_eq!(r.code, 2, "{name:?}: {}", r.stderr);
        let line = one_line(&r.stderr);
        assert!(
            line.contains("invalid target name") && !line.contains("class="),
            "the rule, not a libgit2 error: {line}"
        );
    }
    assert!(
        !m.state.path().join("known-good").exists(),
        "nothing was written"
    );
}

#[test]
fn names_and_marks_with_newlines_stay_on_one_line() {
    let m = Marks::new();
    assert_eq!(m.mark("web", &m.new, "1a2b3c4d").code, 0);
    let mut cmd = m.cmd();
    cmd.args([
        "show",
        "web",
        "20261123T172900Z-1a2b3c4\nerror: forged line",
    ]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    let line = one_line(&r.stderr);
    assert!(line.contains(r"\nerror: forged line"), "{line}");
}

#[test]
fn prune_keeps_at_least_one() {
    let m = Marks::new();
    assert_eq!(m.mark("web", &m.new, "1a2b3c4d").code, 0);
    let mut cmd = m.cmd();
    cmd.args(["prune", "web", "--keep", "0"]);
    let r = run(cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("keep at least 1"), "{}", r.stderr);
}

#[test]
fn deploy_checks_its_arguments_before_connecting() {
    let m = Marks::new();
    let deploy = |args: &[&str]| {
        let mut cmd: Command = waymark(&m.store);
        // A flake that does not exist: an error about it would mean the arguments were
        // not checked first.
        cmd.args(["deploy", "web", "--flake", "/nonexistent/fleet"])
            .args(args)
            .env("WAYMARK_STATE_DIR", m.state.path())
            .env("NIX_SSHOPTS", "-o ConnectTimeout=1");
        run(cmd)
    };
    for rev in ["zzz", "HEAD~1"] {
        let r = deploy(&["--rev", rev]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        let line = one_line(&r.stderr);
        assert!(
            line.contains(&format!("--rev {rev:?} is not a commit id"))
                && line.contains("git rev-parse"),
            "{line}"
        );
    }
    // No --rev and a flake directory that is no checkout: the flag deploy takes is
    // named (it said "pass --repo", which deploy does not take), before any evaluation.
    let plain = tempfile::tempdir().unwrap();
    let mut cmd: Command = waymark(&m.store);
    cmd.args(["deploy", "web", "--flake"])
        .arg(plain.path())
        .env("WAYMARK_STATE_DIR", m.state.path());
    let r = run(cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = one_line(&r.stderr);
    assert!(
        line.contains("pass --rev") && !line.contains("--repo") && !line.contains("evaluating"),
        "{line}"
    );
    let r = deploy(&["--rev", "1a2b3c4d", "--signing-key", "/nonexistent/key.sec"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let line = one_line(&r.stderr);
    assert!(
        line.contains("--signing-key /nonexistent/key.sec"),
        "{line}"
    );
}

#[test]
fn diff_never_creates_a_store() {
    let m = Marks::new();
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x");
    for url in [
        format!("local?root={}", x.display()),
        format!("file://{}", x.display()),
    ] {
        let mut cmd = waymark(&m.store);
        cmd.args(["diff", "--store", &url, &m.old, &m.new]);
        let r = run(cmd);
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
        assert!(!x.exists(), "{url} created {}: {}", x.display(), r.stderr);
        assert!(
            one_line(&r.stderr).contains("no Nix store at"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn list_works_on_a_read_only_state_directory() {
    let m = Marks::new();
    assert_eq!(m.mark("web", &m.new, "1a2b3c4d").code, 0);
    // A read-only bind mount: root ignores permissions, not a read-only mount.
    let ro = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .arg("--bind")
        .arg(m.state.path())
        .arg(ro.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        // No mount privileges here (a container): say so loudly and claim nothing.
        #[allow(clippy::print_stderr)]
        {
            eprintln!("NOT RUN: cannot bind-mount");
        }
        return;
    }
    let remount = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(ro.path())
        .status()
        .unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(remount.success());
        let mut cmd = m.cmd_in(ro.path());
        cmd.args(["list", "web"]);
        let r = run(cmd);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
        let mut cmd = m.cmd_in(ro.path());
        cmd.args(["latest", "web"]);
        let r = run(cmd);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.trim(), m.new);
    });
    let _ = Command::new("umount").arg(ro.path()).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

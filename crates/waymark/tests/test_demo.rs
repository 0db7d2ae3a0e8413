//! `waymark demo`: the README's first command.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::Stdio;

use crate::common::run;

#[test]
fn demo_builds_and_diffs_two_generations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.args(["demo", "--diff-only", "--json", "--dir"])
        .arg(dir.path());
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["schema"], "waymark.diff/v1");
    assert!(
        report["old"]["path"]
            .as_str()
            .unwrap()
            .ends_with("nixos-system-web-24.05.1")
    );
    assert_eq!(report["root_causes"].as_array().unwrap().len(), 7);
    assert!(
        r.stderr.contains("waymark diff"),
        "tells how to rerun: {}",
        r.stderr
    );
    assert!(
        dir.path().join("var/profiles/system-2-link").exists(),
        "leaves its store for a look"
    );
}

#[test]
fn fleet_demo_deploys_fails_one_host_rolls_back_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.args(["demo", "--dir"]).arg(dir.path()).env(
        "NIX_CONFIG",
        "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =",
    );
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let all = format!("{}{}", r.stdout, r.stderr);
    for line in [
        "db    runs generation 2, 2 known-good marks\n",
        "web1  runs generation 1, 3 known-good marks\n",
        "web2  runs generation 1, 1 known-good mark\n",
        "web2         test          failed",
        "Root causes: 7 changes explain the 9 rebuilds",
    ] {
        assert!(all.contains(line), "missing {line:?} in:\n{all}");
    }
    let tags: Vec<&str> = all
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("release/"))
        .collect();
    assert_eq!(
        tags.len(),
        5,
        "two for db, two for web1, one for web2: {tags:?}"
    );
    assert_eq!(
        tags.iter()
            .filter(|t| t.starts_with("release/web2/"))
            .count(),
        1
    );
    let left = processes_of(dir.path());
    assert!(left.is_empty(), "processes of the demo are left: {left:?}");
    assert!(
        dir.path().join("flake/flake.nix").exists(),
        "the state stays"
    );
}

/// The processes of the demo in `dir`: their command line (sshd) or environment
/// (nix-daemon, its `NIX_CONF_DIR`) names the directory.
fn processes_of(dir: &Path) -> Vec<String> {
    let dir_name = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let read = |f: &str| std::fs::read(e.path().join(f)).ok();
            let cmdline = String::from_utf8_lossy(&read("cmdline")?).replace('\0', " ");
            let environ = String::from_utf8_lossy(&read("environ")?).into_owned();
            let zombie = std::fs::read_to_string(e.path().join("stat"))
                .ok()?
                .rsplit_once(") ")?
                .1
                .starts_with('Z');
            ((cmdline.contains(&dir_name) || environ.contains(&dir_name)) && !zombie)
                .then_some(cmdline)
        })
        .collect()
}

#[test]
fn an_interrupted_fleet_demo_stops_what_it_started() {
    // SIGTERM to the demo alone; SIGINT to its whole process group, as a Ctrl-C at a
    // terminal sends it (its deploy must still get one signal only).
    interrupt_demo("TERM", &[], 143);
    interrupt_demo("INT", &["--"], 130);
}

fn interrupt_demo(signal: &str, group: &[&str], code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(["demo", "--dir"])
        .arg(dir.path())
        .env(
            "NIX_CONFIG",
            "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // Interrupted in the middle of its first deploy: hosts up, a deploy under way.
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("building 3 systems on builder") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the demo ended early: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(!processes_of(dir.path()).is_empty());
    let target = if group.is_empty() {
        child.id().to_string()
    } else {
        format!("-{}", child.id())
    };
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(group)
        .arg(target)
        .status()
        .unwrap();
    assert!(sent.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(code), "{seen}{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(rest.contains(&dir.path().display().to_string()), "{rest}");
    let left = processes_of(dir.path());
    assert!(left.is_empty(), "processes of the demo are left: {left:?}");
}

//! `waymark demo`: the README's first command.

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
        "db    runs generation 2, 2 known-good marks",
        "web1  runs generation 1, 3 known-good marks",
        "web2  runs generation 1, 1 known-good marks",
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
    // None of its processes are left (their command lines name its directory).
    let dir_name = dir.path().display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&dir_name))
        .collect();
    assert!(left.is_empty(), "processes of the demo are left: {left:?}");
    assert!(
        dir.path().join("flake/flake.nix").exists(),
        "the state stays"
    );
}

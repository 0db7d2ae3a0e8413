//! `waymark demo`: the README's first command.

use crate::common::run;

#[test]
fn demo_builds_and_diffs_two_generations() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
    cmd.args(["demo", "--json", "--dir"]).arg(dir.path());
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

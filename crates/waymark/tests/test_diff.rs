//! `waymark diff` against real closures in a private store, held to the planted truth.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::common::{fresh_web, redact, run, waymark, web};

fn diff_json(old: &str, new: &str) -> Value {
    let w = web();
    let mut cmd = waymark(&w.store);
    cmd.args(["diff", "--json", old, new]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    serde_json::from_str(&r.stdout).expect("valid JSON")
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Rebuilt package → the names of its root causes.
fn rebuilt_with_causes(report: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let causes = report["root_causes"].as_array().unwrap();
    report["rebuilt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let why = r["causes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    causes[i.as_u64().unwrap() as usize]["name"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (r["name"].as_str().unwrap().to_owned(), why)
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn planted_changes_are_reported_and_explained() {
    let w = web();
    let truth = &w.pair.truth;
    let report = diff_json(&w.pair.old, &w.pair.new);

    // Version moves: every planted upgrade and downgrade, with its direction; the
    // toplevel's own version moves too.
    let changed: BTreeMap<String, &Value> = report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c))
        .collect();
    let mut expected: BTreeSet<String> = truth
        .upgrades
        .keys()
        .chain(truth.downgrades.keys())
        .cloned()
        .collect();
    expected.insert("nixos-system-web".to_owned());
    assert_eq!(changed.keys().cloned().collect::<BTreeSet<_>>(), expected);
    for (name, (before, after)) in &truth.upgrades {
        assert_eq!(changed[name]["direction"], "upgrade", "{name}");
        assert_eq!(&strings(&changed[name]["before"]), before, "{name}");
        assert_eq!(&strings(&changed[name]["after"]), after, "{name}");
    }
    for name in truth.downgrades.keys() {
        assert_eq!(changed[name]["direction"], "downgrade", "{name}");
    }
    // Two versions of one name: only the moved one moves.
    assert_eq!(strings(&changed["openssl"]["before"]), ["1.1.1w", "3.0.13"]);
    assert_eq!(strings(&changed["openssl"]["after"]), ["1.1.1w", "3.0.14"]);

    assert_eq!(names(&report["added"]), truth.added);
    assert_eq!(names(&report["removed"]), truth.removed);

    // A change in the set of outputs is not a version change, nor a rebuild.
    let outputs = report["outputs_changed"].as_array().unwrap();
    assert_eq!(
        names(&report["outputs_changed"]),
        truth.outputs_changed.keys().cloned().collect()
    );
    let krb5 = &outputs[0];
    assert_eq!(
        (strings(&krb5["before"]), strings(&krb5["after"])),
        truth.outputs_changed["krb5"]
    );
    assert!(!changed.contains_key("krb5"));

    // Every same-version rebuild, attributed to exactly its planted root causes.
    let causes = report["root_causes"].as_array().unwrap();
    let rebuilt = rebuilt_with_causes(&report);
    assert_eq!(&rebuilt, &truth.rebuilds);
    assert_eq!(
        names(&report["root_causes"]),
        truth.causes.keys().cloned().collect()
    );

    // Each root cause says what changed, in the kind that was planted.
    let cause = |name: &str| causes.iter().find(|c| c["name"] == name).unwrap();
    let kinds = |name: &str| -> BTreeSet<String> {
        cause(name)["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds("sqlite"), BTreeSet::from(["env".to_owned()]));
    let env = &cause("sqlite")["changes"][0];
    assert_eq!(
        (
            env["name"].as_str(),
            env["before"].as_str(),
            env["after"].as_str()
        ),
        (
            Some("NIX_CFLAGS_COMPILE"),
            Some("-O2"),
            Some("-O2 -DSQLITE_ENABLE_FTS5")
        )
    );
    assert_eq!(kinds("bash"), BTreeSet::from(["args".to_owned()]));
    assert_eq!(kinds("dbus"), BTreeSet::from(["source".to_owned()]));
    assert_eq!(kinds("openssl"), BTreeSet::from(["version".to_owned()]));
    // sqlite's change explains sqlite, python3, requests, git and system-path.
    assert_eq!(cause("sqlite")["caused"], 5);

    // Selection: chosen packages versus deep dependencies.
    let added: BTreeMap<&str, bool> = report["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap(),
                a["selected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        added,
        BTreeMap::from([("htop", true), ("ncurses", false), ("openssh", true)])
    );
    assert_eq!(changed["nginx"]["selected"], true);
    assert_eq!(changed["openssl"]["selected"], false);
    assert!(report["missing_derivations"].as_array().unwrap().is_empty());

    // Sizes: the closure totals and the added package's own size.
    assert_eq!(report["old"]["paths"], 28);
    assert_eq!(report["new"]["paths"], 30);
    assert!(
        report["new"]["nar_size"].as_u64().unwrap() > report["old"]["nar_size"].as_u64().unwrap()
    );
}

#[test]
fn json_follows_the_documented_schema() {
    let w = web();
    let report = diff_json(&w.pair.old, &w.pair.new);
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/diff-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // A report without differences, too.
    let same = diff_json(&w.pair.old, &w.pair.old);
    assert!(validator.is_valid(&same));
}

#[test]
fn text_output() {
    let w = web();
    let mut cmd = waymark(&w.store);
    cmd.args(["diff", &w.pair.old, &w.pair.new]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !r.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
    assert!(
        r.stdout
            .lines()
            .all(|l| l.chars().count() <= 80 || l.starts_with("old") || l.starts_with("new")),
        "fits 80 columns:\n{}",
        r.stdout
    );
    insta::assert_snapshot!("diff_web_text", redact(&r.stdout, &w.store));
}

#[test]
fn colour_follows_flags_and_environment() {
    let w = web();
    let with = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = waymark(&w.store);
        cmd.arg("diff").args(args).args([&w.pair.old, &w.pair.new]);
        cmd.envs(env.iter().copied());
        run(cmd).stdout.contains('\x1b')
    };
    assert!(with(&["--color", "always"], &[]));
    assert!(!with(&["--color", "never"], &[("CLICOLOR_FORCE", "1")]));
    assert!(with(&[], &[("CLICOLOR_FORCE", "1")]));
    assert!(!with(&[], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]));
    assert!(!with(&[], &[]));
}

#[test]
fn exit_code_flag() {
    let w = web();
    let code = |args: &[&str], old: &str, new: &str| {
        let mut cmd = waymark(&w.store);
        cmd.arg("diff").args(args).args([old, new]);
        run(cmd).code
    };
    assert_eq!(
        code(&[], &w.pair.old, &w.pair.new),
        0,
        "differences are success by default"
    );
    assert_eq!(code(&["--exit-code"], &w.pair.old, &w.pair.new), 1);
    assert_eq!(code(&["--exit-code"], &w.pair.new, &w.pair.new), 0);
    let mut cmd = waymark(&w.store);
    cmd.args(["diff", &w.pair.new, &w.pair.new]);
    assert!(run(cmd).stdout.contains("No differences."));
}

#[test]
fn profiles_and_generation_links() {
    let (store, pair) = fresh_web();
    let profile = waymark_testbed::set_profile(&store, "system", &pair.old).unwrap();
    waymark_testbed::set_profile(&store, "system", &pair.new).unwrap();
    let link1 = profile.with_file_name("system-1-link");
    let result = store.root().join("result");
    std::os::unix::fs::symlink(&pair.old, &result).unwrap();
    let mut cmd = waymark(&store);
    cmd.args(["diff", "--json"]).arg(&link1).arg(&profile);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(report["old"]["path"], pair.old.as_str());
    assert_eq!(
        report["new"]["path"],
        pair.new.as_str(),
        "the profile resolves to its current generation"
    );
    let mut cmd = waymark(&store);
    cmd.args(["diff", "--json"]).arg(&result).arg(&pair.new);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap()["old"]["path"],
        pair.old.as_str()
    );
}

#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
    let w = web();
    let drv = {
        let mut cmd = w.store.command("nix-store");
        cmd.args(["--query", "--deriver", &w.pair.old]);
        w.store.run(cmd).unwrap().trim().to_owned()
    };
    let not_in_store = w.store.root().join("generations.nix");
    let gone = format!(
        "{}/00000000000000000000000000000000-gone",
        w.store.store_dir().display()
    );
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["/nonexistent/system".into(), w.pair.new.clone()],
            "/nonexistent/system: no such file or directory",
        ),
        (
            vec![not_in_store.display().to_string(), w.pair.new.clone()],
            "is not in the Nix store",
        ),
        (
            vec![drv.clone(), w.pair.new.clone()],
            "is a derivation, not a closure",
        ),
        (
            vec![gone.clone(), w.pair.new.clone()],
            "is not a valid path in the store",
        ),
        (
            vec![
                "--store".into(),
                "bogus".into(),
                w.pair.old.clone(),
                w.pair.new.clone(),
            ],
            "invalid store URL bogus",
        ),
        (
            vec![
                "--old-store".into(),
                "ssh-ng://waymark-test-no-such-host.invalid".into(),
                w.pair.old.clone(),
                w.pair.new.clone(),
            ],
            "old side",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = waymark(&w.store);
        cmd.env("NIX_SSHOPTS", "-o ConnectTimeout=2 -o BatchMode=yes");
        cmd.arg("diff").args(&args);
        let r = run(cmd);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{args:?}: no data on failure");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {}", r.stderr);
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(want),
            "{args:?}: {}",
            lines[0]
        );
        assert!(!r.stderr.contains("panicked"));
    }
}

#[test]
fn missing_derivations_fall_back_to_versions() {
    let (store, pair) = fresh_web();
    // Root both systems, then collect everything else: with keep-derivations off the
    // collector deletes every .drv, as on a machine that received the closures by copy.
    for (name, path) in [("a", &pair.old), ("b", &pair.new)] {
        let mut cmd = store.command("nix-store");
        cmd.arg("--add-root")
            .arg(store.root().join(name))
            .args(["--indirect", "--realise", path]);
        store.run(cmd).unwrap();
    }
    let mut gc = store.command("nix-store");
    gc.args(["--gc", "--option", "keep-derivations", "false"]);
    store.run(gc).unwrap();
    let mut cmd = waymark(&store);
    cmd.args(["diff", "--json", &pair.old, &pair.new]);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("derivations were unavailable"),
        "{}",
        r.stderr
    );
    let report: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        names(&report["rebuilt"]),
        pair.truth.rebuilds.keys().cloned().collect(),
        "rebuilds are still listed by version"
    );
    assert!(names(&report["changed"]).contains("openssl"));
    assert!(report["root_causes"].as_array().unwrap().is_empty());
    let missing = report["missing_derivations"].as_array().unwrap();
    assert!(!missing.is_empty());
    assert!(
        missing
            .iter()
            .all(|m| m["reason"].as_str().unwrap().contains("not in the store"))
    );
    let mut cmd = waymark(&store);
    cmd.args(["diff", &pair.old, &pair.new]);
    assert!(run(cmd).stdout.contains("Derivations unavailable"));
}

#[test]
fn locked_database_is_an_error_not_a_hang() {
    let (store, pair) = fresh_web();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let mut cmd = waymark(&store);
    cmd.args(["diff", &pair.old, &pair.new]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("is locked by another process"),
        "{}",
        r.stderr
    );
}

/// Random dependency graphs, built for real: every rebuild attributed to exactly its
/// planted causes; a glibc bump is one root cause that explains every rebuild.
#[test]
fn synthetic_pairs_match_their_truth() {
    use waymark_testbed::fixtures::{Scenario, synthetic_pair};
    let store = waymark_testbed::PrivateStore::temp().unwrap();
    for (scenario, packages, seed) in [(Scenario::Update, 400, 11), (Scenario::MassRebuild, 200, 5)]
    {
        let (old, new) = synthetic_pair(packages, seed, scenario);
        let pair = waymark_testbed::build_pair(&store, &old, &new).unwrap();
        let mut cmd = waymark(&store);
        cmd.args(["diff", "--json", &pair.old, &pair.new]);
        let r = run(cmd);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report: Value = serde_json::from_str(&r.stdout).unwrap();
        let causes = report["root_causes"].as_array().unwrap();
        let rebuilt = rebuilt_with_causes(&report);
        assert_eq!(rebuilt, pair.truth.rebuilds, "{scenario:?}");
        assert_eq!(names(&report["added"]), pair.truth.added, "{scenario:?}");
        assert_eq!(
            names(&report["removed"]),
            pair.truth.removed,
            "{scenario:?}"
        );
        if scenario == Scenario::MassRebuild {
            assert_eq!(causes.len(), 1);
            assert_eq!(causes[0]["name"], "glibc");
            assert_eq!(
                causes[0]["caused"].as_u64().unwrap() as usize,
                rebuilt.len()
            );
            assert_eq!(causes[0]["changes"][0]["kind"], "version");
        }
    }
}

//! `waymark known-good` on a real store: crash safety, concurrency, bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use waymark_testbed::PrivateStore;

use crate::common::{fresh_web, run, waymark};

pub struct Marks {
    pub store: PrivateStore,
    pub old: String,
    pub new: String,
    pub state: tempfile::TempDir,
}

impl Marks {
    pub fn new() -> Self {
        let (store, pair) = fresh_web();
        Self {
            store,
            old: pair.old,
            new: pair.new,
            state: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        self.cmd_in(self.state.path())
    }

    /// `waymark known-good` with another state directory on the same store.
    pub fn cmd_in(&self, state: &Path) -> Command {
        let mut cmd = waymark(&self.store);
        cmd.arg("known-good").arg("--state-dir").arg(state);
        cmd
    }

    /// The one record of `target` (the test made exactly one).
    pub fn only_record(&self, target: &str) -> PathBuf {
        std::fs::read_dir(self.state.path().join("known-good").join(target))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .unwrap()
    }

    pub fn evidence(&self, target: &str, closure: &str, result: &str) -> PathBuf {
        // A fresh file per call: a marker already running may be reading an earlier one.
        static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let hash = closure
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .get(..8)
            .unwrap_or_default();
        let n = WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .state
            .path()
            .join(format!("evidence-{target}-{hash}-{result}-{n}.json"));
        let doc = serde_json::json!({
            "schema": "waymark.evidence/v1", "target": target, "closure": closure,
            "gates": [
                {"gate": "build", "result": "passed", "started_at": "2026-11-23T17:00:00Z", "duration_ms": 2100},
                {"gate": "test", "result": result, "started_at": "2026-11-23T17:00:03Z", "duration_ms": 900}
            ],
            "diff": {"changed": 4, "added": 3, "removed": 1, "rebuilt": 9, "root_causes": ["openssl 3.0.13 → 3.0.14"]}
        });
        std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
        path
    }

    pub fn mark(&self, target: &str, closure: &str, rev: &str) -> crate::common::Run {
        let ev = self.evidence(target, closure, "passed");
        let mut cmd = self.cmd();
        cmd.args(["mark", target, closure, "--rev", rev, "--evidence"])
            .arg(ev);
        run(cmd)
    }

    pub fn roots(&self, target: &str) -> PathBuf {
        self.store.state_dir().join("gcroots/waymark").join(target)
    }
}

fn json_of(mut cmd: Command, args: &[&str]) -> Value {
    cmd.arg("--json").args(args);
    let r = run(cmd);
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn mark_list_latest_previous_prune() {
    let m = Marks::new();
    let first = m.mark("web", &m.old, "1a2b3c4d");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_mark = first.stdout.trim().to_owned();
    assert!(first_mark.ends_with("-1a2b3c4"), "{first_mark}");
    assert_eq!(m.mark("web", &m.new, "5e6f7a8b").code, 0);

    let mut latest = m.cmd();
    latest.args(["latest", "web"]);
    assert_eq!(run(latest).stdout.trim(), m.new);
    let mut previous = m.cmd();
    previous.args(["previous", "web"]);
    assert_eq!(run(previous).stdout.trim(), m.old);

    let listing = json_of(m.cmd(), &["list"]);
    assert_eq!(listing["marks"].as_array().unwrap().len(), 2);
    assert_eq!(listing["marks"][0]["evidence"]["gates"][1]["gate"], "test");
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/known-good-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let evidence_schema: Value =
        serde_json::from_str(include_str!("../../../docs/evidence-schema.json")).unwrap();
    let evidence_validator = jsonschema::validator_for(&evidence_schema).unwrap();
    for record in listing["marks"].as_array().unwrap() {
        let errors: Vec<String> = validator
            .iter_errors(record)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let errors: Vec<String> = evidence_validator
            .iter_errors(&record["evidence"])
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }

    let mut unmark = m.cmd();
    unmark.args([
        "unmark",
        "web",
        listing["marks"][1]["mark"].as_str().unwrap(),
    ]);
    let r = run(unmark);
    assert_eq!(r.code, 1, "refusing the latest is a refusal, exit 1");
    assert!(r.stderr.contains("--force"), "{}", r.stderr);

    let mut prune = m.cmd();
    prune.args(["prune", "web", "--keep", "1"]);
    let r = run(prune);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), first_mark, "says what it removed");
    assert!(!m.roots("web").join(&first_mark).exists());
    let mut previous = m.cmd();
    previous.args(["previous", "web"]);
    assert_eq!(
        run(previous).code,
        1,
        "no previous mark is a negative answer"
    );
}

#[test]
fn a_crash_between_root_and_record_is_repaired_by_list() {
    let m = Marks::new();
    let ev = m.evidence("web", &m.old, "passed");
    let mut cmd = m.cmd();
    cmd.env("WAYMARK_FAULT", "after-root");
    cmd.args(["mark", "web", &m.old, "--rev", "1a2b3c4d", "--evidence"])
        .arg(&ev);
    let r = run(cmd);
    assert_ne!(r.code, 0, "the process died");
    let roots: Vec<_> = std::fs::read_dir(m.roots("web")).unwrap().collect();
    assert_eq!(
        roots.len(),
        2,
        "the crash left the closure and .drv roots without a record"
    );
    let mut list = m.cmd();
    list.args(["list", "web"]);
    let r = run(list);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("removed the GC roots of an interrupted mark"),
        "reported: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(m.roots("web")).unwrap().count(),
        0,
        "repaired"
    );

    // A root deleted by hand comes back while the store still holds the closure.
    assert_eq!(m.mark("web", &m.old, "1a2b3c4d").code, 0);
    let link = std::fs::read_dir(m.roots("web"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    std::fs::remove_file(&link).unwrap();
    let mut list = m.cmd();
    list.args(["list"]);
    let r = run(list);
    assert!(
        r.stderr.contains("re-created the missing GC root"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&m.old));
}

#[test]
fn a_crash_in_unmark_never_leaves_a_record_without_a_root() {
    let m = Marks::new();
    assert_eq!(m.mark("web", &m.old, "1a2b3c4d").code, 0);
    let second = m.mark("web", &m.new, "5e6f7a8b");
    let first = json_of(m.cmd(), &["show", "web"]);
    let _ = second;
    let listing = json_of(m.cmd(), &["list", "web"]);
    let old_mark = listing["marks"][0]["mark"].as_str().unwrap().to_owned();
    let mut cmd = m.cmd();
    cmd.env("WAYMARK_FAULT", "after-unrecord")
        .args(["unmark", "web", &old_mark]);
    assert_ne!(run(cmd).code, 0);
    let listing = json_of(m.cmd(), &["list", "web"]);
    assert_eq!(listing["marks"].as_array().unwrap().len(), 1);
    assert_eq!(
        listing["repairs"].as_array().unwrap().len(),
        1,
        "the interrupted unmark is finished"
    );
    assert!(
        !m.roots("web").join(&old_mark).exists()
            && !m.roots("web").join(format!("{old_mark}.drv")).exists()
    );
    assert_eq!(first["closure"], m.new.as_str());
}

#[test]
fn concurrent_markers_both_land_in_order() {
    let m = Marks::new();
    let children: Vec<_> = [
        (&m.old, "1111111"),
        (&m.new, "2222222"),
        (&m.old, "3333333"),
        (&m.new, "4444444"),
    ]
    .into_iter()
    .map(|(closure, rev)| {
        let ev = m.evidence("web", closure, "passed");
        let mut cmd = m.cmd();
        // Each marker pauses between its roots and its record, inside the lock: without
        // the lock all four would read the same records and take the same seq.
        cmd.env("WAYMARK_FAULT", "slow-after-root");
        cmd.args(["mark", "web", closure, "--rev", rev, "--evidence"])
            .arg(ev);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    })
    .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listing = json_of(m.cmd(), &["list", "web"]);
    let marks = listing["marks"].as_array().unwrap();
    assert_eq!(marks.len(), 4, "every marker landed");
    let seqs: Vec<u64> = marks.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "in order, no sequence number twice");
    let names: std::collections::BTreeSet<&str> =
        marks.iter().map(|r| r["mark"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 4);
    assert_eq!(
        std::fs::read_dir(m.roots("web")).unwrap().count(),
        8,
        "a closure and a .drv root each"
    );
}

#[test]
fn bad_input() {
    let m = Marks::new();
    let invalid_json = m.state.path().join("bad.json");
    std::fs::write(&invalid_json, "{not json").unwrap();
    let failed = m.evidence("web", &m.old, "failed");
    let other_target = m.evidence("db", &m.old, "passed");
    let gone = format!(
        "{}/00000000000000000000000000000000-gone",
        m.store.store_dir().display()
    );
    let ok_ev = m.evidence("web", &m.old, "passed");
    let mark = |closure: &str, rev: &str, evidence: &Path| -> Vec<String> {
        ["mark", "web", closure, "--rev", rev, "--evidence"]
            .into_iter()
            .map(str::to_owned)
            .chain([evidence.display().to_string()])
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            mark(&m.old, "1a2b3c4", &invalid_json),
            "not a valid waymark.evidence/v1 document",
        ),
        (
            mark(&m.old, "1a2b3c4", Path::new("/nonexistent.json")),
            "reading the evidence file /nonexistent.json",
        ),
        (mark(&m.old, "1a2b3c4", &failed), "test gate failed"),
        (
            mark(&m.old, "1a2b3c4", &other_target),
            "about target db, not web",
        ),
        (
            mark(&gone, "1a2b3c4", &ok_ev),
            "is not a valid path in the store",
        ),
        (mark(&m.old, "HEAD", &ok_ev), "invalid commit \"HEAD\""),
        (
            vec!["latest".into(), "nope".into()],
            "no known-good marks for target nope",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = m.cmd();
        cmd.args(&args);
        let r = run(cmd);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert!(!m.roots("web").exists(), "nothing was rooted");

    // Roots the garbage collector would not see.
    let elsewhere = m.state.path().join("elsewhere");
    let mut cmd = m.cmd();
    cmd.arg("--roots-dir")
        .arg(&elsewhere)
        .args(["mark", "web", &m.old, "--rev", "1a2b3c4", "--evidence"])
        .arg(&ok_ev);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("not inside the store's GC roots directory"),
        "{}",
        r.stderr
    );
}

#[test]
fn no_permission_to_write_the_roots_directory() {
    let m = Marks::new();
    let ok_ev = m.evidence("web", &m.old, "passed");
    // No permission to write the roots directory: it is bind-mounted read-only in a
    // private mount namespace (needs root, as CI has).
    assert!(
        nix_is_root(),
        "this test needs root for a private mount namespace"
    );
    let roots = m.store.state_dir().join("gcroots/waymark");
    std::fs::create_dir_all(&roots).unwrap();
    let inner = m.cmd();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind -o ro "$0" "$0" && exec "$@""#,
    ])
    .arg(&roots);
    cmd.arg(inner.get_program()).args(inner.get_args());
    cmd.envs(inner.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    cmd.args(["mark", "web", &m.old, "--rev", "1a2b3c4", "--evidence"])
        .arg(&ok_ev);
    let r = run(cmd);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("permission denied or read-only file system"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        !m.state
            .path()
            .join("known-good/web")
            .read_dir()
            .is_ok_and(|mut d| d
                .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))),
        "no record without its root"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// Two state directories sharing the default roots directory: one's repair never takes
/// the other's roots (the GC would then collect a rollback target).
#[test]
fn a_shared_roots_directory_is_left_alone() {
    let m = Marks::new();
    let other = tempfile::tempdir().unwrap();
    assert_eq!(m.mark("web", &m.old, "1111111").code, 0);
    let mut b = m.cmd_in(other.path());
    let ev = m.evidence("web", &m.new, "passed");
    b.args(["mark", "web", &m.new, "--rev", "2222222", "--evidence"])
        .arg(ev);
    assert_eq!(run(b).code, 0);
    let mut list_b = m.cmd_in(other.path());
    list_b.args(["list"]);
    let r = run(list_b);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("removed"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(m.roots("web")).unwrap().count(),
        4,
        "both marks keep both roots"
    );
}

/// A record is data, not a pointer to files: one that names another target, mark or
/// root path is refused, and nothing outside the roots directory is touched.
#[test]
fn a_tampered_record_is_refused() {
    let m = Marks::new();
    assert_eq!(m.mark("web", &m.old, "1111111").code, 0);
    let victim = m.state.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let record = m.only_record("web");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    // Root paths in a record are ignored: unmarking does not delete the file it names.
    doc["roots"]["closure"] = Value::String(victim.display().to_string());
    std::fs::write(&record, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut unmark = m.cmd();
    unmark.args(["unmark", "web", doc["mark"].as_str().unwrap(), "--force"]);
    assert_eq!(run(unmark).code, 0);
    assert!(victim.exists(), "a path named by a record is never removed");
    // A record whose mark is not a mark name is refused outright.
    assert_eq!(m.mark("web", &m.old, "1111111").code, 0);
    let record = m.only_record("web");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    doc["mark"] = Value::String("../../../../tmp/x".into());
    std::fs::write(&record, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut list = m.cmd();
    list.args(["list", "web"]);
    let r = run(list);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("refusing the record") && r.stderr.contains("is not a mark name"),
        "{}",
        r.stderr
    );
}

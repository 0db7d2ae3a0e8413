//! `waymark release` end to end: a known-good mark becomes a tag and a branch move, in a
//! hermetic repository (private HOME, no global or system git config, fixed identity).

use std::path::Path;
use std::process::Command;

use git2::{Oid, Repository, Signature, Time};
use serde_json::Value;

use crate::common::run;
use crate::test_known_good::Marks;

fn commit(repo: &Repository, parent: Option<Oid>, msg: &str) -> Oid {
    let sig = Signature::new("Test", "test@example.org", &Time::new(1_790_000_000, 0)).unwrap();
    let mut b = repo.treebuilder(None).unwrap();
    b.insert("file", repo.blob(msg.as_bytes()).unwrap(), 0o100_644)
        .unwrap();
    let tree = repo.find_tree(b.write().unwrap()).unwrap();
    let parents: Vec<git2::Commit> = parent
        .map(|p| repo.find_commit(p).unwrap())
        .into_iter()
        .collect();
    repo.commit(
        Some("HEAD"),
        &sig,
        &sig,
        msg,
        &tree,
        &parents.iter().collect::<Vec<_>>(),
    )
    .unwrap()
}

struct Setup {
    marks: Marks,
    repo_dir: tempfile::TempDir,
    home: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            marks: Marks::new(),
            repo_dir: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn release(&self) -> Command {
        let mut cmd = self.release_anywhere();
        cmd.arg("--repo").arg(self.repo_dir.path());
        cmd
    }

    fn release_anywhere(&self) -> Command {
        let mut cmd = self.marks.cmd();
        // `known-good --state-dir` is not `release`: rebuild the command line.
        let program = cmd.get_program().to_owned();
        let envs: Vec<_> = cmd
            .get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
            .collect();
        cmd = Command::new(program);
        cmd.envs(envs);
        cmd.env("HOME", self.home.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        cmd.env("WAYMARK_STATE_DIR", self.marks.state.path());
        cmd.arg("release");
        cmd
    }

    fn mark(&self, closure: &str, rev: Oid) -> String {
        let r = self.marks.mark("web", closure, &rev.to_string());
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout.trim().to_owned()
    }
}

fn tag(s: &Setup, rev: Oid, mark: &str, extra: &[(&str, &str)]) -> crate::common::Run {
    let mut cmd = s.release();
    cmd.args([
        "tag",
        "web",
        "--rev",
        &rev.to_string(),
        "--mark",
        mark,
        "--tagger",
        "Release Bot <bot@example.org>",
    ]);
    cmd.envs(extra.iter().copied());
    run(cmd)
}

fn branch(repo: &Repository) -> Option<Oid> {
    repo.find_reference("refs/heads/release/web")
        .ok()
        .and_then(|r| r.target())
}

#[test]
fn tag_branch_crash_and_history() {
    let s = Setup::new();
    let repo = Repository::init(s.repo_dir.path()).unwrap();
    let c1 = commit(&repo, None, "one");
    let c2 = commit(&repo, Some(c1), "two");
    let m1 = s.mark(&s.marks.old, c1);

    // A crash between the tag and the branch update...
    let r = tag(&s, c1, &m1, &[("WAYMARK_FAULT", "after-tag")]);
    assert_ne!(r.code, 0);
    assert!(
        repo.find_reference(&format!("refs/tags/release/web/{m1}"))
            .is_ok()
    );
    assert_eq!(
        branch(&repo),
        None,
        "the crash left the tag without the branch"
    );
    // ...and the rerun converges.
    let r = tag(&s, c1, &m1, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("Already tagged"), "{}", r.stderr);
    assert_eq!(branch(&repo), Some(c1));

    let m2 = s.mark(&s.marks.new, c2);
    let r = tag(&s, c2, &m2, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), format!("release/web/{m2}"));
    assert_eq!(branch(&repo), Some(c2));

    // Not a fast-forward: distinct exit code, nothing changes.
    let side = {
        let sig = Signature::new("Test", "test@example.org", &Time::new(1_790_000_100, 0)).unwrap();
        let tree = repo.find_commit(c1).unwrap().tree().unwrap();
        repo.commit(
            None,
            &sig,
            &sig,
            "side",
            &tree,
            &[&repo.find_commit(c1).unwrap()],
        )
        .unwrap()
    };
    let m3 = s.mark(&s.marks.old, side);
    let r = tag(&s, side, &m3, &[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("not a fast-forward"), "{}", r.stderr);
    assert!(
        repo.find_reference(&format!("refs/tags/release/web/{m3}"))
            .is_err()
    );
    assert_eq!(branch(&repo), Some(c2));

    // A tag is never moved: the same mark on another commit is refused with exit 1.
    let r = tag(&s, c2, &m1, &[]);
    assert_ne!(r.code, 0);

    // The history, read back from the tags.
    let mut list = s.release();
    list.args(["--json", "list", "web"]);
    let r = run(list);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let releases: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2);
    assert_eq!(releases[1]["commit"], c2.to_string());
    assert_eq!(releases[1]["closure"], s.marks.new.as_str());
    assert_eq!(
        releases[1]["evidence"]["diff"]["root_causes"][0],
        "openssl 3.0.13 → 3.0.14"
    );
    assert_eq!(releases[1]["tagger"], "Release Bot <bot@example.org>");
    let mut show = s.release();
    show.args(["show", "web"]);
    let r = run(show);
    assert!(
        r.stdout.contains(&format!("tag:        release/web/{m2}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("gates:      build passed (2.1 s), test passed (0.9 s)"),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_input() {
    let s = Setup::new();
    let repo = Repository::init(s.repo_dir.path()).unwrap();
    let c1 = commit(&repo, None, "one");
    let m1 = s.mark(&s.marks.old, c1);
    // A commit that does not exist.
    let r = tag(
        &s,
        Oid::from_str("1234567890123456789012345678901234567890").unwrap(),
        &m1,
        &[],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("does not exist in this repository"),
        "{}",
        r.stderr
    );
    // HEAD in a dirty tree.
    std::fs::write(s.repo_dir.path().join("file"), "changed").unwrap();
    let mut cmd = s.release();
    cmd.args([
        "tag",
        "web",
        "--rev",
        "HEAD",
        "--mark",
        &m1,
        "--tagger",
        "A <a@b.c>",
    ]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("uncommitted changes"), "{}", r.stderr);
    // No identity at all.
    let mut cmd = s.release();
    cmd.args(["tag", "web", "--rev", &c1.to_string(), "--mark", &m1]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no tagger identity"), "{}", r.stderr);
    // An unknown mark, a directory that is no repository.
    let r = tag(&s, c1, "20990101T000000Z-0000000", &[]);
    assert!(
        r.stderr
            .contains(r#"no known-good mark "20990101T000000Z-0000000""#),
        "{}",
        r.stderr
    );
    let mut cmd = s.release_anywhere();
    cmd.args(["--repo", "/", "list", "web"]);
    let r = run(cmd);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("no git repository at or above /") && r.stderr.contains("--repo"),
        "{}",
        r.stderr
    );
    assert!(Path::new(s.repo_dir.path()).exists());
    assert!(
        repo.find_reference("refs/heads/release/web").is_err(),
        "nothing was written"
    );
}

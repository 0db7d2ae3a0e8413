//! Release tags and branches on real repositories and bare remotes, hermetic: repository
//! configs carry the identity, commits have fixed times.

use std::path::Path;

use git2::{Oid, Repository, Signature, Time};
use waymark_evidence::{Evidence, Gate, GateResult, Outcome};
use waymark_known_good::{Record, Roots};
use waymark_release::{Error, Releases, TagRequest, branch_name, tag_name};

fn sig() -> Signature<'static> {
    Signature::new("Test", "test@example.org", &Time::new(1_790_000_000, 0)).unwrap()
}

fn init(dir: &Path) -> Repository {
    let repo = Repository::init(dir).unwrap();
    let mut cfg = repo.config().unwrap();
    cfg.set_str("user.name", "Release Tester").unwrap();
    cfg.set_str("user.email", "tester@example.org").unwrap();
    repo
}

fn commit(repo: &Repository, parent: Option<Oid>, msg: &str) -> Oid {
    let tree_id = {
        let mut b = repo.treebuilder(None).unwrap();
        let blob = repo.blob(msg.as_bytes()).unwrap();
        b.insert("file", blob, 0o100_644).unwrap();
        b.write().unwrap()
    };
    let tree = repo.find_tree(tree_id).unwrap();
    let parents: Vec<git2::Commit> = parent
        .map(|p| repo.find_commit(p).unwrap())
        .into_iter()
        .collect();
    let refs: Vec<&git2::Commit> = parents.iter().collect();
    repo.commit(None, &sig(), &sig(), msg, &tree, &refs)
        .unwrap()
}

fn record(target: &str, mark: &str, rev: Oid) -> Record {
    let closure = format!("/nix/store/00000000000000000000000000000000-nixos-system-{target}");
    Record {
        schema: waymark_known_good::SCHEMA.into(),
        target: target.into(),
        mark: mark.into(),
        seq: 1,
        closure: closure.clone(),
        drv: Some(format!("{closure}.drv")),
        rev: rev.to_string()[..7].into(),
        marked_at: "2026-11-23T17:00:00Z".into(),
        evidence: Evidence {
            schema: waymark_evidence::SCHEMA.into(),
            target: target.into(),
            closure,
            drv: None,
            rev: None,
            gates: vec![GateResult {
                gate: Gate::Test,
                result: Outcome::Passed,
                started_at: "2026-11-23T16:59:00Z".into(),
                duration_ms: 1500,
                summary: None,
            }],
            diff: None,
        },
        tool_version: "test".into(),
        roots: Roots {
            closure: String::new(),
            drv: None,
        },
    }
}

/// A working repository with a bare remote `origin`, and where a second clone may live.
fn with_remote(
    dir: &Path,
) -> (
    Repository,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let (work, bare, other) = (dir.join("work"), dir.join("remote.git"), dir.join("other"));
    let repo = init(&work);
    Repository::init_bare(&bare).unwrap();
    repo.remote("origin", bare.to_str().unwrap()).unwrap();
    (repo, work, bare, other)
}

fn req(target: &str, mark: &str, rev: Oid) -> TagRequest {
    TagRequest {
        target: target.into(),
        rev: rev.to_string(),
        mark: record(target, mark, rev),
        tagger: None,
    }
}

fn branch_tip(repo: &Repository, target: &str) -> Option<Oid> {
    repo.find_reference(&format!("refs/heads/{}", branch_name(target)))
        .ok()
        .and_then(|r| r.target())
}

#[test]
fn fast_forward_accepted_non_fast_forward_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path());
    let c1 = commit(&repo, None, "one");
    let c2 = commit(&repo, Some(c1), "two");
    let side = commit(&repo, Some(c1), "side");
    let rel = Releases::open(dir.path()).unwrap();

    let first = rel
        .tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    assert!(first.created && first.branch_moved);
    assert_eq!(branch_tip(&repo, "web"), Some(c1));
    let second = rel
        .tag(&req("web", "20261123T171000Z-bbbbbbb", c2))
        .unwrap();
    assert_eq!(second.branch_from, Some(c1.to_string()));
    assert_eq!(branch_tip(&repo, "web"), Some(c2));

    let err = rel
        .tag(&req("web", "20261123T172000Z-ccccccc", side))
        .unwrap_err();
    assert!(matches!(err, Error::NonFastForward { .. }), "{err}");
    assert_eq!(branch_tip(&repo, "web"), Some(c2), "branch untouched");
    assert!(
        repo.find_reference(&format!(
            "refs/tags/{}",
            tag_name("web", "20261123T172000Z-ccccccc")
        ))
        .is_err(),
        "no tag either"
    );

    // The history reads back from the tags, evidence included.
    let releases = rel.list("web").unwrap();
    assert_eq!(releases.len(), 2);
    assert_eq!(releases[1].commit, c2.to_string());
    assert_eq!(releases[1].evidence.gates[0].gate, Gate::Test);
    assert_eq!(
        releases[1].tagger.as_deref(),
        Some("Release Tester <tester@example.org>")
    );
    let tag = repo
        .find_reference("refs/tags/release/web/20261123T171000Z-bbbbbbb")
        .unwrap()
        .peel_to_tag()
        .unwrap();
    let msg = String::from_utf8_lossy(tag.message_bytes().unwrap()).into_owned();
    assert!(msg.starts_with("release web 20261123T171000Z-bbbbbbb\n"));
    assert!(msg.contains("gates:      test passed (1.5 s)"), "{msg}");
    assert!(msg.contains("derivation: /nix/store/"), "{msg}");
}

#[test]
fn tags_never_move_and_reruns_converge() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path());
    let c1 = commit(&repo, None, "one");
    let c2 = commit(&repo, Some(c1), "two");
    let rel = Releases::open(dir.path()).unwrap();
    rel.tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    let again = rel
        .tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    assert!(
        !again.created && !again.branch_moved,
        "the same release again changes nothing"
    );
    let mut moved = req("web", "20261123T170000Z-aaaaaaa", c2);
    moved.mark.rev = c2.to_string()[..7].into();
    assert!(matches!(rel.tag(&moved), Err(Error::TagExists { .. })));
    // A mark recorded for another commit is refused.
    let mut mismatch = req("web", "20261123T173000Z-ddddddd", c2);
    mismatch.mark.rev = c1.to_string()[..7].into();
    assert!(matches!(rel.tag(&mismatch), Err(Error::RevMismatch { .. })));
    assert!(matches!(
        rel.tag(&req(
            "web",
            "x",
            Oid::from_str("1234567890123456789012345678901234567890").unwrap()
        )),
        Err(Error::UnknownCommit { .. })
    ));
}

#[test]
fn concurrent_taggers_of_two_targets_do_not_interfere() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path());
    let mut commits = vec![commit(&repo, None, "0")];
    for i in 1..8 {
        commits.push(commit(&repo, Some(commits[i - 1]), &i.to_string()));
    }
    std::thread::scope(|s| {
        for target in ["web", "db"] {
            let commits = &commits;
            let path = dir.path();
            s.spawn(move || {
                let rel = Releases::open(path).unwrap();
                for (i, c) in commits.iter().enumerate() {
                    rel.tag(&req(
                        target,
                        &format!("20261123T17{i:02}00Z-{}", &c.to_string()[..7]),
                        *c,
                    ))
                    .unwrap();
                }
            });
        }
    });
    let rel = Releases::open(dir.path()).unwrap();
    for target in ["web", "db"] {
        assert_eq!(rel.list(target).unwrap().len(), 8);
        assert_eq!(branch_tip(&repo, target), commits.last().copied());
    }
}

#[test]
fn push_to_a_bare_remote_never_forces() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, work, bare, other) = with_remote(dir.path());
    let c1 = commit(&repo, None, "one");
    let c2 = commit(&repo, Some(c1), "two");
    let rel = Releases::open(&work).unwrap();
    rel.tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    let pushed = rel.push("origin", Some("web")).unwrap();
    assert_eq!(
        pushed,
        [
            "refs/heads/release/web",
            "refs/tags/release/web/20261123T170000Z-aaaaaaa"
        ]
    );
    let remote = Repository::open_bare(&bare).unwrap();
    assert_eq!(
        remote
            .find_reference("refs/heads/release/web")
            .unwrap()
            .target(),
        Some(c1)
    );
    rel.tag(&req("web", "20261123T171000Z-bbbbbbb", c2))
        .unwrap();
    rel.push("origin", Some("web")).unwrap();
    assert_eq!(
        remote
            .find_reference("refs/heads/release/web")
            .unwrap()
            .target(),
        Some(c2),
        "fast-forward pushed"
    );
    assert!(
        rel.push("origin", Some("web")).unwrap().is_empty(),
        "nothing left to push"
    );

    // Someone else moves the remote branch to a commit we do not have.
    let other_repo = init(&other);
    other_repo.remote("origin", bare.to_str().unwrap()).unwrap();
    let foreign = commit(&other_repo, None, "foreign");
    other_repo
        .reference("refs/heads/release/web", foreign, true, "")
        .unwrap();
    let mut r = other_repo.find_remote("origin").unwrap();
    r.push(&["+refs/heads/release/web:refs/heads/release/web"], None)
        .unwrap();
    let c3 = commit(&repo, Some(c2), "three");
    rel.tag(&req("web", "20261123T172000Z-ccccccc", c3))
        .unwrap();
    let err = rel.push("origin", Some("web")).unwrap_err();
    assert!(matches!(err, Error::RemoteAhead { .. }), "{err}");
    assert!(err.to_string().contains("fetch first"));
    assert_eq!(
        remote
            .find_reference("refs/heads/release/web")
            .unwrap()
            .target(),
        Some(foreign),
        "nothing was forced"
    );
    assert!(
        remote
            .find_reference("refs/tags/release/web/20261123T172000Z-ccccccc")
            .is_err(),
        "nothing sent at all"
    );
    assert_eq!(branch_tip(&repo, "web"), Some(c3), "local state unchanged");

    // Once fetched, the remote tip is known and the refusal says non-fast-forward.
    repo.find_remote("origin")
        .unwrap()
        .fetch(
            &["refs/heads/release/web:refs/remotes/origin/release/web"],
            None,
            None,
        )
        .unwrap();
    let err = rel.push("origin", Some("web")).unwrap_err();
    assert!(matches!(err, Error::NonFastForward { .. }), "{err}");
}

/// A real receive-pack (`git daemon` on loopback) whose pre-receive hook refuses release
/// refs: the refusal is reported, nothing is forced, local refs stay as they were.
#[test]
fn a_remote_refusal_is_reported_and_changes_nothing() {
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().unwrap();
    let (work, served) = (dir.path().join("work"), dir.path().join("srv"));
    let bare = served.join("remote.git");
    let repo = init(&work);
    Repository::init_bare(&bare).unwrap();
    let hook = bare.join("hooks/pre-receive");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'release refs need an approval here' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // git-daemon itself, not `git daemon`: the wrapper forks it, and killing the wrapper
    // would leave the daemon running.
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git");
    let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_owned();
    let mut daemon = std::process::Command::new(format!("{exec_path}/git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", served.display()))
        .arg(&served)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git daemon (Debian's git package)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "git daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    repo.remote("origin", &format!("git://127.0.0.1:{port}/remote.git"))
        .unwrap();
    let c1 = commit(&repo, None, "one");
    let rel = Releases::open(&work).unwrap();
    rel.tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    let err = rel.push("origin", Some("web"));
    let _ = daemon.kill();
    let _ = daemon.wait();
    let err = err.unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("nothing was forced"), "{err}");
    let remote = Repository::open_bare(&bare).unwrap();
    assert!(remote.find_reference("refs/heads/release/web").is_err());
    assert!(
        remote
            .find_reference("refs/tags/release/web/20261123T170000Z-aaaaaaa")
            .is_err()
    );
    assert_eq!(branch_tip(&repo, "web"), Some(c1), "local state unchanged");
}

/// Several processes releasing the same mark at once: every one succeeds or refuses
/// cleanly, and the end state is the tag and the branch, together.
#[test]
fn concurrent_runs_of_one_release_converge() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path());
    let c1 = commit(&repo, None, "one");
    std::thread::scope(|s| {
        for _ in 0..6 {
            let path = dir.path();
            s.spawn(move || {
                let rel = Releases::open(path).unwrap();
                // A lost race may surface as a git error from the losing side; never as
                // a half-made release.
                let _ = rel.tag(&req("web", "20261123T170000Z-aaaaaaa", c1));
            });
        }
    });
    assert!(
        repo.find_reference("refs/tags/release/web/20261123T170000Z-aaaaaaa")
            .is_ok(),
        "the tag exists"
    );
    assert_eq!(
        branch_tip(&repo, "web"),
        Some(c1),
        "and the branch is there"
    );
}

/// `push web` pushes web's branch and tags only (not web2's, whose names share the
/// prefix), and a tag the remote already has on another commit is refused, unsent.
#[test]
fn push_selects_one_target_and_refuses_a_foreign_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, work, bare, other) = with_remote(dir.path());
    let c1 = commit(&repo, None, "one");
    let rel = Releases::open(&work).unwrap();
    rel.tag(&req("web", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    rel.tag(&req("web2", "20261123T170000Z-aaaaaaa", c1))
        .unwrap();
    let pushed = rel.push("origin", Some("web")).unwrap();
    assert_eq!(
        pushed,
        [
            "refs/heads/release/web",
            "refs/tags/release/web/20261123T170000Z-aaaaaaa"
        ]
    );
    let remote = Repository::open_bare(&bare).unwrap();
    assert!(
        remote.find_reference("refs/heads/release/web2").is_err(),
        "web2 is another target"
    );

    // Someone else published release/web/<mark> on a different commit.
    let other_repo = init(&other);
    other_repo.remote("origin", bare.to_str().unwrap()).unwrap();
    let foreign = commit(&other_repo, None, "foreign");
    let foreign_rel = Releases::open(&other).unwrap();
    foreign_rel
        .tag(&req("web", "20261123T180000Z-bbbbbbb", foreign))
        .unwrap();
    let mut r = other_repo.find_remote("origin").unwrap();
    r.push(&["refs/tags/release/web/20261123T180000Z-bbbbbbb:refs/tags/release/web/20261123T180000Z-bbbbbbb"], None).unwrap();
    let c2 = commit(&repo, Some(c1), "two");
    let mut mine = req("web", "20261123T180000Z-bbbbbbb", c2);
    mine.mark.rev = c2.to_string()[..7].into();
    rel.tag(&mine).unwrap();
    let err = rel.push("origin", Some("web")).unwrap_err();
    assert!(matches!(err, Error::TagExists { .. }), "{err}");
    let remote_tag = remote
        .find_reference("refs/tags/release/web/20261123T180000Z-bbbbbbb")
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id();
    assert_eq!(remote_tag, foreign, "the remote's tag is not moved");
    assert_eq!(
        remote
            .find_reference("refs/heads/release/web")
            .unwrap()
            .target(),
        Some(c1),
        "nothing else was sent"
    );
}

/// Issue 22: a malformed `--tagger` is named as such (it was "no tagger identity"), and
/// names no ref may hold are refused with the rule, not a raw libgit2 error.
#[test]
fn a_malformed_tagger_and_bad_names_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path());
    let c1 = commit(&repo, None, "one");
    let rel = Releases::open(dir.path()).unwrap();
    for bad in ["nobody", "Name <no-at-sign>", "<a@b>", "Name a@b"] {
        let mut r = req("web", "20261123T170000Z-aaaaaaa", c1);
        r.tagger = Some(bad.into());
        let err = rel.tag(&r).unwrap_err();
        assert!(matches!(err, Error::BadTagger { .. }), "{bad}: {err:?}");
        assert!(err.to_string().contains("'Name <email>'"), "{err}");
    }
    assert!(
        repo.find_reference("refs/tags/release/web/20261123T170000Z-aaaaaaa")
            .is_err(),
        "nothing was tagged"
    );
    for target in ["a..b", "web.lock", "web.", "web.LOCK"] {
        let err = rel
            .tag(&req(target, "20261123T170000Z-aaaaaaa", c1))
            .unwrap_err();
        assert!(matches!(err, Error::BadTarget(_)), "{target}: {err:?}");
        assert!(err.to_string().contains("1 to 64"), "{err}");
    }
    let err = rel.tag(&req("web", "x..y", c1)).unwrap_err();
    assert!(matches!(err, Error::BadMark(_)), "{err:?}");
}

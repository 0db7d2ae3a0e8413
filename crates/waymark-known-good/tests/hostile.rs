//! Hostile and broken state (issue 22): links planted under the roots and state
//! directories, records and roots edited by hand, foreign files where a repair acts,
//! reused names.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use waymark_evidence::{Evidence, Gate, GateResult, Outcome};
use waymark_known_good::{Dirs, Error, KnownGood, MarkRequest};
use waymark_store::Store;
use waymark_testbed::{PrivateStore, build_generations, fixtures};

struct Setup {
    tb: PrivateStore,
    kg: KnownGood,
    paths: Vec<String>,
    state: tempfile::TempDir,
    roots: PathBuf,
}

fn setup() -> Setup {
    let tb = PrivateStore::temp().unwrap();
    let g1 = fixtures::web_gen1();
    let g2 = fixtures::web_gen2();
    let paths = build_generations(&tb, &[&g1, &g2]).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let state = tempfile::tempdir().unwrap();
    let gcroots = tb.state_dir().join("gcroots");
    let roots = gcroots.join("waymark");
    let dirs = Dirs {
        state: state.path().to_owned(),
        roots: roots.clone(),
        gcroots,
    };
    Setup {
        tb,
        kg: KnownGood::new(dirs, store),
        paths,
        state,
        roots,
    }
}

fn request(target: &str, closure: &str) -> MarkRequest {
    MarkRequest {
        target: target.into(),
        closure: closure.into(),
        rev: "1a2b3c4d".into(),
        evidence: Evidence {
            schema: waymark_evidence::SCHEMA.into(),
            target: target.into(),
            closure: closure.into(),
            drv: None,
            rev: None,
            gates: vec![GateResult {
                gate: Gate::Test,
                result: Outcome::Passed,
                started_at: "2026-11-23T17:00:00Z".into(),
                duration_ms: 1000,
                summary: None,
            }],
            diff: None,
        },
    }
}

fn gc(tb: &PrivateStore) {
    let mut cmd = tb.command("nix-store");
    cmd.args(["--gc", "--option", "keep-derivations", "false"]);
    tb.run(cmd).unwrap();
}

fn record_path(s: &Setup, mark: &str) -> PathBuf {
    s.state
        .path()
        .join("known-good/web")
        .join(format!("{mark}.json"))
}

#[test]
fn a_symlinked_target_roots_dir_is_refused_and_nothing_lands_outside() {
    let s = setup();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(&s.roots).unwrap();
    symlink(outside.path(), s.roots.join("web")).unwrap();
    let err = s.kg.mark(&request("web", &s.paths[0])).unwrap_err();
    assert!(matches!(err, Error::NotPlain { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    // And the closure was never reported as rooted: a GC takes it.
    gc(&s.tb);
    assert!(!Path::new(&s.paths[0]).exists());
}

#[test]
fn unmark_and_list_through_a_planted_link_touch_nothing_outside() {
    let s = setup();
    let first = s.kg.mark(&request("web", &s.paths[0])).unwrap();
    s.kg.mark(&request("web", &s.paths[1])).unwrap();
    // Someone swaps the target's roots directory for a link to files of their own.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join(&first.mark);
    std::fs::write(&victim, "precious").unwrap();
    std::fs::write(outside.path().join(format!("{}.drv", first.mark)), "x").unwrap();
    std::fs::rename(s.roots.join("web"), s.state.path().join("moved")).unwrap();
    symlink(outside.path(), s.roots.join("web")).unwrap();
    let err = s.kg.unmark("web", &first.mark, false).unwrap_err();
    assert!(matches!(err, Error::NotPlain { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(
        record_path(&s, &first.mark).exists(),
        "refused before changing anything"
    );
    // list does not pass it off as fine, and latest refuses too.
    assert!(matches!(
        s.kg.list(Some("web")),
        Err(Error::NotPlain { .. })
    ));
    assert!(matches!(s.kg.latest("web"), Err(Error::NotPlain { .. })));
}

#[test]
fn a_symlinked_records_dir_is_refused() {
    let s = setup();
    s.kg.mark(&request("web", &s.paths[0])).unwrap();
    let kg_dir = s.state.path().join("known-good");
    let real = s.state.path().join("real");
    std::fs::rename(kg_dir.join("web"), &real).unwrap();
    symlink(&real, kg_dir.join("web")).unwrap();
    for err in [
        s.kg.list(Some("web")).unwrap_err(),
        s.kg.list(None).unwrap_err(),
        s.kg.mark(&request("web", &s.paths[1])).unwrap_err(),
        s.kg.unmark("web", "20261123T172900Z-1a2b3c4", true)
            .unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotPlain { .. }), "{err}");
    }
    // A record that is a link is refused too.
    std::fs::remove_file(kg_dir.join("web")).unwrap();
    std::fs::rename(&real, kg_dir.join("web")).unwrap();
    let rec = std::fs::read_dir(kg_dir.join("web"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let copy = s.state.path().join("copy.json");
    std::fs::rename(&rec, &copy).unwrap();
    symlink(&copy, &rec).unwrap();
    assert!(matches!(
        s.kg.list(Some("web")),
        Err(Error::NotPlain { .. })
    ));
}

#[test]
fn an_edited_record_or_a_repointed_root_is_broken_not_trusted() {
    let s = setup();
    let first = s.kg.mark(&request("web", &s.paths[0])).unwrap();
    let latest = s.kg.mark(&request("web", &s.paths[1])).unwrap();
    // The latest record is edited to name another valid closure.
    let path = record_path(&s, &latest.mark);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&s.paths[1], &s.paths[0])).unwrap();
    let err = s.kg.latest("web").unwrap_err();
    assert!(matches!(err, Error::Broken { .. }), "{err}");
    assert!(err.to_string().contains("points at"), "{err}");
    let listing = s.kg.list(Some("web")).unwrap();
    assert!(
        listing
            .repairs
            .iter()
            .any(|r| r.broken && r.mark == latest.mark),
        "{:?}",
        listing.repairs
    );
    std::fs::write(&path, text).unwrap();
    assert_eq!(s.kg.latest("web").unwrap().closure, s.paths[1]);

    // The earlier mark's root is repointed by hand.
    let root = s.roots.join("web").join(&first.mark);
    std::fs::remove_file(&root).unwrap();
    symlink(&s.paths[1], &root).unwrap();
    let err = s.kg.previous("web").unwrap_err();
    assert!(matches!(err, Error::Broken { .. }), "{err}");
    assert!(matches!(
        s.kg.checked("web", &first.mark),
        Err(Error::Broken { .. })
    ));
    let listing = s.kg.list(Some("web")).unwrap();
    assert!(listing.repairs.iter().any(|r| r.broken), "{listing:?}");
    assert_eq!(
        std::fs::read_link(&root).unwrap(),
        Path::new(&s.paths[1]),
        "reported, not acted on"
    );
}

#[test]
fn a_record_naming_a_path_outside_the_store_is_refused() {
    let s = setup();
    let r = s.kg.mark(&request("web", &s.paths[0])).unwrap();
    let path = record_path(&s, &r.mark);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&s.paths[0], "/etc/passwd")).unwrap();
    assert!(matches!(
        s.kg.latest("web"),
        Err(Error::TamperedRecord { .. })
    ));
}

#[test]
fn repair_removes_only_what_it_created() {
    let s = setup();
    let r = s.kg.mark(&request("web", &s.paths[0])).unwrap();
    let records = s.state.path().join("known-good/web");
    let roots = s.roots.join("web");
    // An interrupted mark's intent, whose root place holds a regular file of someone
    // else's and whose .drv place holds a directory.
    let ghost = "20261123T172900Z-abcdef0";
    std::fs::write(records.join(format!(".{ghost}.intent")), "mark\n").unwrap();
    std::fs::write(roots.join(ghost), "not ours").unwrap();
    std::fs::create_dir(roots.join(format!("{ghost}.drv"))).unwrap();
    let listing = s.kg.list(Some("web")).unwrap();
    assert!(listing.repairs.iter().any(|r| r.broken), "{listing:?}");
    assert_eq!(
        std::fs::read_to_string(roots.join(ghost)).unwrap(),
        "not ours"
    );
    assert!(roots.join(format!("{ghost}.drv")).is_dir());
    assert_eq!(listing.marks.len(), 1);
    // A directory where a record's root belongs does not make list fail either.
    std::fs::remove_file(roots.join(&r.mark)).unwrap();
    std::fs::create_dir(roots.join(&r.mark)).unwrap();
    let listing = s.kg.list(Some("web")).unwrap();
    assert!(
        listing.repairs.iter().any(|x| x.broken && x.mark == r.mark),
        "{listing:?}"
    );
    assert!(matches!(s.kg.latest("web"), Err(Error::Broken { .. })));
    // An interrupted mark whose root is the link it announced is cleaned up.
    let ghost2 = "20261123T172901Z-abcdef0";
    std::fs::write(
        records.join(format!(".{ghost2}.intent")),
        format!("mark\n{}\n\n", s.paths[1]),
    )
    .unwrap();
    symlink(&s.paths[1], roots.join(ghost2)).unwrap();
    let listing = s.kg.list(Some("web")).unwrap();
    assert!(
        listing
            .repairs
            .iter()
            .any(|x| !x.broken && x.mark == ghost2),
        "{listing:?}"
    );
    assert!(std::fs::symlink_metadata(roots.join(ghost2)).is_err());
}

#[test]
fn mark_names_are_never_reused() {
    let s = setup();
    // A reuse needs the same second: retry until two marks share one.
    for _ in 0..5 {
        let a = s.kg.mark(&request("web", &s.paths[0])).unwrap();
        let b = s.kg.mark(&request("web", &s.paths[0])).unwrap();
        s.kg.prune("web", 1, None).unwrap();
        s.kg.unmark("web", &b.mark, true).unwrap();
        let c = s.kg.mark(&request("web", &s.paths[0])).unwrap();
        assert!(c.seq > b.seq, "sequence numbers never go back");
        if a.mark[..16] == c.mark[..16] {
            assert_ne!(c.mark, a.mark, "a pruned mark's name came back");
            assert_ne!(c.mark, b.mark, "an unmarked mark's name came back");
            return;
        }
        s.kg.unmark("web", &c.mark, true).unwrap();
    }
    panic!("no two marks in the same second in five tries");
}

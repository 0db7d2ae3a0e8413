//! Known-good marks against a real store and a real garbage collector.

use std::path::Path;

use waymark_evidence::{Evidence, Gate, GateResult, Outcome};
use waymark_known_good::{Dirs, Error, KnownGood, MarkRequest};
use waymark_store::Store;
use waymark_testbed::{PrivateStore, build_generations, fixtures};

fn evidence(target: &str, closure: &str) -> Evidence {
    Evidence {
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
    }
}

fn request(target: &str, closure: &str) -> MarkRequest {
    MarkRequest {
        target: target.into(),
        closure: closure.into(),
        rev: "1a2b3c4d".into(),
        evidence: evidence(target, closure),
    }
}

fn setup() -> (PrivateStore, KnownGood, Vec<String>, tempfile::TempDir) {
    let tb = PrivateStore::temp().unwrap();
    let g1 = fixtures::web_gen1();
    let g2 = fixtures::web_gen2();
    let mut g3 = fixtures::web_gen2();
    "24.05.3".clone_into(&mut g3.version);
    let paths = build_generations(&tb, &[&g1, &g2, &g3]).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let state = tempfile::tempdir().unwrap();
    let gcroots = tb.state_dir().join("gcroots");
    let dirs = Dirs {
        state: state.path().to_owned(),
        roots: gcroots.join("waymark"),
        gcroots,
    };
    (tb, KnownGood::new(dirs, store), paths, state)
}

fn gc(tb: &PrivateStore) {
    let mut cmd = tb.command("nix-store");
    // keep-derivations off: a derivation survives only through our own root for it.
    cmd.args(["--gc", "--option", "keep-derivations", "false"]);
    tb.run(cmd).unwrap();
}

fn deriver(tb: &PrivateStore, path: &str) -> String {
    let mut cmd = tb.command("nix-store");
    cmd.args(["--query", "--deriver", path]);
    tb.run(cmd).unwrap().trim().to_owned()
}

#[test]
fn marks_survive_gc_and_pruned_marks_do_not() {
    let (tb, kg, paths, _state) = setup();
    let (a, b, c) = (&paths[0], &paths[1], &paths[2]);
    let (a_drv, b_drv) = (deriver(&tb, a), deriver(&tb, b));
    let first = kg.mark(&request("web", a)).unwrap();
    assert_eq!(
        first.drv.as_deref(),
        Some(a_drv.as_str()),
        "the derivation is rooted too"
    );
    let latest = kg.mark(&request("web", c)).unwrap();
    assert_eq!((first.seq, latest.seq), (1, 2));
    gc(&tb);
    assert!(
        Path::new(a).exists() && Path::new(&a_drv).exists(),
        "marked closure and its .drv survive"
    );
    assert!(Path::new(c).exists());
    assert!(!Path::new(b).exists(), "the unrooted closure is collected");
    assert!(!Path::new(&b_drv).exists());

    assert_eq!(kg.latest("web").unwrap().closure, *c);
    assert_eq!(kg.previous("web").unwrap().closure, *a);
    let removed = kg.prune("web", 1, None).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].mark, first.mark);
    gc(&tb);
    assert!(
        !Path::new(a).exists() && !Path::new(&a_drv).exists(),
        "a pruned mark's closure is collected"
    );
    assert!(Path::new(c).exists(), "the latest is never pruned");
    assert!(matches!(kg.previous("web"), Err(Error::NoPrevious { .. })));
}

#[test]
fn refusals_leave_nothing_behind() {
    let (tb, kg, paths, state) = setup();
    let a = &paths[0];
    let gone = format!(
        "{}/00000000000000000000000000000000-gone",
        tb.store_dir().display()
    );
    assert!(matches!(
        kg.mark(&request("web", &gone)),
        Err(Error::NotInStore { .. })
    ));
    assert!(matches!(
        kg.mark(&request("../web", a)),
        Err(Error::BadTarget(_))
    ));
    let mut bad_rev = request("web", a);
    bad_rev.rev = "main".into();
    assert!(matches!(kg.mark(&bad_rev), Err(Error::BadRev(_))));
    let mut wrong = request("web", a);
    wrong.evidence.target = "db".into();
    assert!(matches!(kg.mark(&wrong), Err(Error::Evidence(_))));
    let mut failed = request("web", a);
    failed.evidence.gates[0].result = Outcome::Failed;
    let err = kg.mark(&failed).unwrap_err();
    let cause = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(cause.contains("test gate failed"), "{err}: {cause}");
    assert!(
        !state.path().join("known-good").exists(),
        "no record, no directory"
    );
    assert!(
        !tb.state_dir().join("gcroots/waymark/web").exists(),
        "no root"
    );

    let first = kg.mark(&request("web", a)).unwrap();
    let err = kg.unmark("web", &first.mark, false).unwrap_err();
    assert!(matches!(err, Error::RefuseLatest { .. }));
    assert!(err.to_string().contains("--force"));
    assert!(kg.unmark("web", &first.mark, true).is_ok());
    assert!(!Path::new(&first.roots.closure).exists());
    assert!(matches!(
        kg.latest("nope"),
        Err(Error::UnknownTarget { .. })
    ));
}

#[test]
fn roots_outside_gcroots_are_refused() {
    let (tb, _kg, paths, state) = setup();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let dirs = Dirs {
        state: state.path().to_owned(),
        roots: state.path().join("roots"),
        gcroots: tb.state_dir().join("gcroots"),
    };
    let kg = KnownGood::new(dirs, store);
    assert!(matches!(
        kg.mark(&request("web", &paths[0])),
        Err(Error::RootsOutsideGcroots { .. })
    ));
}

#[test]
fn latest_of_a_collected_closure_is_broken_not_a_dangling_path() {
    let (tb, kg, paths, _state) = setup();
    let r = kg.mark(&request("web", &paths[0])).unwrap();
    // Someone deletes the roots by hand and collects garbage.
    std::fs::remove_file(&r.roots.closure).unwrap();
    std::fs::remove_file(r.roots.drv.as_ref().unwrap()).unwrap();
    gc(&tb);
    assert!(!Path::new(&paths[0]).exists());
    let err = kg.latest("web").unwrap_err();
    assert!(matches!(err, Error::Broken { .. }), "{err}");
    let listing = kg.list(Some("web")).unwrap();
    assert!(
        listing.repairs.iter().any(|r| r.broken),
        "{:?}",
        listing.repairs
    );
}

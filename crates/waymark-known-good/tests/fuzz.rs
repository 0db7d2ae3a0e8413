//! Bounded fuzzing (proptest: the stable toolchain has no cargo-fuzz) of the records a
//! state directory holds, which anyone with access may have edited (issue 22): mutated
//! and arbitrary records give a listing or a typed error from every reader, never a
//! panic, and are never acted on outside the target's directories.

use proptest::prelude::*;
use waymark_evidence::{Evidence, Gate, GateResult, Outcome};
use waymark_known_good::{Dirs, KnownGood, Record, Roots, SCHEMA};
use waymark_store::Store;

const MARK: &str = "20261123T172900Z-1a2b3c4";

fn seed() -> Vec<u8> {
    let closure = "/nix/store/00000000000000000000000000000000-nixos-system-web".to_owned();
    let record = Record {
        schema: SCHEMA.into(),
        target: "web".into(),
        mark: MARK.into(),
        seq: 1,
        closure: closure.clone(),
        drv: Some(format!("{closure}.drv")),
        rev: "1a2b3c4".into(),
        marked_at: "2026-11-23T17:29:00Z".into(),
        evidence: Evidence {
            schema: waymark_evidence::SCHEMA.into(),
            target: "web".into(),
            closure,
            drv: None,
            rev: None,
            gates: vec![GateResult {
                gate: Gate::Test,
                result: Outcome::Passed,
                started_at: "2026-11-23T17:00:00Z".into(),
                duration_ms: 1,
                summary: None,
            }],
            diff: None,
        },
        tool_version: "0".into(),
        roots: Roots {
            closure: format!("/nix/var/nix/gcroots/waymark/web/{MARK}"),
            drv: None,
        },
    };
    serde_json::to_vec_pretty(&record).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    kg: KnownGood,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    // A store with no database: every question to it is a typed error, and reading
    // never creates one.
    let store = Store::from_url(Some(&format!(
        "local?root={}",
        dir.path().join("store").display()
    )))
    .unwrap();
    let gcroots = dir.path().join("gcroots");
    let dirs = Dirs {
        state: dir.path().join("state"),
        roots: gcroots.join("waymark"),
        gcroots,
    };
    std::fs::create_dir_all(dir.path().join("state/known-good/web")).unwrap();
    std::fs::create_dir_all(dir.path().join("gcroots/waymark/web")).unwrap();
    Fixture {
        kg: KnownGood::new(dirs, store),
        dir,
    }
}

fn check(f: &Fixture, bytes: &[u8]) {
    let path = f
        .dir
        .path()
        .join(format!("state/known-good/web/{MARK}.json"));
    std::fs::write(&path, bytes).unwrap();
    let _ = f.kg.list(Some("web"));
    let _ = f.kg.list(None);
    let _ = f.kg.latest("web");
    let _ = f.kg.previous("web");
    let _ = f.kg.get("web", Some(MARK));
    let _ = f.kg.checked("web", MARK);
    // Nothing appeared outside the fixture's directories, and no store was created.
    assert!(!f.dir.path().join("store").exists());
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("null"),
        Just("-1"),
        Just("18446744073709551616"),
        Just("\"../../../etc/passwd\""),
        Just("\"/nix/store/x/../../etc\""),
        Just("\"web/../db\""),
        Just("\"20261123T172900Z-1a2b3c4\\n\""),
        Just("{}"),
        Just("[]"),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| (i, None, Some(b))),
        (any::<usize>(), token).prop_map(|(i, t)| (i, Some(t), None)),
        any::<usize>().prop_map(|i| (i, None, None)),
    ];
    proptest::collection::vec(edit, 1..5).prop_map(|edits| {
        let mut b = seed();
        for (i, token, byte) in edits {
            let at = i % (b.len() + 1);
            match (token, byte) {
                (Some(t), _) => {
                    b.splice(at..at, t.bytes());
                }
                (None, Some(x)) if at < b.len() => b[at] = x,
                _ => b.truncate(at),
            }
        }
        b
    })
}

#[test]
fn the_seed_reads_back() {
    let f = fixture();
    check(&f, &seed());
    assert_eq!(f.kg.get("web", None).unwrap().mark, MARK);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn mutated_records(bytes in mutated()) {
        check(&fixture(), &bytes);
    }

    #[test]
    fn arbitrary_records(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check(&fixture(), &bytes);
    }
}

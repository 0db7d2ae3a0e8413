//! Bounded fuzzing (proptest: the stable toolchain has no cargo-fuzz) of evidence
//! documents, which come from files and stdin (issue 22): mutated and arbitrary input
//! gives a document or [`Error::Invalid`], never a panic; whatever parses can be
//! checked, summarised and written back.

use proptest::prelude::*;
use waymark_evidence::{Error, Evidence};

const SEED: &str = r#"{"schema":"waymark.evidence/v1","target":"web1","closure":"/nix/store/00000000000000000000000000000000-nixos-system-web1","drv":"/nix/store/11111111111111111111111111111111-nixos-system-web1.drv","rev":"1a2b3c4","gates":[{"gate":"build","result":"passed","started_at":"2026-11-23T17:00:00Z","duration_ms":2100},{"gate":"test","result":"passed","started_at":"2026-11-23T17:00:03Z","duration_ms":900,"summary":"ok"}],"diff":{"changed":4,"added":3,"removed":1,"rebuilt":9,"root_causes":["openssl 3.0.13 → 3.0.14"]}}"#;

fn check(bytes: &[u8]) {
    match Evidence::parse(bytes) {
        Ok(e) => {
            let _ = e.check_for_mark(&e.target.clone(), &e.closure.clone());
            let _ = e.summary();
            let again = serde_json::to_vec(&e).expect("serialises");
            Evidence::parse(&again).expect("what parsed once parses again");
        }
        Err(Error::Invalid(_)) => {}
        Err(e) => panic!("parse gave a non-parse error: {e}"),
    }
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just("null"),
        Just("-1"),
        Just("1e999"),
        Just("18446744073709551616"),
        Just("\"\""),
        Just("{}"),
        Just("[]"),
        Just("\"2026-13-45T99:99:99Z\""),
        Just("\"failed\""),
        Just("\"\\n\""),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| (i, None, Some(b))),
        (any::<usize>(), token).prop_map(|(i, t)| (i, Some(t), None)),
        any::<usize>().prop_map(|i| (i, None, None)),
    ];
    proptest::collection::vec(edit, 1..5).prop_map(|edits| {
        let mut b = SEED.as_bytes().to_vec();
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
fn the_seed_parses() {
    Evidence::parse(SEED.as_bytes()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn mutated_evidence(bytes in mutated()) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_evidence(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check(&bytes);
    }
}

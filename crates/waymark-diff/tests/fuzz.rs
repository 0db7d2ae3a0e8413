//! Bounded fuzzing (proptest: the stable toolchain has no cargo-fuzz) of the `.drv` files
//! a diff reads from a store someone else filled (issue 22): mutated and arbitrary
//! derivations must give a report that says what could not be read, never a panic.

use std::collections::BTreeSet;

use proptest::prelude::*;
use waymark_diff::{Closure, DrvLoader, PathEntry, diff};

const DIR: &str = "/s/store";
const OLD: &str = "/s/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-openssl-3.0.13";
const NEW: &str = "/s/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-openssl-3.0.14";

fn drv_text(out: &str, version: &str) -> Vec<u8> {
    format!(
        r#"Derive([("out","{out}","","")],[("/s/store/2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c-glibc-2.39.drv",["out"])],["/s/store/3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d-builder.sh"],"x86_64-linux","/s/store/4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f-bash-5.2/bin/bash",["-e","/s/store/3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d3d-builder.sh"],[("name","openssl-{version}"),("out","{out}"),("version","{version}")])"#
    )
    .into_bytes()
}

struct Loader {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl DrvLoader for Loader {
    fn load(&self, drv_path: &str) -> Result<Vec<u8>, String> {
        if drv_path == format!("{OLD}.drv") {
            Ok(self.old.clone())
        } else if drv_path == format!("{NEW}.drv") {
            Ok(self.new.clone())
        } else {
            Err("not in the store".into())
        }
    }
}

fn closure(root: &str, path: &str) -> Closure {
    let root_entry = PathEntry {
        path: root.into(),
        nar_size: 1,
        deriver: None,
    };
    let entry = PathEntry {
        path: path.into(),
        nar_size: 10,
        deriver: Some(format!("{path}.drv")),
    };
    Closure {
        root: root.into(),
        paths: vec![root_entry, entry],
        selected: BTreeSet::from([path.to_owned()]),
    }
}

fn run(old: Vec<u8>, new: Vec<u8>) -> String {
    let report = diff(
        &closure(
            &format!("{DIR}/5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e-system"),
            OLD,
        ),
        &closure(
            &format!("{DIR}/6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f6f-system"),
            NEW,
        ),
        &Loader { old, new },
    );
    serde_json::to_string(&report).expect("a report serialises")
}

#[test]
fn the_seed_parses() {
    let json = run(drv_text(OLD, "3.0.13"), drv_text(NEW, "3.0.14"));
    assert!(json.contains("3.0.14"), "{json}");
    assert!(
        !json.contains("parsing"),
        "the seed is a valid derivation: {json}"
    );
}

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"\"".to_vec()),
        Just(b"(".to_vec()),
        Just(b")".to_vec()),
        Just(b"[".to_vec()),
        Just(b",".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"/../".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\0".to_vec()),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| (0u8, i, vec![b])),
        (any::<usize>(), token).prop_map(|(i, t)| (1u8, i, t)),
        (any::<usize>(), 1..30usize).prop_map(|(i, n)| (2u8, i, vec![0; n])),
    ];
    proptest::collection::vec(edit, 1..6).prop_map(move |edits| {
        let mut b = seed.clone();
        for (kind, i, t) in edits {
            let at = i % (b.len() + 1);
            match kind {
                0 if !b.is_empty() => {
                    let i = i % b.len();
                    b[i] = t[0];
                }
                0 => {}
                1 => {
                    b.splice(at..at, t);
                }
                _ => {
                    let end = (at + t.len()).min(b.len());
                    b.drain(at..end);
                }
            }
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_derivations(new in mutated(drv_text(NEW, "3.0.14"))) {
        run(drv_text(OLD, "3.0.13"), new);
    }

    #[test]
    fn arbitrary_derivations(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        run(bytes.clone(), bytes);
    }
}

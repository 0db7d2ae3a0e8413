//! Bounded fuzzing (proptest: the stable toolchain has no cargo-fuzz) of what this crate
//! reads from others: `nix path-info --json` in its three shapes, mutated and arbitrary
//! (issue 22). Each input must give a value or a typed error, never a panic.

use proptest::prelude::*;
use waymark_store::{Error, closure_from_path_info, parse_path_info};

const STORE_DIR: &str = "/tmp/demo1/store";

fn sample(file: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/samples/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// One edit of a byte string: flip, insert, delete, truncate or splice a JSON token.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let token = prop_oneof![
        Just(b"null".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"\"\"".to_vec()),
        Just(b"{}".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"\"../../etc\"".to_vec()),
        Just(b"\"\\u0000\"".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<usize>(), token).prop_map(|(i, t)| Edit::Insert(i, t)),
            (any::<usize>(), 1..40usize).prop_map(|(i, n)| Edit::Delete(i, n)),
            any::<usize>().prop_map(Edit::Truncate),
        ],
        1..6,
    )
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = *b;
            }
            Edit::Set(..) => {}
            Edit::Insert(i, t) => {
                let i = at(*i, bytes.len());
                bytes.splice(i..i, t.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(*i, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Truncate(i) => bytes.truncate(at(*i, bytes.len())),
        }
    }
    bytes
}

fn check(bytes: &[u8]) {
    match parse_path_info(bytes, STORE_DIR) {
        Ok(infos) => {
            for i in &infos {
                assert!(i.path.starts_with('/'), "absolute: {}", i.path);
            }
            let root = infos.first().map_or("/x", |i| i.path.as_str());
            match closure_from_path_info(bytes, STORE_DIR, root, "fuzz") {
                Ok(_) | Err(Error::NotValid { .. }) => {}
                Err(e) => panic!("parsed once, not twice: {e}"),
            }
        }
        Err(Error::PathInfoJson(_)) => {}
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_list_shape(e in edits()) {
        check(&apply(sample("nix-2.8-list.json"), &e));
    }

    #[test]
    fn mutated_object_shape(e in edits()) {
        check(&apply(sample("nix-2.19-object.json"), &e));
    }

    #[test]
    fn mutated_envelope_shape(e in edits()) {
        check(&apply(sample("nix-2.33-format2.json"), &e));
    }

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_json_values(v in json_value()) {
        check(v.to_string().as_bytes());
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z/.0-9-]{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("path".to_owned()),
                    Just("narSize".to_owned()),
                    Just("references".to_owned()),
                    Just("deriver".to_owned()),
                    Just("valid".to_owned()),
                    Just("storeDir".to_owned()),
                    Just("info".to_owned()),
                    Just("version".to_owned()),
                    "/[a-z/]{0,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

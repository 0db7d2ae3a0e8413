//! Every recorded `nix path-info --json` shape parses to the same closure.

use waymark_store::parse_path_info;

const STORE_DIR: &str = "/tmp/demo1/store";

fn parse(file: &str) -> Vec<waymark_store::PathInfo> {
    let bytes = std::fs::read(format!(
        "{}/tests/samples/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut infos = parse_path_info(&bytes, STORE_DIR).unwrap();
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    for i in &mut infos {
        i.references.sort();
    }
    infos
}

#[test]
fn all_shapes_agree() {
    let list = parse("nix-2.8-list.json");
    assert_eq!(list.len(), 28, "the demo's generation-1 closure");
    assert!(
        list.iter()
            .all(|i| i.valid && i.path.starts_with(STORE_DIR))
    );
    let with_deriver = list.iter().filter(|i| i.deriver.is_some()).count();
    assert_eq!(
        with_deriver, 27,
        "every built path records its deriver (busybox is a source)"
    );
    assert_eq!(parse("nix-2.19-object.json"), list);
    let mut format2 = parse("nix-2.33-format2.json");
    let gone = format2
        .iter()
        .position(|i| !i.valid)
        .expect("the invalid path is reported");
    assert_eq!(
        format2.remove(gone).path,
        format!("{STORE_DIR}/00000000000000000000000000000000-gone")
    );
    assert_eq!(format2, list);
}

#[test]
fn invalid_paths_in_every_shape() {
    for file in ["nix-2.8-invalid.json", "nix-2.19-invalid.json"] {
        let infos = parse(file);
        assert_eq!(infos.len(), 1, "{file}");
        assert!(!infos[0].valid, "{file}");
        assert!(infos[0].path.ends_with("-gone"), "{file}");
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    assert!(parse_path_info(b"{\"x\": 3}", STORE_DIR).is_err());
    assert!(parse_path_info(b"not json", STORE_DIR).is_err());
}

/// One `path-info --recursive A B` for a batch of builds: each root's closure is what it
/// reaches, nothing of the other's.
#[test]
fn a_closure_keeps_only_what_its_root_reaches() {
    let json = br#"[
      {"path": "/nix/store/aaaa-a", "narSize": 1, "references": ["/nix/store/cccc-shared", "/nix/store/aaaa-a"]},
      {"path": "/nix/store/bbbb-b", "narSize": 2, "references": ["/nix/store/cccc-shared", "/nix/store/dddd-only-b"]},
      {"path": "/nix/store/cccc-shared", "narSize": 4, "references": []},
      {"path": "/nix/store/dddd-only-b", "narSize": 8, "references": []}
    ]"#;
    let paths = |root: &str| {
        let c = waymark_store::closure_from_path_info(json, "/nix/store", root, "test").unwrap();
        let mut p: Vec<String> = c.paths.into_iter().map(|e| e.path).collect();
        p.sort();
        p
    };
    assert_eq!(
        paths("/nix/store/aaaa-a"),
        ["/nix/store/aaaa-a", "/nix/store/cccc-shared"]
    );
    assert_eq!(
        paths("/nix/store/bbbb-b"),
        [
            "/nix/store/bbbb-b",
            "/nix/store/cccc-shared",
            "/nix/store/dddd-only-b"
        ]
    );
}

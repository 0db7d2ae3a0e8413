//! The fast path (`SQLite`) and the fallback (nix CLI) read the same closure of a real store.

use waymark_store::{Error, LocalStore, Source, Store, read_closure};
use waymark_testbed::{PrivateStore, build_pair, fixtures};

fn sorted(mut c: waymark_diff::Closure) -> waymark_diff::Closure {
    c.paths.sort_by(|a, b| a.path.cmp(&b.path));
    c
}

#[test]
fn database_and_cli_agree() {
    let tb = PrivateStore::temp().unwrap();
    let pair = build_pair(&tb, &fixtures::web_gen1(), &fixtures::web_gen2()).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let (fast, source) = read_closure(&store, &pair.new).unwrap();
    assert_eq!(source, Source::Database);
    let Store::Local(local) = &store else {
        panic!("a local store")
    };
    // A database that cannot be used (not a database here; unreadable for a non-root
    // user in practice) sends the read through the nix CLI. (A missing one does not:
    // the CLI would create a store there.)
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        garbage.path(),
        b"not a database, not at all, not even close",
    )
    .unwrap();
    let broken = Store::Local(LocalStore {
        db: garbage.path().to_owned(),
        ..local.clone()
    });
    let (slow, source) = read_closure(&broken, &pair.new).unwrap();
    assert_eq!(source, Source::Cli);
    let (fast, slow) = (sorted(fast), sorted(slow));
    assert_eq!(fast, slow);
    assert_eq!(fast.paths.len(), 30);
    let names: Vec<&str> = fast
        .selected
        .iter()
        .filter_map(|p| waymark_diff::store_path_name(p))
        .collect();
    for want in [
        "htop-3.3.0",
        "openssh-9.7p1",
        "bash-5.2p26-man",
        "system-path",
    ] {
        assert!(names.contains(&want), "{want} selected: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("ncurses")),
        "a deep dependency is not selected"
    );
}

#[test]
fn invalid_path_and_locked_database() {
    let tb = PrivateStore::temp().unwrap();
    let pair = build_pair(&tb, &fixtures::web_gen1(), &fixtures::web_gen1()).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let gone = format!(
        "{}/00000000000000000000000000000000-gone",
        tb.store_dir().display()
    );
    assert!(matches!(
        read_closure(&store, &gone),
        Err(Error::NotValid { .. })
    ));

    let conn = rusqlite::Connection::open(tb.db_path()).unwrap();
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .unwrap();
    let err = read_closure(&store, &pair.old).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("is locked by another process"));
    conn.execute_batch("COMMIT;").unwrap();
    drop(conn);
    assert!(
        read_closure(&store, &pair.old).is_ok(),
        "readable again once released"
    );
}

//! Hostile store contents and store URLs (issue 22): reading never creates a store, a
//! FIFO where a derivation belongs is refused instead of waited on, an impossible size
//! in the database is refused instead of wrapped.

use std::sync::mpsc;
use std::time::Duration;

use waymark_diff::DrvLoader as _;
use waymark_store::{DrvFiles, Error, Store, path_entry, read_closure};
use waymark_testbed::{PrivateStore, build_pair, fixtures};

#[test]
fn reading_a_missing_store_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x");
    let path = "/nix/store/00000000000000000000000000000000-a";
    for url in [
        format!("local?root={}", x.display()),
        format!("file://{}", x.display()),
        x.display().to_string(),
    ] {
        let store = Store::from_url(Some(&url)).unwrap();
        let err = read_closure(&store, path).unwrap_err();
        assert!(matches!(err, Error::NoStore { .. }), "{url}: {err:?}");
        assert!(err.to_string().contains("never creates"), "{err}");
        assert!(matches!(
            path_entry(&store, path),
            Err(Error::NoStore { .. })
        ));
        assert!(!x.exists(), "{url} created {}", x.display());
    }
}

#[test]
fn a_fifo_derivation_is_refused_not_waited_on() {
    let tb = PrivateStore::temp().unwrap();
    build_pair(&tb, &fixtures::web_gen1(), &fixtures::web_gen1()).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let name = "00000000000000000000000000000000-evil.drv";
    let fifo = tb.store_dir().join(name);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let logical = format!("{}/{name}", store.store_dir());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(DrvFiles::new([&store]).load(&logical));
    });
    // A hang guard, not a timing claim: the read must come back at all.
    let result = rx
        .recv_timeout(Duration::from_mins(1))
        .expect("reading a FIFO derivation hung");
    let err = result.unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_negative_nar_size_is_refused() {
    let tb = PrivateStore::temp().unwrap();
    let pair = build_pair(&tb, &fixtures::web_gen1(), &fixtures::web_gen2()).unwrap();
    let store = Store::from_url(Some(&tb.url())).unwrap();
    let conn = rusqlite::Connection::open(tb.db_path()).unwrap();
    conn.execute(
        "UPDATE ValidPaths SET narSize = -1 WHERE path = ?1",
        [&pair.new],
    )
    .unwrap();
    drop(conn);
    let err = read_closure(&store, &pair.new).unwrap_err();
    assert!(matches!(err, Error::BadSize { value: -1, .. }), "{err:?}");
    assert!(
        matches!(path_entry(&store, &pair.new), Err(Error::BadSize { .. })),
        "and one path's entry too"
    );
    assert!(read_closure(&store, &pair.old).is_ok(), "others still read");
}

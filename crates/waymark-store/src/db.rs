//! The fast path: a closure straight from the store's `SQLite` database, read-only.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use waymark_diff::{Closure, PathEntry, selection_parents};

use crate::error::{Error, Result};
use crate::store::LocalStore;

/// How long to wait for a writer before calling the database locked. Nix's own writes
/// are short; a longer wait means something holds an exclusive lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

fn is_locked(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A locked database is its own error (retrying later helps, the CLI would only hang);
/// anything else sends the caller to the nix CLI.
fn db_error(store: &LocalStore, source: rusqlite::Error) -> Error {
    if is_locked(&source) {
        Error::Locked {
            db: store.db.clone(),
        }
    } else {
        Error::Database {
            db: store.db.clone(),
            source,
        }
    }
}

fn open(store: &LocalStore) -> Result<Connection> {
    let err = |source| db_error(store, source);
    if !store.db.exists() {
        return Err(err(rusqlite::Error::InvalidPath(store.db.clone())));
    }
    let conn = Connection::open_with_flags(
        &store.db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // The closure query reads much of the database: map it instead of copying pages, and
    // keep the recursive query's de-duplication b-tree in memory (halves its time here).
    conn.execute_batch(
        "PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY; PRAGMA query_only = 1;",
    )
    .map_err(err)?;
    Ok(conn)
}

/// Reads one path's entry, `None` when the store does not hold it.
pub fn path_entry(store: &LocalStore, path: &str) -> Result<Option<PathEntry>> {
    let conn = open(store)?;
    conn.query_row(
        "SELECT path, narSize, deriver FROM ValidPaths WHERE path = ?1",
        [path],
        row,
    )
    .optional()
    .map_err(|source| db_error(store, source))?
    .map(|r| entry(store, r))
    .transpose()
}

type Row = (String, Option<i64>, Option<String>);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

/// A row as an entry. A negative size (a damaged or edited database) is refused: cast,
/// it would read as 16 EiB and swamp every total.
fn entry(store: &LocalStore, (path, size, deriver): Row) -> Result<PathEntry> {
    let size = size.unwrap_or(0);
    let nar_size = u64::try_from(size).map_err(|_| Error::BadSize {
        db: store.db.clone(),
        path: path.clone(),
        value: size,
    })?;
    Ok(PathEntry {
        path,
        nar_size,
        deriver: deriver.filter(|d| !d.is_empty()),
    })
}

/// Reads the closure of `root` from the database.
///
/// # Errors
/// [`Error::Locked`] when another process holds the database; [`Error::NotValid`] when
/// the root is not in it; [`Error::Database`] when the database cannot be used at all
/// (the caller then falls back to the nix CLI).
pub fn closure(store: &LocalStore, root: &str) -> Result<Closure> {
    let err = |source| db_error(store, source);
    let conn = open(store)?;
    let id: Option<i64> = conn
        .query_row("SELECT id FROM ValidPaths WHERE path = ?1", [root], |r| {
            r.get(0)
        })
        .optional()
        .map_err(err)?;
    let Some(id) = id else {
        return Err(Error::NotValid {
            path: root.to_owned(),
            store: store.store_dir.clone(),
        });
    };
    let mut stmt = conn
        .prepare_cached(
            "WITH RECURSIVE closure(id) AS (
                 SELECT ?1
                 UNION SELECT reference FROM Refs JOIN closure ON referrer = closure.id
             )
             SELECT path, narSize, deriver FROM ValidPaths JOIN closure USING (id)",
        )
        .map_err(err)?;
    let paths = stmt
        .query_map([id], row)
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(err)?
        .into_iter()
        .map(|r| entry(store, r))
        .collect::<Result<Vec<_>>>()?;
    let refs = |path: &str| -> Result<Vec<String>> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference
                 WHERE r.referrer = (SELECT id FROM ValidPaths WHERE path = ?1)",
            )
            .map_err(err)?;
        stmt.query_map([path], |r| r.get(0))
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .map_err(err)
    };
    let root_refs = refs(root)?;
    let mut selected: std::collections::BTreeSet<String> = root_refs.iter().cloned().collect();
    for parent in selection_parents(&root_refs) {
        selected.extend(refs(parent)?);
    }
    selected.remove(root);
    Ok(Closure {
        root: root.to_owned(),
        paths,
        selected,
    })
}

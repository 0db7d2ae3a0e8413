//! Crash-safe file system steps: every change is a rename, so a crash leaves the old state
//! or the new one, never half of a file or a link.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

fn tmp_name(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_dir(dir: &Path) {
    // Best effort: the rename is what makes the change atomic; syncing the directory
    // makes it durable across power loss.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("writing", path, e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Points the link `path` at `target` through a temporary link and rename.
pub fn symlink_atomic(target: &str, path: &Path) -> Result<()> {
    let tmp = tmp_name(path);
    let _ = fs::remove_file(&tmp);
    let result = std::os::unix::fs::symlink(target, &tmp).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("creating the GC root", path, e));
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Removes a file or link, durably (the directory is synced, so the order of removals
/// survives a power loss); one that is already gone is fine.
pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
        Err(_) => Ok(()),
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            Ok(())
        }
    }
}

/// Creates a directory and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io("creating", path, e))
}

/// An exclusive lock on a target's records, held until dropped. Serialises writers of
/// one target across processes; other targets are not blocked.
pub struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Blocks until the lock is ours.
    pub fn acquire(path: &Path) -> Result<Self> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("opening the lock", path, e))?;
        f.lock().map_err(|e| Error::io("locking", path, e))?;
        Ok(Self(f))
    }
}

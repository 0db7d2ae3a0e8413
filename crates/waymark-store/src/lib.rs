//! Reads Nix stores for Waymark: the closure of a store path, straight from the store's
//! `SQLite` database when it is on this machine (the fast path) and through the nix CLI
//! otherwise; derivation files; what a user's argument (a profile, a link, a flake output)
//! stands for.
//!
//! # Example
//! ```no_run
//! use waymark_store::{Store, resolve, read_closure};
//!
//! let store = Store::from_url(None)?;
//! let path = resolve(&store, "/nix/var/nix/profiles/system")?;
//! let (closure, _how) = read_closure(&store, &path)?;
//! println!("{} paths", closure.paths.len());
//! # Ok::<(), waymark_store::Error>(())
//! ```

mod cli;
mod command;
mod db;
mod error;
mod pathinfo;
mod resolve;
mod ssh;
mod store;

use waymark_diff::Closure;

pub use cli::closure_from_path_info;
pub use command::{last_line, nix_command};
pub use error::{Error, Result};
pub use pathinfo::{PathInfo, parse_path_info};
pub use resolve::{resolve, shell_quote};
pub use ssh::{is_destination, split_sshopts, ssh_command, user_sshopts};
pub use store::{LocalStore, Store};

/// How a closure was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the `SQLite` database.
    Database,
    /// From `nix path-info`.
    Cli,
}

/// Reads the closure of `root`: the database when it can be read, the nix CLI otherwise.
///
/// # Errors
/// The path is not valid in the store, the database is locked, or neither the database
/// nor the CLI could be read.
pub fn read_closure(store: &Store, root: &str) -> Result<(Closure, Source)> {
    match store {
        Store::Local(local) => match db::closure(local, root) {
            Ok(c) => Ok((c, Source::Database)),
            Err(Error::Database { .. }) => {
                store.check_exists()?;
                Ok((
                    cli::closure(local.url.as_deref(), &local.store_dir, root)?,
                    Source::Cli,
                ))
            }
            Err(e) => Err(e),
        },
        Store::Remote { url, store_dir } => {
            store.check_exists()?;
            Ok((cli::closure(Some(url), store_dir, root)?, Source::Cli))
        }
    }
}

/// Returns the store's entry for `path` (size, deriver), `None` when it does not hold it.
///
/// # Errors
/// The store cannot be read at all, or its database is locked.
pub fn path_entry(store: &Store, path: &str) -> Result<Option<waymark_diff::PathEntry>> {
    match store {
        Store::Local(local) => match db::path_entry(local, path) {
            Err(Error::Database { .. }) => {
                store.check_exists()?;
                cli::path_entry(local.url.as_deref(), &local.store_dir, path)
            }
            other => other,
        },
        Store::Remote { url, store_dir } => {
            store.check_exists()?;
            cli::path_entry(Some(url), store_dir, path)
        }
    }
}

/// The largest derivation read (a NixOS system's biggest are a few MiB).
const MAX_DRV: u64 = 64 << 20;

/// Reads a regular file of at most `max` bytes. The type is checked on the open file,
/// which was opened without blocking: a FIFO planted in a store would otherwise hang the
/// reader forever, and a device would never end (issue 22).
fn read_regular(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), max + 1),
        &mut bytes,
    )?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads derivation files for the structural diff. Derivations are content-addressed,
/// so one read from this machine's store is the same file wherever the closure lives.
#[derive(Debug, Clone)]
pub struct DrvFiles {
    stores: Vec<LocalStore>,
}

impl DrvFiles {
    /// Reads from the local stores among `stores`, then from this machine's default store.
    pub fn new<'a>(stores: impl IntoIterator<Item = &'a Store>) -> Self {
        let mut locals: Vec<LocalStore> = stores
            .into_iter()
            .filter_map(|s| match s {
                Store::Local(l) => Some(l.clone()),
                Store::Remote { .. } => None,
            })
            .collect();
        if let Ok(Store::Local(default)) = Store::from_url(None)
            && !locals.contains(&default)
        {
            locals.push(default);
        }
        Self { stores: locals }
    }
}

impl waymark_diff::DrvLoader for DrvFiles {
    fn load(&self, drv_path: &str) -> std::result::Result<Vec<u8>, String> {
        let mut last = String::from("not in any local store");
        for store in &self.stores {
            match read_regular(&store.real_path(drv_path), MAX_DRV) {
                Ok(bytes) => return Ok(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    "not in the store (garbage-collected, or built elsewhere)"
                        .clone_into(&mut last);
                }
                Err(e) => last = format!("unreadable: {e}"),
            }
        }
        Err(last)
    }
}

//! Which store to read and how: a local store (database read directly, files read from
//! disk) or any other store URL (through the nix CLI).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A store on this machine whose database and files can be read directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalStore {
    /// Logical store directory, as store paths spell it (`/nix/store`).
    pub store_dir: String,
    /// Where the store's files really are (differs for a chroot store `local?root=`).
    pub real_store_dir: PathBuf,
    /// The `SQLite` database.
    pub db: PathBuf,
    /// The URL to hand to the nix CLI when the database cannot be read.
    pub url: Option<String>,
}

impl LocalStore {
    /// Where a store path's files are on this machine.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        match store_path.strip_prefix(&self.store_dir) {
            Some(rest) => self.real_store_dir.join(rest.trim_start_matches('/')),
            None => PathBuf::from(store_path),
        }
    }
}

/// A store to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// Read directly.
    Local(LocalStore),
    /// Read through `nix --store URL` (ssh://, ssh-ng://, unix://, http(s)://, ...).
    Remote {
        /// The store URL.
        url: String,
        /// Logical store directory of the remote store.
        store_dir: String,
    },
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Store {
    /// Interprets a store URL like Nix does: none, `auto`, `local` and `daemon` are this
    /// machine's store (honouring `NIX_STORE_DIR` and `NIX_STATE_DIR`); an absolute path
    /// or `local?root=DIR` is a chroot store under DIR; anything else is read through the
    /// nix CLI.
    pub fn from_url(url: Option<&str>) -> Result<Self> {
        let store_dir = env_or("NIX_STORE_DIR", "/nix/store");
        let state_dir = env_or("NIX_STATE_DIR", "/nix/var/nix");
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        let Some(url) = url else {
            return Ok(Self::local(
                &store_dir,
                PathBuf::from(&store_dir),
                &state_dir,
                None,
            ));
        };
        let (scheme, query) = url.split_once('?').unwrap_or((url, ""));
        let mut root = None;
        let mut params_store = None;
        let mut params_state = None;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v);
            match k {
                "root" => root = Some(v),
                "store" => params_store = Some(v),
                "state" => params_state = Some(v),
                _ => {}
            }
        }
        match scheme {
            "auto" | "local" | "daemon" => {}
            s if s.starts_with('/') => root = Some(s.to_owned()),
            s if s.contains("://") => {
                return Ok(Self::Remote {
                    url: url.to_owned(),
                    store_dir: params_store.unwrap_or(store_dir),
                });
            }
            _ => {
                return Err(Error::BadUrl {
                    url: url.to_owned(),
                    reason: "expected local, daemon, auto, an absolute path or SCHEME://...".into(),
                });
            }
        }
        let store_dir = params_store.unwrap_or(store_dir);
        let state_given = params_state.clone();
        let state_dir = params_state.unwrap_or(state_dir);
        Ok(if let Some(root) = root {
            // As Nix: the store's files under root + store dir, its state under
            // root + /nix/var/nix unless `state=` names it (taken as given).
            let root = Path::new(&root);
            let under = |p: &str| root.join(p.trim_start_matches('/'));
            let real = under(&store_dir);
            let state = state_given.map_or_else(|| under("/nix/var/nix"), PathBuf::from);
            Self::local(
                &store_dir,
                real,
                &state.to_string_lossy(),
                Some(url.to_owned()),
            )
        } else {
            // Plain `auto`/`local` is what the CLI does anyway; keep anything more
            // specific (a daemon, explicit directories) for the CLI fallback.
            let url = (scheme == "daemon" || !query.is_empty()).then(|| url.to_owned());
            Self::local(&store_dir, PathBuf::from(&store_dir), &state_dir, url)
        })
    }

    fn local(store_dir: &str, real: PathBuf, state_dir: &str, url: Option<String>) -> Self {
        Self::Local(LocalStore {
            store_dir: store_dir.to_owned(),
            real_store_dir: real,
            db: Path::new(state_dir).join("db/db.sqlite"),
            url,
        })
    }

    /// The logical store directory.
    pub fn store_dir(&self) -> &str {
        match self {
            Self::Local(l) => &l.store_dir,
            Self::Remote { store_dir, .. } => store_dir,
        }
    }

    /// The URL to pass to `nix --store`, if any.
    pub fn url(&self) -> Option<&str> {
        match self {
            Self::Local(l) => l.url.as_deref(),
            Self::Remote { url, .. } => Some(url),
        }
    }

    /// Checks that there is a store to read before the nix CLI is asked about it: Nix
    /// creates a missing local or `file://` store (its directories and database) even to
    /// read, and reading must not create anything.
    ///
    /// # Errors
    /// [`Error::NoStore`] naming what is missing.
    pub fn check_exists(&self) -> Result<()> {
        let missing = match self {
            Self::Local(l) => {
                // Through the daemon nothing is created; it owns the store.
                let state = l.db.parent().and_then(Path::parent);
                let daemon = l.url.as_deref() == Some("daemon")
                    || (l.url.is_none()
                        && state.is_some_and(|s| s.join("daemon-socket/socket").exists()));
                if daemon || l.db.exists() {
                    return Ok(());
                }
                if l.real_store_dir.is_dir() {
                    l.db.clone()
                } else {
                    l.real_store_dir.clone()
                }
            }
            Self::Remote { url, .. } => match url.strip_prefix("file://") {
                Some(rest) => {
                    let dir = PathBuf::from(rest.split('?').next().unwrap_or(rest));
                    if dir.join("nix-cache-info").is_file() {
                        return Ok(());
                    }
                    dir.join("nix-cache-info")
                }
                None => return Ok(()),
            },
        };
        Err(Error::NoStore {
            store: self.describe(),
            missing,
        })
    }

    /// A name for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(l) if l.url.is_none() => l.store_dir.clone(),
            _ => self.url().unwrap_or_default().to_owned(),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let Store::Local(l) = Store::from_url(Some("local?root=/tmp/r")).unwrap() else {
            panic!("local expected")
        };
        assert_eq!(
            l.real_path("/nix/store/x-a"),
            PathBuf::from("/tmp/r/nix/store/x-a")
        );
        assert_eq!(l.db, PathBuf::from("/tmp/r/nix/var/nix/db/db.sqlite"));
        assert!(matches!(
            Store::from_url(Some("ssh-ng://root@host")).unwrap(),
            Store::Remote { .. }
        ));
        assert!(Store::from_url(Some("bogus")).is_err());
        let Store::Local(l) = Store::from_url(Some("local?store=/s/store&state=/s/var")).unwrap()
        else {
            panic!("local expected")
        };
        assert_eq!(
            (l.store_dir.as_str(), l.db.as_path()),
            ("/s/store", Path::new("/s/var/db/db.sqlite"))
        );
        assert_eq!(l.url.as_deref(), Some("local?store=/s/store&state=/s/var"));
        assert_eq!(percent_decode("local%3Froot%3D%2Fx"), "local?root=/x");
        assert_eq!(
            percent_decode("/tmp/%aé"),
            "/tmp/%aé",
            "no panic on a broken escape"
        );
    }
}

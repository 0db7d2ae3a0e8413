//! Private, throw-away Nix stores: a store directory, state, logs and nix.conf of their own,
//! selected with the environment variables every Nix command honours.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The settings every Nix call of the testbed uses (docs/testbed.md): no binary cache (no
/// network here, and retries cost seconds), builds as the calling user (two stores' build
/// users share UIDs and kill each other's builds), no sandbox (the busybox builder needs
/// nothing outside the store).
const NIX_CONF: &str = "substituters =\nexperimental-features = nix-command flakes\nbuild-users-group =\nsandbox = false\n";

/// Where a store keeps what, relative to its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `store/`, `var/`, `log/`, `etc/`: the default for tests.
    Compact,
    /// `store/`, `var/nix/`, `var/log/nix/`, `etc/nix/`, as under `/nix`: mounted on `/nix`
    /// in a private mount namespace it is the machine's store to every tool, even those
    /// that hard-code `/nix/var/nix/db/db.sqlite` (the benchmark's peers).
    Nix,
}

/// A Nix store of its own under one directory.
#[derive(Debug)]
pub struct PrivateStore {
    root: PathBuf,
    layout: Layout,
    _temp: Option<tempfile::TempDir>,
}

impl PrivateStore {
    /// Makes (or reopens) a store under `root`.
    pub fn at(root: &Path) -> Result<Self> {
        Self::at_with(root, Layout::Compact)
    }

    /// Makes (or reopens) a store under `root` with the given layout.
    pub fn at_with(root: &Path, layout: Layout) -> Result<Self> {
        let root = std::path::absolute(root).map_err(|source| Error::CreateStore {
            path: root.to_owned(),
            source,
        })?;
        let store = Self {
            root,
            layout,
            _temp: None,
        };
        store.init()?;
        Ok(store)
    }

    /// Makes a store in a temporary directory removed when the value is dropped.
    pub fn temp() -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("waymark-store-")
            .tempdir()
            .map_err(|source| Error::CreateStore {
                path: std::env::temp_dir(),
                source,
            })?;
        let store = Self {
            root: temp.path().to_owned(),
            layout: Layout::Compact,
            _temp: Some(temp),
        };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        let err = |source| Error::CreateStore {
            path: self.root.clone(),
            source,
        };
        for dir in [
            self.store_dir(),
            self.state_dir(),
            self.log_dir(),
            self.conf_dir(),
        ] {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(self.conf_dir().join("nix.conf"), NIX_CONF).map_err(err)
    }

    /// The directory everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logical and physical store directory (`NIX_STORE_DIR`).
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The state directory holding the database, profiles and GC roots (`NIX_STATE_DIR`).
    pub fn state_dir(&self) -> PathBuf {
        match self.layout {
            Layout::Compact => self.root.join("var"),
            Layout::Nix => self.root.join("var/nix"),
        }
    }

    fn log_dir(&self) -> PathBuf {
        match self.layout {
            Layout::Compact => self.root.join("log"),
            Layout::Nix => self.root.join("var/log/nix"),
        }
    }

    fn conf_dir(&self) -> PathBuf {
        match self.layout {
            Layout::Compact => self.root.join("etc"),
            Layout::Nix => self.root.join("etc/nix"),
        }
    }

    /// The store's `SQLite` database.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir().join("db/db.sqlite")
    }

    /// A Nix store URL naming this store, for `--store`.
    pub fn url(&self) -> String {
        format!(
            "local?store={}&state={}&log={}",
            self.store_dir().display(),
            self.state_dir().display(),
            self.log_dir().display()
        )
    }

    /// The environment that points Nix (and Waymark) at this store.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("NIX_STORE_DIR", self.store_dir().into()),
            ("NIX_STATE_DIR", self.state_dir().into()),
            ("NIX_LOG_DIR", self.log_dir().into()),
            ("NIX_CONF_DIR", self.conf_dir().into()),
            // NIX_CONFIG would override nix.conf; the store's own settings must win.
            ("NIX_CONFIG", NIX_CONF.into()),
        ]
    }

    /// Returns a command for `program` with this store's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env());
        cmd
    }

    /// Runs a prepared command, returning its stdout or its stderr as the error.
    pub fn run(&self, mut cmd: Command) -> Result<String> {
        crate::cmd::run(&mut cmd)
    }

    /// Builds attributes of a Nix expression file and returns their output paths in order.
    pub fn build(&self, file: &Path, attrs: &[&str]) -> Result<Vec<String>> {
        let mut cmd = self.command("nix-build");
        cmd.arg(file).arg("--no-out-link").arg("--quiet");
        for a in attrs {
            cmd.arg("-A").arg(a);
        }
        Ok(self.run(cmd)?.lines().map(str::to_owned).collect())
    }
}

/// Finds a static busybox: `WAYMARK_BUSYBOX`, then Debian's `busybox-static` locations.
pub fn busybox() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WAYMARK_BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or(Error::NoBusybox)
}

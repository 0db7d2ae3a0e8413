use std::path::PathBuf;

/// Errors of the testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No static busybox: without it nothing can be built in a store without nixpkgs.
    #[error("no static busybox found (set WAYMARK_BUSYBOX, or install Debian's busybox-static)")]
    NoBusybox,
    /// The private store's directories could not be made.
    #[error("creating the private store in {path}")]
    CreateStore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A nix command could not be started (not installed, not on PATH).
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A nix command failed; its stderr is kept because it is the only explanation.
    #[error("{program} failed: {stderr}")]
    Nix { program: String, stderr: String },
    /// No Debian root for the systemd hosts (made once, outside the tests: it needs the
    /// Debian package registry), or one made by an older script.
    #[error(
        "no systemd root made by this version at {path}: make it with crates/waymark-testbed/systemd-root.sh (as .ci/run does; needs mmdebstrap)"
    )]
    NoSystemdRoot { path: PathBuf },
    /// Writing the generated expression failed.
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result of the testbed.
pub type Result<T> = std::result::Result<T, Error>;

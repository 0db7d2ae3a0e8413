//! Test support for Waymark: NixOS-like system closures built for real, with a static
//! busybox as the only builder, in private throw-away Nix stores, together with the
//! ground truth of what differs between two generations; an sshd serving a store
//! ([`SshHost`]); simulated machines with their own `/nix` and `/run` in mount
//! namespaces ([`SimFleet`]), or booted with a real systemd ([`SystemdLab`]); a fleet
//! flake in git ([`FleetFlake`]); and the deploy [`Lab`] that the deploy tests, the demo
//! and the benchmark stand on. What the lab is,
//! what it needs and what it does not simulate: `docs/testbed.md` in the repository.
//!
//! # Example
//! ```no_run
//! use waymark_testbed::{build_pair, fixtures, PrivateStore};
//!
//! let store = PrivateStore::temp()?;
//! let pair = build_pair(&store, &fixtures::web_gen1(), &fixtures::web_gen2())?;
//! assert!(pair.truth.upgrades.contains_key("openssl"));
//! println!("{} -> {}", pair.old, pair.new);
//! # Ok::<(), waymark_testbed::Error>(())
//! ```

#[cfg(feature = "browser")]
pub mod browser;
mod cmd;
mod error;
pub mod fixtures;
mod fleet_flake;
pub mod lab;
pub mod model;
mod sim;
mod ssh;
mod store;
mod systemd;
mod truth;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use error::{Error, Result};
pub use fleet_flake::{FlakeHost, FleetFlake, command_check};
pub use lab::{Lab, target_decl};
pub use model::{Generation, Pkg};
pub use sim::{SimFleet, SimHost};
pub use ssh::SshHost;
pub use store::{Layout, PrivateStore, busybox};
pub use systemd::{DEFAULT_ROOT, ROOT_VERSION, SystemdHost, SystemdLab, systemd_root};
pub use truth::{Planted, planted};

/// Two generations built in a store, with what was planted between them.
#[derive(Debug, Clone, Serialize)]
pub struct BuiltPair {
    /// Toplevel store path of the old generation.
    pub old: String,
    /// Toplevel store path of the new generation.
    pub new: String,
    /// The ground truth.
    pub truth: Planted,
}

/// Writes `generations.nix` (attributes `g0`, `g1`, …) and the static busybox it builds
/// with into `dir`, and returns the file's path and the attribute names.
pub fn write_generations(
    dir: &Path,
    generations: &[&Generation],
) -> Result<(PathBuf, Vec<String>)> {
    let bb_dir = dir.join("busybox");
    let bb = bb_dir.join("busybox");
    if !bb.exists() {
        let source = busybox()?;
        std::fs::create_dir_all(&bb_dir)
            .and_then(|()| std::fs::copy(&source, &bb).map(drop))
            .map_err(|source| Error::Write {
                path: bb.clone(),
                source,
            })?;
    }
    let names: Vec<String> = (0..generations.len()).map(|i| format!("g{i}")).collect();
    let pairs: Vec<(&str, &Generation)> = names
        .iter()
        .map(String::as_str)
        .zip(generations.iter().copied())
        .collect();
    let file = dir.join("generations.nix");
    std::fs::write(&file, model::render_file(&pairs)).map_err(|source| Error::Write {
        path: file.clone(),
        source,
    })?;
    Ok((file, names))
}

/// Builds generations in `store` (one evaluation, one `nix-build`) and returns their
/// toplevel paths in order.
pub fn build_generations(store: &PrivateStore, generations: &[&Generation]) -> Result<Vec<String>> {
    let (file, names) = write_generations(store.root(), generations)?;
    let attrs: Vec<&str> = names.iter().map(String::as_str).collect();
    store.build(&file, &attrs)
}

/// Builds an old and a new generation and computes what was planted between them.
pub fn build_pair(store: &PrivateStore, old: &Generation, new: &Generation) -> Result<BuiltPair> {
    let paths = build_generations(store, &[old, new])?;
    Ok(BuiltPair {
        old: paths[0].clone(),
        new: paths[1].clone(),
        truth: planted(old, new),
    })
}

/// Registers `path` as generation `n` of a profile under the store's state directory
/// (`profiles/<name>-<n>-link`, `profiles/<name>` → it), the way `nix-env --set` does.
pub fn set_profile(store: &PrivateStore, name: &str, path: &str) -> Result<std::path::PathBuf> {
    let profile = store.state_dir().join("profiles").join(name);
    let mut cmd = store.command("nix-env");
    cmd.arg("--profile").arg(&profile).arg("--set").arg(path);
    store.run(cmd)?;
    Ok(profile)
}

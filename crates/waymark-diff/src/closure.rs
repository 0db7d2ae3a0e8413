//! The input of a diff: a closure as the store describes it.

use std::collections::BTreeSet;

use crate::name::store_path_name;

/// One store path of a closure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathEntry {
    /// Absolute store path.
    pub path: String,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// The derivation that built it, as recorded by the store (the file may be gone).
    pub deriver: Option<String>,
}

/// A closure: its root, every path in it, and which paths are the system's top-level
/// package selection.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Closure {
    /// The root store path (a system toplevel, a profile generation, any store path).
    pub root: String,
    /// Every path of the closure, the root included.
    pub paths: Vec<PathEntry>,
    /// Paths that were chosen rather than pulled in: see [`selection_parents`].
    pub selected: BTreeSet<String>,
}

/// Names of the package-set paths whose references are the top-level selection: NixOS's
/// `system-path` (`environment.systemPackages`), `nix-env`'s `user-environment` and
/// home-manager's `home-manager-path`.
const SELECTION_SETS: &[&str] = &["system-path", "user-environment", "home-manager-path"];

/// Returns the direct references of a root whose own references are also selected
/// packages (the package sets a system or profile is made of).
pub fn selection_parents(root_refs: &[String]) -> impl Iterator<Item = &String> {
    root_refs
        .iter()
        .filter(|r| store_path_name(r).is_some_and(|n| SELECTION_SETS.contains(&n)))
}

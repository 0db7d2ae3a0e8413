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

impl Closure {
    /// The paths of this closure that `held` lacks, in this closure's order: what a
    /// store holding `held` whole (a closure is valid only with all of its references)
    /// still needs to hold this one.
    pub fn paths_not_in(&self, held: &Closure) -> Vec<&str> {
        let held: BTreeSet<&str> = held.paths.iter().map(|p| p.path.as_str()).collect();
        self.paths
            .iter()
            .map(|p| p.path.as_str())
            .filter(|p| !held.contains(p))
            .collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn closure(paths: &[&str]) -> Closure {
        Closure {
            root: paths[0].to_owned(),
            paths: paths
                .iter()
                .map(|p| PathEntry {
                    path: (*p).to_owned(),
                    nar_size: 1,
                    deriver: None,
                })
                .collect(),
            selected: BTreeSet::new(),
        }
    }

    #[test]
    fn paths_not_in_keeps_only_what_the_other_lacks() {
        let new = closure(&[
            "/nix/store/a-system-2",
            "/nix/store/b-etc-2",
            "/nix/store/c-glibc",
        ]);
        let old = closure(&[
            "/nix/store/d-system-1",
            "/nix/store/e-etc-1",
            "/nix/store/c-glibc",
        ]);
        assert_eq!(
            new.paths_not_in(&old),
            ["/nix/store/a-system-2", "/nix/store/b-etc-2"]
        );
        assert!(new.paths_not_in(&new).is_empty());
        assert_eq!(new.paths_not_in(&Closure::default()).len(), 3);
    }
}

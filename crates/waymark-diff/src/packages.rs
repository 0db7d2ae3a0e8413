//! The package-version half of the diff: pairing closure paths by package name.

use std::collections::{BTreeMap, BTreeSet};

use crate::closure::{Closure, PathEntry};
use crate::name::{drv_name, package_id, store_path_name};
use crate::report::{Direction, OutputsChange, PackageVersions, Rebuild, VersionChange};
use crate::version::{compare_versions, sort_versions};

/// version → output → paths
type Versions<'a> = BTreeMap<String, BTreeMap<String, Vec<&'a PathEntry>>>;

struct Side<'a> {
    packages: BTreeMap<String, Versions<'a>>,
    selected: &'a BTreeSet<String>,
}

impl<'a> Side<'a> {
    fn new(closure: &'a Closure) -> Self {
        let mut packages: BTreeMap<String, Versions<'a>> = BTreeMap::new();
        for entry in &closure.paths {
            let Some(name) = store_path_name(&entry.path) else {
                continue;
            };
            let id = package_id(name, entry.deriver.as_deref().and_then(drv_name));
            packages
                .entry(id.pname)
                .or_default()
                .entry(id.version)
                .or_default()
                .entry(id.output)
                .or_default()
                .push(entry);
        }
        Side {
            packages,
            selected: &closure.selected,
        }
    }

    fn is_selected(&self, versions: Option<&Versions<'_>>) -> bool {
        versions.is_some_and(|v| {
            v.values()
                .flat_map(BTreeMap::values)
                .flatten()
                .any(|e| self.selected.contains(&e.path))
        })
    }
}

fn nar_size(versions: Option<&Versions<'_>>) -> u64 {
    versions.map_or(0, |v| {
        v.values()
            .flat_map(BTreeMap::values)
            .flatten()
            .map(|e| e.nar_size)
            .sum()
    })
}

fn delta(after: u64, before: u64) -> i64 {
    after as i64 - before as i64
}

fn sorted_versions(versions: &Versions<'_>) -> Vec<String> {
    let mut v: Vec<String> = versions.keys().cloned().collect();
    sort_versions(&mut v);
    v
}

fn direction(removed: &[&String], added: &[&String]) -> Direction {
    use std::cmp::Ordering::{Greater, Less};
    let all = |want| {
        !removed.is_empty()
            && !added.is_empty()
            && removed
                .iter()
                .all(|r| added.iter().all(|a| compare_versions(a, r) == want))
    };
    if all(Greater) {
        Direction::Upgrade
    } else if all(Less) {
        Direction::Downgrade
    } else {
        Direction::Changed
    }
}

/// A rebuilt package output whose old and new paths pair one to one: the starting point
/// of the structural diff.
#[derive(Debug, Clone)]
pub struct RebuildPair<'a> {
    /// Index into the rebuild list.
    pub rebuild: usize,
    /// The old path.
    pub old: &'a PathEntry,
    /// The new path.
    pub new: &'a PathEntry,
}

/// The version half of the report, plus the rebuilt paths to explain.
#[derive(Debug, Default)]
pub struct PackageDiff<'a> {
    pub changed: Vec<VersionChange>,
    pub added: Vec<PackageVersions>,
    pub removed: Vec<PackageVersions>,
    pub outputs_changed: Vec<OutputsChange>,
    pub rebuilt: Vec<Rebuild>,
    pub pairs: Vec<RebuildPair<'a>>,
}

/// Pairs the two closures by package name and version.
pub fn diff_packages<'a>(old: &'a Closure, new: &'a Closure) -> PackageDiff<'a> {
    let (old_side, new_side) = (Side::new(old), Side::new(new));
    let names: BTreeSet<&String> = old_side
        .packages
        .keys()
        .chain(new_side.packages.keys())
        .collect();
    let mut out = PackageDiff::default();
    for name in names {
        let (before, after) = (old_side.packages.get(name), new_side.packages.get(name));
        let selected = old_side.is_selected(before) || new_side.is_selected(after);
        match (before, after) {
            (None, Some(a)) => out.added.push(PackageVersions {
                name: name.clone(),
                versions: sorted_versions(a),
                selected,
                nar_size: nar_size(after),
            }),
            (Some(b), None) => out.removed.push(PackageVersions {
                name: name.clone(),
                versions: sorted_versions(b),
                selected,
                nar_size: nar_size(before),
            }),
            (Some(b), Some(a)) => {
                let removed: Vec<&String> = b.keys().filter(|v| !a.contains_key(*v)).collect();
                let added: Vec<&String> = a.keys().filter(|v| !b.contains_key(*v)).collect();
                if !removed.is_empty() || !added.is_empty() {
                    out.changed.push(VersionChange {
                        name: name.clone(),
                        before: sorted_versions(b),
                        after: sorted_versions(a),
                        direction: direction(&removed, &added),
                        selected,
                        nar_size_delta: delta(nar_size(after), nar_size(before)),
                    });
                }
                for (version, old_outputs) in b {
                    let Some(new_outputs) = a.get(version) else {
                        continue;
                    };
                    compare_version(&mut out, name, version, old_outputs, new_outputs, selected);
                }
            }
            (None, None) => unreachable!("name comes from one of the sides"),
        }
    }
    out
}

fn compare_version<'a>(
    out: &mut PackageDiff<'a>,
    name: &str,
    version: &str,
    old_outputs: &BTreeMap<String, Vec<&'a PathEntry>>,
    new_outputs: &BTreeMap<String, Vec<&'a PathEntry>>,
    selected: bool,
) {
    let old_names: Vec<String> = old_outputs.keys().cloned().collect();
    let new_names: Vec<String> = new_outputs.keys().cloned().collect();
    if old_names != new_names {
        out.outputs_changed.push(OutputsChange {
            name: name.to_owned(),
            version: version.to_owned(),
            before: old_names,
            after: new_names,
            selected,
        });
    }
    let index = out.rebuilt.len();
    let mut rebuild = Rebuild {
        name: name.to_owned(),
        version: version.to_owned(),
        outputs: Vec::new(),
        selected,
        nar_size_delta: 0,
        causes: Vec::new(),
    };
    for (output, old_paths) in old_outputs {
        let Some(new_paths) = new_outputs.get(output) else {
            continue;
        };
        let same = old_paths.len() == new_paths.len()
            && old_paths
                .iter()
                .all(|o| new_paths.iter().any(|n| n.path == o.path));
        if same {
            continue;
        }
        rebuild.outputs.push(output.clone());
        let sum = |paths: &[&PathEntry]| paths.iter().map(|e| e.nar_size).sum::<u64>();
        rebuild.nar_size_delta += delta(sum(new_paths), sum(old_paths));
        // Several unversioned paths of one name (`source`, `hook`) cannot be paired by name;
        // they pair when exactly one path changed on each side.
        let gone: Vec<&&PathEntry> = old_paths
            .iter()
            .filter(|o| !new_paths.iter().any(|n| n.path == o.path))
            .collect();
        let came: Vec<&&PathEntry> = new_paths
            .iter()
            .filter(|n| !old_paths.iter().any(|o| o.path == n.path))
            .collect();
        if let ([o], [n]) = (gone.as_slice(), came.as_slice()) {
            out.pairs.push(RebuildPair {
                rebuild: index,
                old: o,
                new: n,
            });
        }
    }
    if !rebuild.outputs.is_empty() {
        out.rebuilt.push(rebuild);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: char, name: &str, deriver: Option<&str>) -> PathEntry {
        let h: String = std::iter::repeat_n(hash, 32).collect();
        PathEntry {
            path: format!("/nix/store/{h}-{name}"),
            nar_size: 100,
            deriver: deriver.map(|d| format!("/nix/store/{h}-{d}.drv")),
        }
    }

    fn closure(entries: Vec<PathEntry>) -> Closure {
        Closure {
            root: entries[0].path.clone(),
            paths: entries,
            selected: BTreeSet::new(),
        }
    }

    #[test]
    fn output_set_change_is_not_a_version_change() {
        let old = closure(vec![entry('a', "krb5-1.21.2-lib", Some("krb5-1.21.2"))]);
        let new = closure(vec![
            entry('a', "krb5-1.21.2-lib", Some("krb5-1.21.2")),
            entry('a', "krb5-1.21.2", Some("krb5-1.21.2")),
        ]);
        let d = diff_packages(&old, &new);
        assert!(d.changed.is_empty() && d.rebuilt.is_empty() && d.added.is_empty());
        assert_eq!(d.outputs_changed[0].before, ["lib"]);
        assert_eq!(d.outputs_changed[0].after, ["lib", "out"]);
    }

    #[test]
    fn several_versions_and_directions() {
        let old = closure(vec![
            entry('a', "openssl-1.1.1w", None),
            entry('b', "openssl-3.0.13", None),
            entry('c', "nginx-1.26.0", None),
            entry('d', "python3-3.11.9", None),
        ]);
        let new = closure(vec![
            entry('a', "openssl-1.1.1w", None),
            entry('e', "openssl-3.0.14", None),
            entry('f', "nginx-1.24.0", None),
            entry('g', "python3-3.11.9", None),
            entry('h', "python3-3.12.3", None),
        ]);
        let d = diff_packages(&old, &new);
        let by_name: BTreeMap<&str, &VersionChange> =
            d.changed.iter().map(|c| (c.name.as_str(), c)).collect();
        assert_eq!(by_name["openssl"].direction, Direction::Upgrade);
        assert_eq!(by_name["openssl"].before, ["1.1.1w", "3.0.13"]);
        assert_eq!(by_name["nginx"].direction, Direction::Downgrade);
        // A version added beside a kept one is a change, not an upgrade of the kept one...
        assert_eq!(by_name["python3"].direction, Direction::Changed);
        // ...and the kept one, rebuilt, is a rebuild.
        assert_eq!(d.rebuilt.len(), 1);
        assert_eq!(
            (d.rebuilt[0].name.as_str(), d.rebuilt[0].version.as_str()),
            ("python3", "3.11.9")
        );
        assert_eq!(d.pairs.len(), 1);
    }

    #[test]
    fn added_removed_and_identical() {
        let old = closure(vec![
            entry('a', "nano-7.2", None),
            entry('b', "bash-5.2p26", None),
        ]);
        let new = closure(vec![
            entry('c', "htop-3.3.0", None),
            entry('b', "bash-5.2p26", None),
        ]);
        let d = diff_packages(&old, &new);
        assert_eq!(d.added[0].name, "htop");
        assert_eq!(d.removed[0].name, "nano");
        assert!(d.changed.is_empty() && d.rebuilt.is_empty());
    }
}

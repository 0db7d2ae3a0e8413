//! The package-version half of the diff: pairing closure paths by package name.
//!
//! Each side becomes one flat list of borrowed (name, version, output, path) items sorted
//! by name, and the two lists are merge-joined: no per-package maps, no copies of names.
//! On a 6,000-path pair this is a few milliseconds next to the database reads.

use std::collections::BTreeSet;

use crate::closure::{Closure, PathEntry};
use crate::name::{drv_name, split_package, store_path_name};
use crate::report::{Direction, OutputsChange, PackageVersions, Rebuild, VersionChange};
use crate::version::{compare_versions, sort_versions};

/// One path of a closure as a package output.
#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    pname: &'a str,
    version: &'a str,
    output: &'a str,
    entry: &'a PathEntry,
}

/// The items of a closure sorted by (name, version, output, path).
fn items(closure: &Closure) -> Vec<Item<'_>> {
    let mut items: Vec<Item<'_>> = closure
        .paths
        .iter()
        .filter_map(|entry| {
            let name = store_path_name(&entry.path)?;
            let (pname, version, output) =
                split_package(name, entry.deriver.as_deref().and_then(drv_name));
            Some(Item {
                pname,
                version,
                output,
                entry,
            })
        })
        .collect();
    items.sort_unstable_by(|a, b| {
        (a.pname, a.version, a.output, &a.entry.path).cmp(&(
            b.pname,
            b.version,
            b.output,
            &b.entry.path,
        ))
    });
    items
}

fn nar_size(items: &[Item<'_>]) -> u64 {
    items.iter().map(|i| i.entry.nar_size).sum()
}

fn delta(after: u64, before: u64) -> i64 {
    after as i64 - before as i64
}

/// Distinct versions of a package's items (sorted by text, as the items are).
fn versions<'a>(items: &[Item<'a>]) -> Vec<&'a str> {
    let mut v: Vec<&str> = items.iter().map(|i| i.version).collect();
    v.dedup();
    v
}

fn sorted_versions(items: &[Item<'_>]) -> Vec<String> {
    let mut v: Vec<String> = versions(items).into_iter().map(str::to_owned).collect();
    sort_versions(&mut v);
    v
}

/// Splits sorted items into runs sharing a key.
fn runs<'s, 'a, K: PartialEq>(
    items: &'s [Item<'a>],
    key: impl Fn(&Item<'a>) -> K,
) -> impl Iterator<Item = &'s [Item<'a>]> {
    items.chunk_by(move |a, b| key(a) == key(b))
}

fn direction(removed: &[&str], added: &[&str]) -> Direction {
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

/// Whether any of a package's paths, on either side, is in that side's selection.
/// Only asked for packages that are reported.
struct Selection<'a> {
    old: &'a BTreeSet<String>,
    new: &'a BTreeSet<String>,
}

impl Selection<'_> {
    fn any(&self, before: &[Item<'_>], after: &[Item<'_>]) -> bool {
        before.iter().any(|i| self.old.contains(&i.entry.path))
            || after.iter().any(|i| self.new.contains(&i.entry.path))
    }
}

/// Pairs the two closures by package name and version.
pub fn diff_packages<'a>(old: &'a Closure, new: &'a Closure) -> PackageDiff<'a> {
    let (old_items, new_items) = rayon::join(|| items(old), || items(new));
    let sel = Selection {
        old: &old.selected,
        new: &new.selected,
    };
    let mut out = PackageDiff::default();
    let mut before = runs(&old_items, |i| i.pname).peekable();
    let mut after = runs(&new_items, |i| i.pname).peekable();
    loop {
        let (b, a) = match (before.peek(), after.peek()) {
            (None, None) => break,
            (Some(b), Some(a)) => match b[0].pname.cmp(a[0].pname) {
                std::cmp::Ordering::Less => (before.next(), None),
                std::cmp::Ordering::Greater => (None, after.next()),
                std::cmp::Ordering::Equal => (before.next(), after.next()),
            },
            (Some(_), None) => (before.next(), None),
            (None, Some(_)) => (None, after.next()),
        };
        match (b, a) {
            (None, Some(a)) => out.added.push(PackageVersions {
                name: a[0].pname.to_owned(),
                versions: sorted_versions(a),
                selected: sel.any(&[], a),
                nar_size: nar_size(a),
            }),
            (Some(b), None) => out.removed.push(PackageVersions {
                name: b[0].pname.to_owned(),
                versions: sorted_versions(b),
                selected: sel.any(b, &[]),
                nar_size: nar_size(b),
            }),
            (Some(b), Some(a)) => compare_package(&mut out, &sel, b, a),
            (None, None) => unreachable!("one side has a package"),
        }
    }
    out
}

fn compare_package<'a>(
    out: &mut PackageDiff<'a>,
    sel: &Selection<'_>,
    b: &[Item<'a>],
    a: &[Item<'a>],
) {
    let (bv, av) = (versions(b), versions(a));
    let removed: Vec<&str> = bv.iter().copied().filter(|v| !av.contains(v)).collect();
    let added: Vec<&str> = av.iter().copied().filter(|v| !bv.contains(v)).collect();
    let name = b[0].pname;
    if !removed.is_empty() || !added.is_empty() {
        out.changed.push(VersionChange {
            name: name.to_owned(),
            before: sorted_versions(b),
            after: sorted_versions(a),
            direction: direction(&removed, &added),
            selected: sel.any(b, a),
            nar_size_delta: delta(nar_size(a), nar_size(b)),
        });
    }
    let new_by_version: Vec<&[Item<'a>]> = runs(a, |i| i.version).collect();
    for old_version in runs(b, |i| i.version) {
        let version = old_version[0].version;
        if let Some(new_version) = new_by_version.iter().find(|r| r[0].version == version) {
            compare_version(out, sel, old_version, new_version);
        }
    }
}

fn compare_version<'a>(
    out: &mut PackageDiff<'a>,
    sel: &Selection<'_>,
    b: &[Item<'a>],
    a: &[Item<'a>],
) {
    let outputs = |items: &[Item<'_>]| -> Vec<String> {
        let mut o: Vec<String> = items.iter().map(|i| i.output.to_owned()).collect();
        o.dedup();
        o
    };
    let (old_outputs, new_outputs) = (outputs(b), outputs(a));
    let (name, version) = (b[0].pname, b[0].version);
    let mut selected = None;
    let mut is_selected = || *selected.get_or_insert_with(|| sel.any(b, a));
    if old_outputs != new_outputs {
        out.outputs_changed.push(OutputsChange {
            name: name.to_owned(),
            version: version.to_owned(),
            before: old_outputs,
            after: new_outputs,
            selected: is_selected(),
        });
    }
    let index = out.rebuilt.len();
    let mut rebuild = Rebuild {
        name: name.to_owned(),
        version: version.to_owned(),
        outputs: Vec::new(),
        selected: false,
        nar_size_delta: 0,
        causes: Vec::new(),
    };
    let new_outputs: Vec<&[Item<'a>]> = runs(a, |i| i.output).collect();
    for old_paths in runs(b, |i| i.output) {
        let output = old_paths[0].output;
        let Some(new_paths) = new_outputs.iter().find(|r| r[0].output == output) else {
            continue;
        };
        let same = old_paths.len() == new_paths.len()
            && old_paths
                .iter()
                .zip(new_paths.iter())
                .all(|(o, n)| o.entry.path == n.entry.path);
        if same {
            continue;
        }
        rebuild.outputs.push(output.to_owned());
        rebuild.nar_size_delta += delta(nar_size(new_paths), nar_size(old_paths));
        // Several unversioned paths of one name (`source`, `hook`) cannot be paired by name;
        // they pair when exactly one path changed on each side.
        let gone: Vec<&Item<'a>> = old_paths
            .iter()
            .filter(|o| !new_paths.iter().any(|n| n.entry.path == o.entry.path))
            .collect();
        let came: Vec<&Item<'a>> = new_paths
            .iter()
            .filter(|n| !old_paths.iter().any(|o| o.entry.path == n.entry.path))
            .collect();
        if let ([o], [n]) = (gone.as_slice(), came.as_slice()) {
            out.pairs.push(RebuildPair {
                rebuild: index,
                old: o.entry,
                new: n.entry,
            });
        }
    }
    if !rebuild.outputs.is_empty() {
        rebuild.selected = is_selected();
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
        let by_name: std::collections::BTreeMap<&str, &VersionChange> =
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
    fn release_candidate_to_release_is_an_upgrade() {
        // Issue 22: these moves were reported as downgrades, following Nix's order.
        let old = closure(vec![
            entry('a', "etcd-1.9.6-rc4", None),
            entry('b', "libfoo-1.1.5-rc2", None),
            entry('c', "bar-2.0", None),
        ]);
        let new = closure(vec![
            entry('d', "etcd-1.9.6", None),
            entry('e', "libfoo-1.1.5", None),
            entry('f', "bar-2.0-rc1", None),
        ]);
        let d = diff_packages(&old, &new);
        let by_name: std::collections::BTreeMap<&str, &VersionChange> =
            d.changed.iter().map(|c| (c.name.as_str(), c)).collect();
        assert_eq!(by_name["etcd"].direction, Direction::Upgrade);
        assert_eq!(by_name["libfoo"].direction, Direction::Upgrade);
        assert_eq!(by_name["bar"].direction, Direction::Downgrade);
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

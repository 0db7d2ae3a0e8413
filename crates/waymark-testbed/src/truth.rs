//! The ground truth of a generation pair, computed from the model alone (never from the
//! store), so tests can hold the diff to it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{Generation, Pkg};

/// What changed between two generations, by package name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Planted {
    /// Package name → (versions before, versions after), every new version newer.
    pub upgrades: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// Package name → (versions before, versions after), every new version older.
    pub downgrades: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// Packages only in the new closure.
    pub added: BTreeSet<String>,
    /// Packages only in the old closure.
    pub removed: BTreeSet<String>,
    /// Package name → (outputs before, outputs after), version unchanged.
    pub outputs_changed: BTreeMap<String, (Vec<String>, Vec<String>)>,
    /// Package rebuilt at the same version → names of the packages whose own change
    /// caused it.
    pub rebuilds: BTreeMap<String, BTreeSet<String>>,
    /// Packages that changed by themselves (root causes) → what changed, in words.
    pub causes: BTreeMap<String, String>,
}

/// What a package looks like in one closure: version → outputs.
type Presence = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn presence(g: &Generation) -> Presence {
    let all = g.all_packages();
    let by_key: BTreeMap<&str, &Pkg> = all.iter().map(|p| (p.key.as_str(), p)).collect();
    let mut out: Presence = BTreeMap::new();
    for (key, output) in g.closure() {
        let p = by_key[key.as_str()];
        out.entry(p.pname.clone())
            .or_default()
            .entry(p.version.clone())
            .or_default()
            .insert(output);
    }
    out
}

/// Describes how a package changed by itself, or `None` when only its inputs did.
fn local_change(old: &Pkg, new: &Pkg) -> Option<String> {
    let mut what = Vec::new();
    if old.version != new.version {
        what.push(format!("version {} -> {}", old.version, new.version));
    }
    if old.env != new.env || old.size != new.size {
        what.push("environment".to_owned());
    }
    if old.extra_args != new.extra_args {
        what.push("builder arguments".to_owned());
    }
    if old.src != new.src {
        what.push("source".to_owned());
    }
    if old.outputs != new.outputs {
        what.push("outputs".to_owned());
    }
    let set = |p: &Pkg| p.deps.iter().cloned().collect::<BTreeSet<_>>();
    let bset = |p: &Pkg| p.build_deps.iter().cloned().collect::<BTreeSet<_>>();
    if set(old) != set(new) || bset(old) != bset(new) {
        what.push("inputs".to_owned());
    }
    (!what.is_empty()).then(|| what.join(", "))
}

/// Computes the ground truth of `old` → `new`.
pub fn planted(old: &Generation, new: &Generation) -> Planted {
    let mut truth = Planted::default();
    let (before, after) = (presence(old), presence(new));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        match (before.get(name), after.get(name)) {
            (None, Some(_)) => {
                truth.added.insert(name.clone());
            }
            (Some(_), None) => {
                truth.removed.insert(name.clone());
            }
            (Some(b), Some(a)) => {
                let gone: Vec<&String> = b.keys().filter(|v| !a.contains_key(*v)).collect();
                let came: Vec<&String> = a.keys().filter(|v| !b.contains_key(*v)).collect();
                let all = |o: Ordering| {
                    !gone.is_empty()
                        && !came.is_empty()
                        && gone
                            .iter()
                            .all(|g| came.iter().all(|c| version_cmp(c, g) == o))
                };
                let versions = || (b.keys().cloned().collect(), a.keys().cloned().collect());
                if all(Ordering::Greater) {
                    truth.upgrades.insert(name.clone(), versions());
                } else if all(Ordering::Less) {
                    truth.downgrades.insert(name.clone(), versions());
                }
                for (v, outs) in b {
                    if let Some(new_outs) = a.get(v)
                        && outs != new_outs
                    {
                        truth.outputs_changed.insert(
                            name.clone(),
                            (
                                outs.iter().cloned().collect(),
                                new_outs.iter().cloned().collect(),
                            ),
                        );
                    }
                }
            }
            (None, None) => {}
        }
    }
    // Rebuilds: same key on both sides, same version, changed by itself or through a
    // dependency; causes propagate up the dependency graph.
    let (old_all, new_all) = (old.all_packages(), new.all_packages());
    let old_by_key: BTreeMap<&str, &Pkg> = old_all.iter().map(|p| (p.key.as_str(), p)).collect();
    let new_by_key: BTreeMap<&str, &Pkg> = new_all.iter().map(|p| (p.key.as_str(), p)).collect();
    let mut causes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let old_closure = old.closure();
    let new_closure = new.closure();
    for (key, pkg) in &new_by_key {
        let Some(o) = old_by_key.get(key) else {
            continue;
        };
        let in_both = |c: &BTreeSet<(String, String)>| c.iter().any(|(k, _)| k == key);
        if o.version != pkg.version || !in_both(&old_closure) || !in_both(&new_closure) {
            continue;
        }
        let set = causes_of(key, &old_by_key, &new_by_key, &mut causes, &mut truth);
        if !set.is_empty() {
            truth.rebuilds.insert(pkg.pname.clone(), set);
        }
    }
    // Only causes that explain a rebuild in the closure are root causes of the diff.
    let used: BTreeSet<&String> = truth.rebuilds.values().flatten().collect();
    truth.causes.retain(|name, _| used.contains(name));
    truth
}

/// The packages whose own change reaches `key` through its inputs (itself included).
fn causes_of(
    key: &str,
    old: &BTreeMap<&str, &Pkg>,
    new: &BTreeMap<&str, &Pkg>,
    memo: &mut BTreeMap<String, BTreeSet<String>>,
    truth: &mut Planted,
) -> BTreeSet<String> {
    if let Some(c) = memo.get(key) {
        return c.clone();
    }
    let mut set = BTreeSet::new();
    if let (Some(o), Some(n)) = (old.get(key), new.get(key)) {
        if let Some(what) = local_change(o, n) {
            set.insert(n.pname.clone());
            truth.causes.insert(n.pname.clone(), what);
        }
        let inputs: BTreeSet<&str> = n
            .deps
            .iter()
            .map(|d| d.0.as_str())
            .chain(n.build_deps.iter().map(String::as_str))
            .filter(|k| *k != key)
            .collect();
        for input in inputs {
            set.extend(causes_of(input, old, new, memo, truth));
        }
    }
    memo.insert(key.to_owned(), set.clone());
    set
}

/// Nix version order, kept apart from the engine's so the truth does not share its bugs:
/// numeric components compare as numbers, others as text.
fn version_cmp(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<String> { s.split(['.', '-']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{web_gen1, web_gen2};

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|&s| s.to_owned()).collect()
    }

    /// The truth of the web pair is what its documentation says was planted.
    #[test]
    fn web_pair_truth() {
        let t = planted(&web_gen1(), &web_gen2());
        assert_eq!(
            t.upgrades.keys().cloned().collect::<BTreeSet<_>>(),
            set(&["linux", "openssl"])
        );
        assert_eq!(
            t.downgrades.keys().cloned().collect::<BTreeSet<_>>(),
            set(&["nginx"])
        );
        assert_eq!(t.added, set(&["htop", "ncurses", "openssh"]));
        assert_eq!(t.removed, set(&["nano"]));
        assert_eq!(
            t.outputs_changed["krb5"],
            (vec!["lib".into()], vec!["lib".into(), "out".into()])
        );
        assert_eq!(t.rebuilds["curl"], set(&["openssl"]));
        assert_eq!(t.rebuilds["git"], set(&["openssl", "sqlite"]));
        assert_eq!(t.rebuilds["systemd"], set(&["dbus"]));
        assert_eq!(t.rebuilds["bash"], set(&["bash"]));
        assert!(
            !t.rebuilds.contains_key("krb5"),
            "an output-set change is no rebuild"
        );
        assert_eq!(t.causes["sqlite"], "environment");
        assert_eq!(t.causes["dbus"], "source");
        assert_eq!(t.causes["bash"], "builder arguments");
    }

    #[test]
    fn mass_rebuild_truth() {
        let (old, new) =
            crate::fixtures::synthetic_pair(200, 7, crate::fixtures::Scenario::MassRebuild);
        let t = planted(&old, &new);
        assert_eq!(
            t.causes.keys().cloned().collect::<BTreeSet<_>>(),
            set(&["glibc"])
        );
        assert!(t.rebuilds.values().all(|c| c == &set(&["glibc"])));
        assert!(
            t.rebuilds.len() > 150,
            "every package of the closure: {}",
            t.rebuilds.len()
        );
    }
}

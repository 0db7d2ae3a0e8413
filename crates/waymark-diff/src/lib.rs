//! Pure closure diff engine of Waymark: no I/O, so every rule is unit-testable.
//!
//! Given two [`Closure`]s (as the store describes them) and a way to read derivation files,
//! [`diff`] produces a [`DiffReport`]: package versions moved, added and removed (with the
//! set of outputs kept apart from versions), and for every package rebuilt without a
//! version change, the root causes found by walking the derivations.
//!
//! # Example
//! ```
//! use waymark_diff::{diff, Closure, PathEntry};
//!
//! let closure = |root: &str, paths: &[&str]| Closure {
//!     root: root.to_owned(),
//!     paths: paths
//!         .iter()
//!         .map(|p| PathEntry { path: (*p).to_owned(), nar_size: 100, deriver: None })
//!         .collect(),
//!     selected: Default::default(),
//! };
//! let old = closure(
//!     "/nix/store/00000000000000000000000000000000-sys-1",
//!     &["/nix/store/00000000000000000000000000000000-sys-1",
//!       "/nix/store/11111111111111111111111111111111-openssl-3.0.13"],
//! );
//! let new = closure(
//!     "/nix/store/22222222222222222222222222222222-sys-2",
//!     &["/nix/store/22222222222222222222222222222222-sys-2",
//!       "/nix/store/33333333333333333333333333333333-openssl-3.0.14"],
//! );
//! let no_drvs = |p: &str| Err::<Vec<u8>, _>(format!("{p}: not here"));
//! let report = diff(&old, &new, &no_drvs);
//! assert_eq!(report.changed[0].name, "openssl");
//! assert_eq!(report.changed[0].after, ["3.0.14"]);
//! ```

mod causes;
mod closure;
mod name;
mod packages;
mod report;
mod version;

use std::collections::BTreeMap;

pub use causes::DrvLoader;
pub use closure::{Closure, PathEntry, selection_parents};
pub use name::{PackageId, drv_name, package_id, parse_drv_name, store_path_name};
pub use report::*;
pub use version::{compare_versions, sort_versions};

fn summary(c: &Closure) -> ClosureSummary {
    ClosureSummary {
        path: c.root.clone(),
        paths: c.paths.len(),
        nar_size: c.paths.iter().map(|p| p.nar_size).sum(),
    }
}

/// Diffs two closures, reading derivations through `loader` for the root causes.
pub fn diff(old: &Closure, new: &Closure, loader: &dyn DrvLoader) -> DiffReport {
    diff_with(old, new, Some(loader))
}

/// Diffs two closures; without a loader only versions are compared (no root causes, and
/// no derivation is read).
pub fn diff_with(old: &Closure, new: &Closure, loader: Option<&dyn DrvLoader>) -> DiffReport {
    let packages = packages::diff_packages(old, new);
    let mut report = DiffReport {
        schema: SCHEMA,
        old: summary(old),
        new: summary(new),
        changed: packages.changed,
        added: packages.added,
        removed: packages.removed,
        outputs_changed: packages.outputs_changed,
        rebuilt: packages.rebuilt,
        root_causes: Vec::new(),
        missing_derivations: Vec::new(),
    };
    if let Some(loader) = loader {
        explain(&mut report, &packages.pairs, loader);
    }
    report
}

/// Fills in the root causes of the report's rebuilds by walking their derivations.
fn explain(
    report: &mut DiffReport,
    rebuild_pairs: &[packages::RebuildPair<'_>],
    loader: &dyn DrvLoader,
) {
    let mut missing = Vec::new();
    // (rebuild index, requested pair index)
    let mut requests: Vec<(usize, usize)> = Vec::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for pair in rebuild_pairs {
        let name = &report.rebuilt[pair.rebuild].name;
        match (&pair.old.deriver, &pair.new.deriver) {
            (Some(o), Some(n)) if o != n => {
                requests.push((pair.rebuild, pairs.len()));
                pairs.push((o.clone(), n.clone()));
            }
            (Some(_), Some(_)) => {} // one derivation, two outputs: content-addressed or impure
            (o, n) => {
                for (side, drv) in [(Side::Old, o), (Side::New, n)] {
                    if drv.is_none() {
                        missing.push(MissingDerivation {
                            name: name.clone(),
                            side,
                            drv: None,
                            reason: "the store recorded no deriver".to_owned(),
                        });
                    }
                }
            }
        }
    }
    let analysis = causes::analyze(&pairs, loader);
    for node in &analysis.nodes {
        if let Some((side, reason)) = &node.missing {
            let drv = if *side == Side::Old {
                &node.old
            } else {
                &node.new
            };
            missing.push(MissingDerivation {
                name: drv_name(drv).map_or("", |n| parse_drv_name(n).0).to_owned(),
                side: *side,
                drv: Some(drv.clone()),
                reason: reason.clone(),
            });
        }
    }
    let rebuilt = &mut report.rebuilt;
    for (rebuild, pair) in requests {
        rebuilt[rebuild].causes.extend(&analysis.causes[pair]);
    }
    // Node ids → root-cause list, ordered by how much each explains.
    let mut caused: BTreeMap<usize, usize> = BTreeMap::new();
    for r in rebuilt.iter_mut() {
        r.causes.sort_unstable();
        r.causes.dedup();
        for &c in &r.causes {
            *caused.entry(c).or_default() += 1;
        }
    }
    let mut order: Vec<(usize, usize)> = caused.into_iter().collect();
    let node = |n: usize| &analysis.nodes[n];
    // Most consequential first; ties by name, never by hash, so the order is the same on
    // every machine.
    let key = |n: usize| (drv_name(&node(n).new).unwrap_or_default(), &node(n).new);
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| key(a.0).cmp(&key(b.0))));
    let position: BTreeMap<usize, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    for r in rebuilt.iter_mut() {
        r.causes = r.causes.iter().map(|c| position[c]).collect();
        r.causes.sort_unstable();
    }
    report.root_causes = order
        .into_iter()
        .map(|(n, count)| {
            let node = node(n);
            let before = drv_name(&node.old).unwrap_or_default().to_owned();
            let after = drv_name(&node.new).unwrap_or_default().to_owned();
            RootCause {
                name: parse_drv_name(&after).0.to_owned(),
                before,
                after,
                before_drv: node.old.clone(),
                after_drv: node.new.clone(),
                changes: node.local.clone(),
                caused: count,
            }
        })
        .collect();
    missing.sort_by(|a, b| (&a.name, a.side, &a.drv).cmp(&(&b.name, b.side, &b.drv)));
    missing.dedup();
    report.missing_derivations = missing;
}

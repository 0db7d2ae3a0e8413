//! The structural half of the diff: walking pairs of derivations to find the few local
//! changes that explain every rebuild.
//!
//! Two derivations are compared with store hashes masked, so a variable that only holds a
//! rebuilt input's path is not a change: the input itself is paired and walked instead.
//! Every derivation is read and parsed at most once, a wave of pairs at a time in parallel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use nix_derivation::{Derivation, StoreDir};
use rayon::prelude::*;

use crate::name::{drv_name, parse_drv_name};
use crate::report::{Change, Presence};

/// Reads a derivation file by its store path. Returns the `ATerm` bytes, or why it cannot.
pub trait DrvLoader: Sync {
    /// Reads the `.drv` file at `drv_path`.
    ///
    /// # Errors
    /// A reason for the report when the file is missing or unreadable.
    fn load(&self, drv_path: &str) -> Result<Vec<u8>, String>;
}

impl<F: Fn(&str) -> Result<Vec<u8>, String> + Sync> DrvLoader for F {
    fn load(&self, drv_path: &str) -> Result<Vec<u8>, String> {
        self(drv_path)
    }
}

/// The comparable content of one derivation.
#[derive(Debug)]
struct Drv {
    name: String,
    system: String,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    outputs: Vec<String>,
    /// (path, name)
    input_drvs: Vec<(String, String)>,
    /// (path, name)
    input_srcs: Vec<(String, String)>,
}

/// Replaces the hash of every store path in `s` by `<hash>`.
fn mask_hashes(store_dir: &str, s: &str) -> String {
    let prefix = format!("{store_dir}/");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(&prefix) {
        let after = at + prefix.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let is_hash = rest.len() > 32
            && rest.as_bytes()[32] == b'-'
            && rest.as_bytes()[..32].iter().all(u8::is_ascii_alphanumeric);
        if is_hash {
            out.push_str("<hash>");
            rest = &rest[32..];
        }
    }
    out.push_str(rest);
    out
}

fn parse(drv_path: &str, bytes: &[u8]) -> Result<Drv, String> {
    let (store_dir, _) = drv_path
        .rsplit_once('/')
        .ok_or_else(|| format!("{drv_path} is not a store path"))?;
    let name = drv_name(drv_path).ok_or_else(|| format!("{drv_path} is not a .drv path"))?;
    let dir = StoreDir::new(store_dir).map_err(|e| e.to_string())?;
    let d = Derivation::from_aterm_bytes_in(bytes, name, dir.clone())
        .map_err(|e| format!("parsing {drv_path}: {e}"))?;
    let mask = |s: &str| mask_hashes(store_dir, s);
    let named = |p: &nix_derivation::StorePath| (p.to_absolute_path_in(&dir), p.name().to_owned());
    Ok(Drv {
        name: name.to_owned(),
        system: d.system().to_owned(),
        builder: mask(d.builder()),
        args: d.arguments().iter().map(|a| mask(a)).collect(),
        env: d
            .environment()
            .iter()
            .map(|(k, v)| (k.clone(), mask(&String::from_utf8_lossy(v))))
            .collect(),
        outputs: d.outputs().keys().cloned().collect(),
        input_drvs: d
            .input_derivations()
            .keys()
            .map(|p| {
                let (path, name) = named(p);
                (path, name.trim_end_matches(".drv").to_owned())
            })
            .collect(),
        input_srcs: d.input_sources().iter().map(named).collect(),
    })
}

/// Inputs (path, name) in the order of their names, then paths: a report reads the
/// same wherever the store paths' hashes put them.
fn by_name(mut list: Vec<&(String, String)>) -> Vec<&(String, String)> {
    list.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    list
}

/// Pairs items only on one side by exact name, then by package name when that is unique
/// on both sides. Returns (pairs, unpaired old, unpaired new).
#[allow(clippy::type_complexity, clippy::needless_pass_by_value)]
fn pair_by_name<'a>(
    old: Vec<&'a (String, String)>,
    new: Vec<&'a (String, String)>,
) -> (
    Vec<(&'a String, &'a String)>,
    Vec<&'a (String, String)>,
    Vec<&'a (String, String)>,
) {
    // A name shared by several inputs on one side (`source`, `hook`) says nothing about
    // which old one became which new one: only names unique on both sides pair.
    let mut pairs = Vec::new();
    let mut rest_old = Vec::new();
    let mut taken = BTreeSet::new();
    let tally = |list: &[&'a (String, String)], key: &dyn Fn(&(String, String)) -> String| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for i in list {
            *m.entry(key(i)).or_default() += 1;
        }
        m
    };
    let full = |i: &(String, String)| i.1.clone();
    let (names_before, names_after) = (tally(&old, &full), tally(&new, &full));
    for o in &old {
        let unique = names_before[&o.1] == 1 && names_after.get(&o.1) == Some(&1);
        match new.iter().find(|n| unique && n.1 == o.1) {
            Some(n) => {
                taken.insert(&n.0);
                pairs.push((&o.0, &n.0));
            }
            None => rest_old.push(*o),
        }
    }
    let rest_new: Vec<&(String, String)> =
        new.into_iter().filter(|n| !taken.contains(&n.0)).collect();
    let pname = |i: &(String, String)| parse_drv_name(&i.1).0.to_owned();
    let (pnames_before, pnames_after) = (tally(&rest_old, &pname), tally(&rest_new, &pname));

    let mut unpaired_old = Vec::new();
    for o in &rest_old {
        let p = pname(o);
        if pnames_before.get(&p) == Some(&1) && pnames_after.get(&p) == Some(&1) {
            let n = rest_new
                .iter()
                .find(|n| pname(n) == p)
                .expect("counted above");
            taken.insert(&n.0);
            pairs.push((&o.0, &n.0));
        } else {
            unpaired_old.push(*o);
        }
    }
    let unpaired_new = rest_new
        .into_iter()
        .filter(|n| !taken.contains(&n.0))
        .collect();
    (pairs, unpaired_old, unpaired_new)
}

/// Replaces whole occurrences of a version token: not inside a longer number or word
/// (`6` in `x86_64`, `1.2` in `1.2.3`).
fn replace_token(s: &str, from: &str, to: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (at, _) in s.match_indices(from) {
        if at < last {
            continue;
        }
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + from.len()).copied();
        let after_next = bytes.get(at + from.len() + 1).copied();
        let bounded_before = !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.');
        let bounded_after = match after {
            None => true,
            Some(b'.') => !after_next.is_some_and(|b| b.is_ascii_digit()),
            Some(b) => !b.is_ascii_alphanumeric(),
        };
        if bounded_before && bounded_after {
            out.push_str(&s[last..at]);
            out.push_str(to);
            last = at + from.len();
        }
    }
    out.push_str(&s[last..]);
    out
}

/// Compares two derivations: their local changes, and the pairs of input derivations
/// that changed and must be walked.
fn compare(old: &Drv, new: &Drv) -> (Vec<Change>, Vec<(String, String)>) {
    let mut changes = Vec::new();
    let (old_pname, old_version) = parse_drv_name(&old.name);
    let (new_pname, new_version) = parse_drv_name(&new.name);
    // Old names that stand for new ones: the derivation's own name after a version bump,
    // and every rebuilt input paired below. A value that differs only by them (`name`,
    // `out`, a source URL, a list of input paths) is explained by the pairing itself.
    let mut renames: Vec<(String, String)> = Vec::new();
    if old_pname == new_pname && old_version != new_version {
        changes.push(Change::Version {
            before: old_version.to_owned(),
            after: new_version.to_owned(),
        });
        renames.push((old.name.clone(), new.name.clone()));
        renames.push((old_version.to_owned(), new_version.to_owned()));
    }
    let only = |xs: &[(String, String)], ys: &[(String, String)]| -> Vec<(String, String)> {
        xs.iter()
            .filter(|x| !ys.iter().any(|y| y.0 == x.0))
            .cloned()
            .collect()
    };
    let name_of = |list: &[(String, String)], path: &String| {
        list.iter()
            .find(|i| &i.0 == path)
            .map(|i| i.1.clone())
            .unwrap_or_default()
    };
    let old_srcs = only(&old.input_srcs, &new.input_srcs);
    let new_srcs = only(&new.input_srcs, &old.input_srcs);
    let (src_pairs, src_gone, src_came) =
        pair_by_name(old_srcs.iter().collect(), new_srcs.iter().collect());
    for (o, n) in &src_pairs {
        let name = name_of(&new_srcs, n);
        renames.push((name_of(&old_srcs, o), name.clone()));
        changes.push(Change::Source {
            name,
            change: Presence::Changed,
        });
    }
    for (list, change) in [(src_gone, Presence::Removed), (src_came, Presence::Added)] {
        for (_, name) in by_name(list) {
            changes.push(Change::Source {
                name: name.clone(),
                change,
            });
        }
    }
    let old_inputs = only(&old.input_drvs, &new.input_drvs);
    let new_inputs = only(&new.input_drvs, &old.input_drvs);
    let (pairs, gone, came) =
        pair_by_name(old_inputs.iter().collect(), new_inputs.iter().collect());
    for (list, change) in [(gone, Presence::Removed), (came, Presence::Added)] {
        for (_, name) in by_name(list) {
            changes.push(Change::Input {
                name: name.clone(),
                change,
            });
        }
    }
    for (o, n) in &pairs {
        renames.push((name_of(&old_inputs, o), name_of(&new_inputs, n)));
    }
    renames.retain(|(o, n)| o != n && !o.is_empty());
    // Longest first: whole names before the bare version string.
    renames.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    let rename = |s: &str| -> String {
        renames.iter().fold(s.to_owned(), |acc, (o, n)| {
            if !acc.contains(o.as_str()) {
                acc
            } else if o == old_version {
                replace_token(&acc, o, n)
            } else {
                acc.replace(o.as_str(), n)
            }
        })
    };
    if old.system != new.system {
        changes.push(Change::System {
            before: old.system.clone(),
            after: new.system.clone(),
        });
    }
    // A value equal on both sides is no change, whatever renaming would make of it.
    if old.builder != new.builder && rename(&old.builder) != new.builder {
        changes.push(Change::Builder {
            before: old.builder.clone(),
            after: new.builder.clone(),
        });
    }
    if old.args != new.args
        && old
            .args
            .iter()
            .map(|a| rename(a))
            .ne(new.args.iter().cloned())
    {
        changes.push(Change::Args {
            before: old.args.clone(),
            after: new.args.clone(),
        });
    }
    if old.outputs != new.outputs {
        changes.push(Change::Outputs {
            before: old.outputs.clone(),
            after: new.outputs.clone(),
        });
    }
    let keys: BTreeSet<&String> = old.env.keys().chain(new.env.keys()).collect();
    for key in keys {
        let (b, a) = (old.env.get(key), new.env.get(key));
        // `name` is the derivation name: a move there is the version change above.
        if key == "name" || b == a || b.map(|v| rename(v)).as_ref() == a {
            continue;
        }
        changes.push(Change::Env {
            name: key.clone(),
            before: b.cloned(),
            after: a.cloned(),
        });
    }
    let children = pairs
        .into_iter()
        .map(|(o, n)| (o.clone(), n.clone()))
        .collect();
    (changes, children)
}

/// One compared pair of derivations.
#[derive(Debug)]
pub struct Node {
    /// Old derivation path.
    pub old: String,
    /// New derivation path.
    pub new: String,
    /// Changes of the derivation itself; non-empty makes it a root cause.
    pub local: Vec<Change>,
    /// Why the pair could not be compared (a derivation missing or unparsable).
    pub missing: Option<(crate::report::Side, String)>,
    children: Vec<usize>,
}

/// The result of the structural walk.
#[derive(Debug)]
pub struct Analysis {
    /// Every compared pair; the first ones are the requested pairs, in order.
    pub nodes: Vec<Node>,
    /// For each requested pair, the nodes (root causes) that explain it.
    pub causes: Vec<Vec<usize>>,
}

type Parsed = Result<Arc<Drv>, String>;
/// Local changes and child pairs, or which side could not be read and why.
type Compared = Result<(Vec<Change>, Vec<(String, String)>), (crate::report::Side, String)>;

/// Walks the requested (old, new) derivation pairs and everything beneath them that
/// changed, and attributes each requested pair to its root causes.
pub fn analyze(requested: &[(String, String)], loader: &dyn DrvLoader) -> Analysis {
    let mut nodes: Vec<Node> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut parsed: HashMap<String, Parsed> = HashMap::new();
    let mut requested_nodes = Vec::with_capacity(requested.len());
    let mut frontier = Vec::new();
    let mut intern = |pair: (String, String), nodes: &mut Vec<Node>, frontier: &mut Vec<usize>| {
        *index.entry(pair).or_insert_with_key(|(old, new)| {
            nodes.push(Node {
                old: old.clone(),
                new: new.clone(),
                local: Vec::new(),
                missing: None,
                children: Vec::new(),
            });
            frontier.push(nodes.len() - 1);
            nodes.len() - 1
        })
    };
    for pair in requested {
        let id = intern(pair.clone(), &mut nodes, &mut frontier);
        requested_nodes.push(id);
    }
    while !frontier.is_empty() {
        let mut wanted: Vec<&str> = frontier
            .iter()
            .flat_map(|&n| [nodes[n].old.as_str(), nodes[n].new.as_str()])
            .filter(|p| !parsed.contains_key(*p))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let fresh: Vec<(String, Parsed)> = wanted
            .par_iter()
            .map(|p| {
                let drv = loader
                    .load(p)
                    .and_then(|bytes| parse(p, &bytes))
                    .map(Arc::new);
                ((*p).to_owned(), drv)
            })
            .collect();
        parsed.extend(fresh);
        let compared: Vec<(usize, Compared)> = frontier
            .par_iter()
            .map(|&n| {
                let node = &nodes[n];
                let old = parsed[&node.old]
                    .clone()
                    .map_err(|e| (crate::report::Side::Old, e));
                let new = parsed[&node.new]
                    .clone()
                    .map_err(|e| (crate::report::Side::New, e));
                (n, old.and_then(|o| new.map(|n| compare(&o, &n))))
            })
            .collect();
        let mut next = Vec::new();
        for (n, result) in compared {
            match result {
                Ok((local, children)) => {
                    let ids = children
                        .into_iter()
                        .map(|pair| intern(pair, &mut nodes, &mut next))
                        .collect();
                    nodes[n].local = local;
                    nodes[n].children = ids;
                }
                Err(missing) => nodes[n].missing = Some(missing),
            }
        }
        frontier = next;
    }
    let node_causes = cause_sets(&nodes);
    Analysis {
        causes: requested_nodes
            .iter()
            .map(|&n| node_causes[n].clone())
            .collect(),
        nodes,
    }
}

/// For every node, the sorted set of root-cause nodes beneath it (itself included when it
/// changed locally). Iterative post-order: derivation graphs can be thousands deep.
fn cause_sets(nodes: &[Node]) -> Vec<Vec<usize>> {
    let mut sets: Vec<Option<Vec<usize>>> = vec![None; nodes.len()];
    for start in 0..nodes.len() {
        let mut stack = vec![(start, false)];
        while let Some((n, expanded)) = stack.pop() {
            if sets[n].is_some() {
                continue;
            }
            if expanded {
                let mut set: Vec<usize> = nodes[n]
                    .children
                    .iter()
                    .flat_map(|&c| sets[c].as_deref().unwrap_or_default().iter().copied())
                    .collect();
                if !nodes[n].local.is_empty() {
                    set.push(n);
                }
                set.sort_unstable();
                set.dedup();
                sets[n] = Some(set);
            } else {
                stack.push((n, true));
                stack.extend(nodes[n].children.iter().map(|&c| (c, false)));
            }
        }
    }
    sets.into_iter().map(Option::unwrap_or_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_only_store_hashes() {
        let s = "/s/store/gi0j3kcrq19vpiamy3wzi5dwdjsll4ql-openssl-3.0.13/lib:/s/store/x";
        assert_eq!(
            mask_hashes("/s/store", s),
            "/s/store/<hash>-openssl-3.0.13/lib:/s/store/x"
        );
    }

    fn drv(name: &str, env: &[(&str, &str)], inputs: &[(&str, &str)]) -> Drv {
        Drv {
            name: name.into(),
            system: "x86_64-linux".into(),
            builder: "/s/store/<hash>-busybox/busybox".into(),
            args: vec!["sh".into()],
            env: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            outputs: vec!["out".into()],
            input_drvs: inputs
                .iter()
                .map(|(p, n)| ((*p).into(), (*n).into()))
                .collect(),
            input_srcs: vec![],
        }
    }

    #[test]
    fn version_bump_is_one_change_and_pairs_inputs_by_pname() {
        let old = drv(
            "openssl-3.0.13",
            &[
                ("version", "3.0.13"),
                ("out", "/s/store/<hash>-openssl-3.0.13"),
            ],
            &[("/s/store/a-glibc-2.39.drv", "glibc-2.39")],
        );
        let new = drv(
            "openssl-3.0.14",
            &[
                ("version", "3.0.14"),
                ("out", "/s/store/<hash>-openssl-3.0.14"),
            ],
            &[("/s/store/b-glibc-2.40.drv", "glibc-2.40")],
        );
        let (changes, children) = compare(&old, &new);
        assert_eq!(
            changes,
            vec![Change::Version {
                before: "3.0.13".into(),
                after: "3.0.14".into()
            }]
        );
        assert_eq!(
            children,
            vec![(
                "/s/store/a-glibc-2.39.drv".into(),
                "/s/store/b-glibc-2.40.drv".into()
            )]
        );
    }

    #[test]
    fn version_tokens_are_renamed_whole() {
        assert_eq!(replace_token("x86_64-linux", "6", "7"), "x86_64-linux");
        assert_eq!(replace_token("lib-6 v6 6", "6", "7"), "lib-7 v6 7");
        assert_eq!(
            replace_token("foo-1.2.3.tar.gz", "1.2", "1.3"),
            "foo-1.2.3.tar.gz"
        );
        assert_eq!(
            replace_token("foo-1.2.tar.gz", "1.2", "1.3"),
            "foo-1.3.tar.gz"
        );
    }

    #[test]
    fn unchanged_values_are_no_changes_after_a_bump() {
        let old = drv(
            "lib-6",
            &[("system", "x86_64-linux"), ("CFLAGS", "-O1")],
            &[],
        );
        let new = drv(
            "lib-7",
            &[("system", "x86_64-linux"), ("CFLAGS", "-O1")],
            &[],
        );
        let (changes, _) = compare(&old, &new);
        assert_eq!(
            changes,
            vec![Change::Version {
                before: "6".into(),
                after: "7".into()
            }]
        );
    }

    #[test]
    fn same_name_inputs_do_not_pair_by_hash_order() {
        let old = drv(
            "app-1",
            &[],
            &[
                ("/s/store/a-source.drv", "source"),
                ("/s/store/b-source.drv", "source"),
            ],
        );
        let new = drv(
            "app-1",
            &[],
            &[
                ("/s/store/c-source.drv", "source"),
                ("/s/store/d-source.drv", "source"),
            ],
        );
        let (changes, children) = compare(&old, &new);
        assert!(children.is_empty(), "no guessed pairs: {children:?}");
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, Change::Input { .. }))
                .count(),
            4
        );
    }

    #[test]
    fn inputs_added_and_removed_go_in_the_order_of_their_names() {
        let old = drv(
            "system-path",
            &[],
            &[
                ("/s/store/a-nano-7.2.drv", "nano-7.2"),
                ("/s/store/b-curl-8.drv", "curl-8"),
            ],
        );
        // The hashes in the opposite order of the names.
        let new = drv(
            "system-path",
            &[],
            &[
                ("/s/store/c-openssh-9.7p1.drv", "openssh-9.7p1"),
                ("/s/store/d-htop-3.3.0.drv", "htop-3.3.0"),
            ],
        );
        let (changes, _) = compare(&old, &new);
        let inputs: Vec<(&str, Presence)> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Input { name, change } => Some((name.as_str(), *change)),
                _ => None,
            })
            .collect();
        assert_eq!(
            inputs,
            [
                ("curl-8", Presence::Removed),
                ("nano-7.2", Presence::Removed),
                ("htop-3.3.0", Presence::Added),
                ("openssh-9.7p1", Presence::Added),
            ]
        );
    }

    #[test]
    fn input_swap_is_reported_as_added_and_removed() {
        let old = drv(
            "app-1",
            &[],
            &[("/s/store/a-libressl-3.8.drv", "libressl-3.8")],
        );
        let new = drv(
            "app-1",
            &[],
            &[("/s/store/b-openssl-3.0.drv", "openssl-3.0")],
        );
        let (changes, children) = compare(&old, &new);
        assert!(children.is_empty());
        assert!(changes.contains(&Change::Input {
            name: "libressl-3.8".into(),
            change: Presence::Removed
        }));
        assert!(changes.contains(&Change::Input {
            name: "openssl-3.0".into(),
            change: Presence::Added
        }));
    }
}

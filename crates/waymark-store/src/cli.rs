//! The nix CLI path: any store URL, and the fallback when the database cannot be read.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use waymark_diff::{Closure, PathEntry, selection_parents};

use crate::command::{last_line, nix_command};
use crate::error::{Error, Result};
use crate::pathinfo::parse_path_info;

/// Runs a command and returns stdout, or its last stderr line as the error.
pub(crate) fn run(mut cmd: Command) -> Result<Vec<u8>> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        let message = last_line(&String::from_utf8_lossy(&out.stderr), || {
            format!("{}, with no error message", out.status)
        });
        return Err(Error::Command { command, message });
    }
    Ok(out.stdout)
}

/// A `nix` command with the experimental features this crate needs, and `--store URL`.
pub(crate) fn nix(url: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = nix_command();
    cmd.args(args);
    if let Some(url) = url {
        cmd.args(["--store", url]);
    }
    cmd
}

/// Reads the closure of `root` with `nix path-info --json --recursive`.
pub fn closure(url: Option<&str>, store_dir: &str, root: &str) -> Result<Closure> {
    let mut cmd = nix(url, &["path-info", "--json", "--recursive"]);
    cmd.arg(root);
    let json = run(cmd).map_err(|e| not_valid(e, root, url))?;
    closure_from_path_info(&json, store_dir, root, url.unwrap_or(store_dir))
}

/// The closure of `root` from the output of `nix path-info --json --recursive ROOT`
/// (any Nix version's shape), however it was run: `--store URL`, or over ssh on the
/// machine that holds it. `origin` names that store in errors. The output may describe
/// several closures (`path-info --recursive A B`): only what `root` reaches is kept.
pub fn closure_from_path_info(
    json: &[u8],
    store_dir: &str,
    root: &str,
    origin: &str,
) -> Result<Closure> {
    let mut infos = parse_path_info(json, store_dir)?;
    let index: HashMap<&str, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| (info.path.as_str(), i))
        .collect();
    if index.contains_key(root) {
        let mut reached = vec![false; infos.len()];
        let mut queue = vec![index[root]];
        reached[index[root]] = true;
        while let Some(i) = queue.pop() {
            for r in &infos[i].references {
                if let Some(&j) = index.get(r.as_str())
                    && !reached[j]
                {
                    reached[j] = true;
                    queue.push(j);
                }
            }
        }
        let mut keep = reached.into_iter();
        infos.retain(|_| keep.next().unwrap_or(false));
    }
    if let Some(bad) = infos.iter().find(|i| !i.valid) {
        return Err(Error::NotValid {
            path: bad.path.clone(),
            store: origin.to_owned(),
        });
    }
    let refs_of = |p: &str| {
        infos
            .iter()
            .find(|i| i.path == p)
            .map(|i| i.references.clone())
            .unwrap_or_default()
    };
    let root_refs = refs_of(root);
    let mut selected: BTreeSet<String> = root_refs.iter().cloned().collect();
    for parent in selection_parents(&root_refs) {
        selected.extend(refs_of(parent));
    }
    selected.remove(root);
    Ok(Closure {
        root: root.to_owned(),
        paths: infos
            .into_iter()
            .map(|i| PathEntry {
                path: i.path,
                nar_size: i.nar_size,
                deriver: i.deriver,
            })
            .collect(),
        selected,
    })
}

/// Reads one path's entry with `nix path-info --json`, `None` when the store lacks it.
pub fn path_entry(url: Option<&str>, store_dir: &str, path: &str) -> Result<Option<PathEntry>> {
    let mut cmd = nix(url, &["path-info", "--json"]);
    cmd.arg(path);
    let out = match run(cmd) {
        Ok(out) => out,
        Err(e) => {
            return match not_valid(e, path, url) {
                Error::NotValid { .. } => Ok(None),
                e => Err(e),
            };
        }
    };
    Ok(parse_path_info(&out, store_dir)?
        .into_iter()
        .find(|i| i.valid && i.path == path)
        .map(|i| PathEntry {
            path: i.path,
            nar_size: i.nar_size,
            deriver: i.deriver,
        }))
}

/// Nix 2.19+ exits non-zero for a path it does not hold; say so the same way as 2.8.
fn not_valid(e: Error, root: &str, url: Option<&str>) -> Error {
    match &e {
        Error::Command { message, .. }
            if message.contains("is not valid")
                || message.contains("is not a valid store path")
                || message.contains("does not exist") =>
        {
            Error::NotValid {
                path: root.to_owned(),
                store: url.unwrap_or("the local store").to_owned(),
            }
        }
        _ => e,
    }
}

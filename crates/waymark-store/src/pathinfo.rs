//! `nix path-info --json`, in every shape Nix has printed: up to 2.18 (and Lix) a list
//! of objects with a `path` key; 2.19+ an object keyed by absolute path, `null` for an
//! invalid path; 2.33+ with `--json-format 2` an envelope `{version, storeDir, info}`
//! keyed by base name, with base names in `references` and `deriver` too.

use serde::Deserialize;

use crate::error::{Error, Result};

/// One path as `nix path-info --json` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Absolute store path.
    pub path: String,
    /// Whether the store holds it.
    pub valid: bool,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// Deriver, absolute.
    pub deriver: Option<String>,
    /// References, absolute.
    pub references: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    path: Option<String>,
    store_dir: Option<String>,
    #[serde(default = "yes")]
    valid: bool,
    #[serde(default)]
    nar_size: u64,
    deriver: Option<String>,
    #[serde(default)]
    references: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    #[allow(dead_code)]
    version: u32,
    store_dir: String,
    info: std::collections::BTreeMap<String, Option<Entry>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    List(Vec<Entry>),
    Envelope(Envelope),
    Object(std::collections::BTreeMap<String, Option<Entry>>),
}

/// Makes a store path absolute: newer Nix versions may print base names.
fn absolute(store_dir: &str, p: String) -> String {
    if p.starts_with('/') {
        p
    } else {
        format!("{store_dir}/{p}")
    }
}

/// Parses either shape of `nix path-info --json` output.
///
/// # Example
/// ```
/// use waymark_store::parse_path_info;
/// let old = r#"[{"path":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a","narSize":8,"references":[],"valid":true}]"#;
/// let new = r#"{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a":{"narSize":8,"references":[]}}"#;
/// assert_eq!(parse_path_info(old.as_bytes(), "/nix/store")?, parse_path_info(new.as_bytes(), "/nix/store")?);
/// # Ok::<(), waymark_store::Error>(())
/// ```
pub fn parse_path_info(json: &[u8], store_dir: &str) -> Result<Vec<PathInfo>> {
    let shape: Shape = serde_json::from_slice(json).map_err(Error::PathInfoJson)?;
    let convert = |path: String, e: Option<Entry>| match e {
        None => PathInfo {
            path: absolute(store_dir, path),
            valid: false,
            nar_size: 0,
            deriver: None,
            references: Vec::new(),
        },
        Some(e) => {
            let dir = e.store_dir.as_deref().unwrap_or(store_dir);
            PathInfo {
                path: absolute(dir, path),
                valid: e.valid,
                nar_size: e.nar_size,
                deriver: e.deriver.map(|d| absolute(dir, d)),
                references: e.references.into_iter().map(|r| absolute(dir, r)).collect(),
            }
        }
    };
    let infos: Vec<PathInfo> = match shape {
        Shape::List(list) => list
            .into_iter()
            .map(|mut e| {
                let path = e.path.take().unwrap_or_default();
                convert(path, Some(e))
            })
            .collect(),
        Shape::Object(map) => map.into_iter().map(|(p, e)| convert(p, e)).collect(),
        Shape::Envelope(env) => env
            .info
            .into_iter()
            .map(|(p, e)| {
                let e = e.map(|mut e| {
                    e.store_dir.get_or_insert_with(|| env.store_dir.clone());
                    e
                });
                match e {
                    Some(e) => convert(p, Some(e)),
                    None => convert(absolute(&env.store_dir, p), None),
                }
            })
            .collect(),
    };
    // A store directory given as a relative path (`"storeDir": "g"`) makes no store
    // path: refused as the malformed document it is.
    if let Some(bad) = infos.iter().find(|i| !i.path.starts_with('/')) {
        return Err(Error::PathInfoJson(serde::de::Error::custom(format!(
            "{:?} is not an absolute store path (a relative store directory?)",
            bad.path
        ))));
    }
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_store_directory_is_refused() {
        // Found by the fuzz suite: a path-info document whose store directory is not
        // absolute made "g/version" a store path.
        let json = br#"{"version": {"storeDir": "g"}}"#;
        assert!(matches!(
            parse_path_info(json, "/nix/store"),
            Err(Error::PathInfoJson(_))
        ));
        let json = br#"{"version": 2, "storeDir": "/nix/store", "info": {"abc-hello": null}}"#;
        assert_eq!(
            parse_path_info(json, "/nix/store").unwrap()[0].path,
            "/nix/store/abc-hello"
        );
    }
}
